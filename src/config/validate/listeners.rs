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
