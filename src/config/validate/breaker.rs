//! `providers.NAME.breaker:` — the circuit breaker's triggers and open periods.

use std::time::Duration;

use super::Validator;
use crate::config::model::BreakerConfig;
use crate::config::schema;

impl Validator<'_> {
    pub(super) fn breaker(&mut self, path: &str, raw: Option<schema::RawBreaker>) -> BreakerConfig {
        let d = BreakerConfig::default();
        let Some(b) = raw else { return d };
        let window = self.duration(&format!("{path}.window"), b.window.as_deref(), d.window);
        let open_for = self.duration(
            &format!("{path}.open_for"),
            b.open_for.as_deref(),
            d.open_for,
        );
        let max_open_for = self.duration(
            &format!("{path}.max_open_for"),
            b.max_open_for.as_deref(),
            d.max_open_for.max(open_for),
        );
        if max_open_for < open_for {
            self.problem(format!("{path}.max_open_for"), "must be at least open_for");
        }
        let failure_rate = self.ratio(
            format!("{path}.failure_rate"),
            b.failure_rate,
            d.failure_rate,
            1.0,
        );
        if failure_rate == 0.0 {
            self.problem(format!("{path}.failure_rate"), "must be greater than 0");
        }
        let slow_call = b.slow_call.as_deref().map(|s| {
            self.duration(
                &format!("{path}.slow_call"),
                Some(s),
                Duration::from_secs(1),
            )
        });
        BreakerConfig {
            consecutive_failures: b.consecutive_failures.unwrap_or(d.consecutive_failures),
            failure_rate,
            window,
            min_requests: self.count(
                format!("{path}.min_requests"),
                b.min_requests,
                d.min_requests,
                1,
            ),
            slow_call,
            slow_call_rate: self.ratio(
                format!("{path}.slow_call_rate"),
                b.slow_call_rate,
                d.slow_call_rate,
                1.0,
            ),
            open_for,
            max_open_for,
            half_open_probes: self.count(
                format!("{path}.half_open_probes"),
                b.half_open_probes,
                d.half_open_probes,
                1,
            ),
            jitter: self.ratio(format!("{path}.jitter"), b.jitter, d.jitter, 0.5),
        }
    }
}
