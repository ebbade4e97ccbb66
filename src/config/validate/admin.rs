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
