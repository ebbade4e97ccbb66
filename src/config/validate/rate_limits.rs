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

#[cfg(test)]
mod tests {
    use crate::config::tests::*;

    #[test]
    fn route_rate_limits_parse_and_are_checked() {
        use crate::config::model::RateLimitKey;
        let text = config("", "    rate_limit: { rps: 10, burst: 20, by: \"header:X-Shop-Id\" }\n    overprovisioning: 2.0\n", "");
        let s = load_with(&text, &Secrets::default()).unwrap();
        let r = &s.routes[0];
        let l = r.rate_limit.as_ref().unwrap();
        assert_eq!((l.rps, l.burst), (10, 20));
        assert_eq!(
            l.by,
            RateLimitKey::Header(http::HeaderName::from_static("x-shop-id"))
        );
        assert_eq!(r.overprovisioning, 2.0);
        let s = load_with(
            &config("", "    rate_limit: { rps: 5, by: client_ip }\n", ""),
            &Secrets::default(),
        )
        .unwrap();
        let l = s.routes[0].rate_limit.as_ref().unwrap();
        assert_eq!((l.burst, &l.by), (5, &RateLimitKey::ClientIp));
        for (line, path, phrase) in [
            (
                "    rate_limit: { rps: 5, by: tenant }\n",
                "routes[0].rate_limit.by",
                "not one of",
            ),
            (
                "    rate_limit: { rps: 5, by: \"header:bad header\" }\n",
                "routes[0].rate_limit.by",
                "not a header name",
            ),
            (
                "    rate_limit: { rps: 0 }\n",
                "routes[0].rate_limit.rps",
                "at least 1",
            ),
            (
                "    overprovisioning: 0.5\n",
                "routes[0].overprovisioning",
                "between 1.0 and 10.0",
            ),
        ] {
            let all = problems(&config("", line, ""));
            assert!(
                all.iter()
                    .any(|p| p.path == path && p.message.contains(phrase)),
                "{path}: {all:#?}"
            );
        }
    }
}
