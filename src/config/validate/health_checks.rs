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
