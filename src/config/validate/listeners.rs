//! Listener addresses (`listen`, `admin.listen`, `sandbox[].listen`, `webhooks[].listen`): `IP:PORT`,
//! or `localhost:PORT` for the IPv4 loopback.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::Validator;

impl Validator<'_> {
    pub(super) fn socket_addr(
        &mut self,
        path: &str,
        text: Option<&str>,
        default: &str,
    ) -> SocketAddr {
        let text = text.unwrap_or(default);
        let parsed = match text.strip_prefix("localhost:") {
            Some(port) => port
                .parse::<u16>()
                .map(|p| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p))
                .ok(),
            None => text.parse::<SocketAddr>().ok(),
        };
        parsed.unwrap_or_else(|| {
            self.problem(
                path,
                format!("\"{text}\" is not an address; write IP:PORT, e.g. 127.0.0.1:8080"),
            );
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::*;

    #[test]
    fn listen_addresses_must_be_ip_and_port() {
        let text = config("", "", "listen: shop:8080\n");
        assert_problem(
            &only_problem(&text),
            "listen",
            &text,
            "listen:",
            "\"shop:8080\" is not an address",
        );
        let text = config("", "", "sandbox:\n  - { name: psp, listen: 127.0.0.1 }\n");
        assert_problem(
            &only_problem(&text),
            "sandbox[0].listen",
            &text,
            "name: psp",
            "is not an address",
        );
    }
}
