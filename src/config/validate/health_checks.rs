//! `providers.NAME.health_check:` — active health checks: path, interval, thresholds.

use std::time::Duration;

use super::Validator;
use crate::config::model::HealthCheck;
use crate::config::schema;

impl Validator<'_> {
    pub(super) fn health_check(&mut self, path: &str, h: schema::RawHealthCheck) -> HealthCheck {
        let check_path = h.path.unwrap_or_else(|| "/healthz".to_owned());
        if !check_path.starts_with('/') {
            self.problem(format!("{path}.path"), "must start with '/'");
        }
        let interval = self.duration(
            &format!("{path}.interval"),
            h.interval.as_deref(),
            Duration::from_secs(5),
        );
        let timeout = self.duration(
            &format!("{path}.timeout"),
            h.timeout.as_deref(),
            Duration::from_secs(1),
        );
        if timeout > interval {
            self.problem(
                format!("{path}.timeout"),
                "must not be longer than interval",
            );
        }
        HealthCheck {
            path: check_path,
            interval,
            timeout,
            unhealthy_after: self.count(format!("{path}.unhealthy_after"), h.unhealthy_after, 3, 1),
            healthy_after: self.count(format!("{path}.healthy_after"), h.healthy_after, 2, 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::*;

    #[test]
    fn provider_health_settings_parse_with_defaults() {
        let text = config(
        "    breaker: { consecutive_failures: 3, failure_rate: 0.25, window: 30s, min_requests: 5, slow_call: 2s, open_for: 1s, max_open_for: 10s, half_open_probes: 1 }\n    health_check: { path: /ping, interval: 2s }\n    quota: { rps: 100, max_wait: 0s }\n    slow_start: 0s\n    max_throttle: 5s\n",
        "",
        "",
    );
        let s = load_with(&text, &Secrets::default()).unwrap();
        let p = &s.providers["psp"];
        assert_eq!(p.breaker.consecutive_failures, 3);
        assert_eq!(p.breaker.failure_rate, 0.25);
        assert_eq!(p.breaker.window, Duration::from_secs(30));
        assert_eq!(p.breaker.slow_call, Some(Duration::from_secs(2)));
        assert_eq!(p.breaker.slow_call_rate, 0.8, "default kept");
        assert_eq!(p.breaker.half_open_probes, 1);
        let hc = p.health_check.as_ref().unwrap();
        assert_eq!(hc.path, "/ping");
        assert_eq!(hc.interval, Duration::from_secs(2));
        assert_eq!(
            (hc.timeout, hc.unhealthy_after, hc.healthy_after),
            (Duration::from_secs(1), 3, 2)
        );
        let q = p.quota.unwrap();
        assert_eq!((q.rps, q.burst, q.max_wait), (100, 100, Duration::ZERO));
        assert_eq!(p.slow_start, Duration::ZERO);
        assert_eq!(p.max_throttle, Duration::from_secs(5));

        let plain = load_with(&config("", "", ""), &Secrets::default()).unwrap();
        let p = &plain.providers["psp"];
        assert_eq!(p.breaker, crate::config::model::BreakerConfig::default());
        assert!(p.health_check.is_none() && p.quota.is_none());
        assert_eq!(p.slow_start, Duration::from_secs(10));
        assert_eq!(plain.routes[0].overprovisioning, 1.4);
        assert!(plain.routes[0].rate_limit.is_none());
    }

    #[test]
    fn provider_health_settings_are_checked() {
        let cases = [
            (
                "    breaker: { failure_rate: 1.5 }\n",
                "providers.psp.breaker.failure_rate",
                "between",
            ),
            (
                "    breaker: { failure_rate: 0 }\n",
                "providers.psp.breaker.failure_rate",
                "greater than 0",
            ),
            (
                "    breaker: { open_for: 10s, max_open_for: 1s }\n",
                "providers.psp.breaker.max_open_for",
                "at least open_for",
            ),
            (
                "    breaker: { half_open_probes: 0 }\n",
                "providers.psp.breaker.half_open_probes",
                "at least 1",
            ),
            (
                "    breaker: { jitter: 0.9 }\n",
                "providers.psp.breaker.jitter",
                "between",
            ),
            (
                "    health_check: { path: ping }\n",
                "providers.psp.health_check.path",
                "start with '/'",
            ),
            (
                "    health_check: { interval: 1s, timeout: 2s }\n",
                "providers.psp.health_check.timeout",
                "longer than interval",
            ),
            (
                "    quota: { rps: 0 }\n",
                "providers.psp.quota.rps",
                "at least 1",
            ),
            (
                "    slow_start: soon\n",
                "providers.psp.slow_start",
                "not a duration",
            ),
        ];
        for (line, path, phrase) in cases {
            let text = config(line, "", "");
            let all = problems(&text);
            assert!(
                all.iter()
                    .any(|p| p.path == path && p.message.contains(phrase)),
                "{path}: {all:#?}"
            );
        }
    }
}
