//! `limits:` — the checks of what keeps hostile or broken clients from taking the sidecar down: how
//! many connections each listener (and the process) holds, how many request body bytes may sit in
//! memory at once, and how long a client may take over each part of a request. The typed section is
//! `model::Limits`.
//!
//! Every listener is bound by these, the admin listener included; its own small connection limit is
//! apart from the process-wide one, so `/healthz` still answers when the shop side is full.

use super::Validator;
use crate::config::model::{Limits, ListenerLimits};
use crate::config::schema;

/// Most header fields that may be configured.
const MAX_MAX_HEADERS: usize = 10_000;
/// Most connections that may be configured (far past any fd limit a sidecar gets).
const MAX_MAX_CONNECTIONS: usize = 1 << 20;

impl Validator<'_> {
    /// The `limits:` section. `largest_body` is the largest `max_body` of any route or webhook: a
    /// buffer budget below it could never let such a body through.
    pub(super) fn limits(&mut self, raw: Option<schema::RawLimits>, largest_body: usize) -> Limits {
        let d = Limits::default();
        let Some(raw) = raw else {
            if largest_body > d.max_buffered_bytes {
                self.problem(
                    "limits.max_buffered_bytes",
                    format!(
                        "the default of {} bytes is below the largest max_body ({largest_body} bytes); set it to at least that",
                        d.max_buffered_bytes
                    ),
                );
            }
            return d;
        };
        let max_connections = self.bounded(
            "limits.max_connections",
            raw.max_connections,
            d.max_connections,
            1,
            MAX_MAX_CONNECTIONS,
        );
        let max_buffered_bytes = self.size(
            "limits.max_buffered_bytes",
            raw.max_buffered_bytes.as_deref(),
            d.max_buffered_bytes as u64,
            64 << 10,
            1 << 40,
        );
        if max_buffered_bytes < largest_body {
            self.problem(
                "limits.max_buffered_bytes",
                format!(
                    "must be at least the largest max_body of a route or webhook ({largest_body} bytes)"
                ),
            );
        }
        let max_headers = self.bounded(
            "limits.max_headers",
            raw.max_headers,
            d.max_headers,
            1,
            MAX_MAX_HEADERS,
        );
        Limits {
            max_connections,
            max_buffered_bytes,
            max_headers,
            header_read_timeout: self.duration(
                "limits.header_read_timeout",
                raw.header_read_timeout.as_deref(),
                d.header_read_timeout,
            ),
            preface_timeout: self.duration(
                "limits.preface_timeout",
                raw.preface_timeout.as_deref(),
                d.preface_timeout,
            ),
            h2_idle_timeout: self.duration(
                "limits.h2_idle_timeout",
                raw.h2_idle_timeout.as_deref(),
                d.h2_idle_timeout,
            ),
            h2_keep_alive_interval: self.duration(
                "limits.h2_keep_alive_interval",
                raw.h2_keep_alive_interval.as_deref(),
                d.h2_keep_alive_interval,
            ),
            h2_keep_alive_timeout: self.duration(
                "limits.h2_keep_alive_timeout",
                raw.h2_keep_alive_timeout.as_deref(),
                d.h2_keep_alive_timeout,
            ),
            shop: self.listener_limits("limits.shop", raw.shop, d.shop),
            webhooks: self.listener_limits("limits.webhooks", raw.webhooks, d.webhooks),
            admin: self.listener_limits("limits.admin", raw.admin, d.admin),
        }
    }

    fn listener_limits(
        &mut self,
        path: &str,
        raw: Option<schema::RawListenerLimits>,
        d: ListenerLimits,
    ) -> ListenerLimits {
        let Some(raw) = raw else { return d };
        ListenerLimits {
            max_connections: self.bounded(
                &format!("{path}.max_connections"),
                raw.max_connections,
                d.max_connections,
                1,
                MAX_MAX_CONNECTIONS,
            ),
            body_read_timeout: self.duration(
                &format!("{path}.body_read_timeout"),
                raw.body_read_timeout.as_deref(),
                d.body_read_timeout,
            ),
        }
    }

    /// A count within `min..=max`, or a problem at `path` and the default.
    fn bounded(
        &mut self,
        path: &str,
        value: Option<usize>,
        default: usize,
        min: usize,
        max: usize,
    ) -> usize {
        let v = value.unwrap_or(default);
        if !(min..=max).contains(&v) {
            self.problem(path, format!("must be between {min} and {max}"));
            return default;
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::DEFAULT_ADMIN_BODY_READ_TIMEOUT;
    use crate::config::PlaceholderSecrets;
    use std::time::Duration;

    const BASE: &str = "routes:\n  - name: r\n    match: { path_prefix: / }\n    targets: [{ provider: p }]\nproviders:\n  p: { url: \"http://127.0.0.1:1\" }\n";

    fn check(extra: &str) -> Result<Limits, Vec<String>> {
        let text = format!("{BASE}{extra}");
        crate::config::load(&text, std::path::Path::new("."), &PlaceholderSecrets)
            .map(|s| s.limits.clone())
            .map_err(|e| vec![e.to_string()])
    }

    #[test]
    fn absent_section_gives_the_defaults() {
        assert_eq!(check("").unwrap(), Limits::default());
    }

    #[test]
    fn every_field_is_read() {
        let l = check(
            "limits:\n  max_connections: 10\n  max_buffered_bytes: 2MiB\n  max_headers: 200\n  header_read_timeout: 5s\n  preface_timeout: 1s\n  h2_idle_timeout: 20s\n  h2_keep_alive_interval: 3s\n  h2_keep_alive_timeout: 2s\n  shop: { max_connections: 7, body_read_timeout: 4s }\n  webhooks: { max_connections: 3, body_read_timeout: 500ms }\n  admin: { max_connections: 2 }\n",
        )
        .unwrap();
        assert_eq!(l.max_connections, 10);
        assert_eq!(l.max_buffered_bytes, 2 << 20);
        assert_eq!(l.max_headers, 200);
        assert_eq!(l.header_read_timeout, Duration::from_secs(5));
        assert_eq!(l.preface_timeout, Duration::from_secs(1));
        assert_eq!(l.h2_idle_timeout, Duration::from_secs(20));
        assert_eq!(l.h2_keep_alive_interval, Duration::from_secs(3));
        assert_eq!(l.h2_keep_alive_timeout, Duration::from_secs(2));
        assert_eq!(
            l.shop,
            ListenerLimits {
                max_connections: 7,
                body_read_timeout: Duration::from_secs(4)
            }
        );
        assert_eq!(l.webhooks.body_read_timeout, Duration::from_millis(500));
        assert_eq!(l.admin.max_connections, 2);
        assert_eq!(
            l.admin.body_read_timeout, DEFAULT_ADMIN_BODY_READ_TIMEOUT,
            "an absent field keeps its default"
        );
    }

    #[test]
    fn bad_values_name_their_path() {
        for (yaml, path) in [
            ("limits:\n  max_connections: 0\n", "limits.max_connections"),
            ("limits:\n  max_headers: 0\n", "limits.max_headers"),
            (
                "limits:\n  max_buffered_bytes: 1KiB\n",
                "limits.max_buffered_bytes",
            ),
            ("limits:\n  h2_idle_timeout: 0s\n", "limits.h2_idle_timeout"),
            (
                "limits:\n  webhooks: { body_read_timeout: soon }\n",
                "limits.webhooks.body_read_timeout",
            ),
            (
                "limits:\n  shop: { max_connections: 0 }\n",
                "limits.shop.max_connections",
            ),
        ] {
            let errors = check(yaml).unwrap_err().join("\n");
            assert!(errors.contains(path), "{yaml}: {errors}");
        }
        let unknown = check("limits:\n  max_conections: 3\n")
            .unwrap_err()
            .join("\n");
        assert!(unknown.contains("max_conections"), "{unknown}");
    }

    #[test]
    fn the_budget_must_hold_the_largest_body() {
        let errors = check("limits:\n  max_buffered_bytes: 512KiB\n")
            .map(|_| ())
            .unwrap_err()
            .join("\n");
        assert!(errors.contains("largest max_body"), "{errors}");
    }
}
