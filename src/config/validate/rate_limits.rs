//! `routes[].rate_limit:` — the shop-side rate limit and what it counts by.

use super::Validator;
use crate::config::model::{RateLimit, RateLimitKey, DEFAULT_RATE_LIMIT_MAX_KEYS};
use crate::config::schema;

impl Validator<'_> {
    pub(super) fn rate_limit(&mut self, path: &str, l: schema::RawRateLimit) -> RateLimit {
        let rps = self.count(format!("{path}.rps"), Some(l.rps), 1, 1);
        let by = match l.by.as_deref() {
            None | Some("none") => RateLimitKey::None,
            Some("client_ip") => RateLimitKey::ClientIp,
            Some(other) => match other.strip_prefix("header:").map(str::trim) {
                Some(name) => self
                    .header_name(&format!("{path}.by"), name)
                    .map_or(RateLimitKey::None, RateLimitKey::Header),
                None => {
                    self.problem(
                        format!("{path}.by"),
                        format!("\"{other}\" is not one of none, client_ip, header:NAME"),
                    );
                    RateLimitKey::None
                }
            },
        };
        let max_keys = l.max_keys.unwrap_or(DEFAULT_RATE_LIMIT_MAX_KEYS);
        if max_keys == 0 {
            self.problem(format!("{path}.max_keys"), "must be at least 1");
        }
        RateLimit {
            rps,
            burst: self.count(format!("{path}.burst"), l.burst, rps, 1),
            by,
            max_keys: max_keys.max(1),
        }
    }
}
