//! `routes[].idempotency:` — key mode, record lifetime and bounds, and the key headers.

use super::Validator;
use crate::config::model::{Idempotency, IdempotencyMode};
use crate::config::schema;

impl Validator<'_> {
    pub(super) fn idempotency(
        &mut self,
        path: &str,
        raw: Option<schema::RawIdempotency>,
    ) -> Idempotency {
        let d = Idempotency::default();
        let Some(i) = raw else { return d };
        let mode = match i.mode.as_deref() {
            None | Some("generate") => IdempotencyMode::Generate,
            Some("require") => IdempotencyMode::Require,
            Some("off") => IdempotencyMode::Off,
            Some(other) => {
                self.problem(
                    format!("{path}.mode"),
                    format!("\"{other}\" is not one of generate, require, off"),
                );
                IdempotencyMode::Generate
            }
        };
        let header = |v: &mut Self, key: &str, text: Option<String>| {
            text.and_then(|h| v.header_name(&format!("{path}.{key}"), &h))
        };
        let key_header = header(self, "header", i.header).unwrap_or(d.header);
        let scope_header = header(self, "scope_header", i.scope_header);
        let max_entries = i.max_entries.unwrap_or(d.max_entries);
        if max_entries == 0 {
            self.problem(format!("{path}.max_entries"), "must be at least 1");
        }
        Idempotency {
            mode,
            ttl: self.duration(&format!("{path}.ttl"), i.ttl.as_deref(), d.ttl),
            max_entries: max_entries.max(1),
            max_bytes: self.size(
                &format!("{path}.max_bytes"),
                i.max_bytes.as_deref(),
                d.max_bytes as u64,
                64 << 10,
                16 << 30,
            ),
            header: key_header,
            scope_header,
        }
    }
}
