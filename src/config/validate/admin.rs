//! `admin:` — the admin listener and its bearer token. A listener off loopback needs a token.

use std::net::SocketAddr;

use super::Validator;
use crate::config::model::{Admin, DEFAULT_ADMIN_LISTEN};
use crate::config::schema;

impl Validator<'_> {
    pub(super) fn admin(&mut self, raw: Option<schema::RawAdmin>, shop: SocketAddr) -> Admin {
        let raw = raw.unwrap_or(schema::RawAdmin {
            listen: None,
            token_env: None,
            token_file: None,
        });
        let listen = self.socket_addr("admin.listen", raw.listen.as_deref(), DEFAULT_ADMIN_LISTEN);
        if listen == shop && listen.port() != 0 {
            self.problem(
                "admin.listen",
                "must differ from listen: the admin API is never served to the shop",
            );
        }
        let token = self.secret(
            "admin.token",
            raw.token_env.as_deref(),
            raw.token_file.as_deref(),
            "the admin token",
        );
        // A token that is configured but unreadable is already reported at its key.
        let configured = raw.token_env.is_some() || raw.token_file.is_some();
        if token.is_none() && !listen.ip().is_loopback() && !configured {
            self.problem(
                "admin.listen",
                "an admin listener off loopback needs a token: set admin.token_env or admin.token_file",
            );
        }
        Admin { listen, token }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::*;

    #[test]
    fn the_admin_listener_is_never_the_shop_listener() {
        let text = config(
            "",
            "",
            "listen: 127.0.0.1:8080\nadmin:\n  listen: 127.0.0.1:8080\n",
        );
        assert_problem(
            &only_problem(&text),
            "admin.listen",
            &text,
            "  listen: 127.0.0.1:8080",
            "must differ from listen",
        );

        // The default admin address against an explicit shop listener on it.
        let text = config("", "", "listen: 127.0.0.1:9901\n");
        let p = only_problem(&text);
        assert_eq!(p.path, "admin.listen");
        assert_eq!(p.line, None);
    }

    #[test]
    fn an_admin_listener_off_loopback_needs_a_token() {
        let text = config("", "", "admin:\n  listen: 0.0.0.0:9901\n");
        assert_problem(
            &only_problem(&text),
            "admin.listen",
            &text,
            "listen: 0.0.0.0",
            "needs a token",
        );

        let text = config(
            "",
            "",
            "admin:\n  listen: 0.0.0.0:9901\n  token_env: SWITCHYARD_ADMIN_TOKEN\n",
        );
        let secrets = Secrets::default().with("SWITCHYARD_ADMIN_TOKEN", "t0ken");
        let s = valid_with(&text, &secrets);
        assert_eq!(s.admin.listen, addr("0.0.0.0:9901"));
        assert!(s.admin.token.as_ref().is_some_and(|t| t.matches(b"t0ken")));
        assert_eq!(s.secrets.len(), 1);
        assert_eq!(s.secrets[0].path, "admin.token_env");
        assert_eq!(
            s.secrets[0].source,
            SecretRef::Env("SWITCHYARD_ADMIN_TOKEN".to_owned())
        );

        // A token that cannot be read is one problem, at the key that names it.
        let p = only_problem(&text);
        assert_eq!(p.path, "admin.token_env");
        let text = text.replace(
            "token_env: SWITCHYARD_ADMIN_TOKEN",
            "token_file: admin.token",
        );
        let p = only_problem(&text);
        assert_eq!(p.path, "admin.token_file");
        assert!(p.message.contains("/etc/switchyard/admin.token"), "{p:?}");
    }
}
