//! Active health checks: a pure tracker of consecutive results, and the task that runs the checks.
//!
//! A provider that fails `unhealthy_after` checks in a row is unhealthy until it passes `healthy_after`
//! in a row. Checks are GETs of the configured path at a jittered interval, through the provider's own
//! pooled client (same TLS, same connection limits); a 2xx passes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::HealthCheck;
use crate::upstream::Upstream;

use super::ProviderState;

/// Consecutive check results and the verdict they give.
#[derive(Debug, Clone, Default)]
pub struct CheckTracker {
    unhealthy: bool,
    passes: u32,
    failures: u32,
    last_error: Option<String>,
}

impl CheckTracker {
    /// Whether checks currently say the provider is unhealthy (never, before any check ran).
    pub fn unhealthy(&self) -> bool {
        self.unhealthy
    }

    /// The last failed check's reason, while failing.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Passes and failures in a row.
    pub fn runs(&self) -> (u32, u32) {
        (self.passes, self.failures)
    }

    /// Records one check; returns the new verdict when it changed (`true` = healthy again).
    pub fn record(&mut self, result: Result<(), String>, cfg: &HealthCheck) -> Option<bool> {
        match result {
            Ok(()) => {
                self.passes += 1;
                self.failures = 0;
                self.last_error = None;
                if self.unhealthy && self.passes >= cfg.healthy_after {
                    self.unhealthy = false;
                    return Some(true);
                }
            }
            Err(e) => {
                self.failures += 1;
                self.passes = 0;
                self.last_error = Some(e);
                if !self.unhealthy && self.failures >= cfg.unhealthy_after {
                    self.unhealthy = true;
                    return Some(false);
                }
            }
        }
        None
    }

    /// Forgets every result (checks were turned off or reset).
    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

/// Runs checks for one provider until the task is aborted.
pub async fn run(upstream: Arc<Upstream>, state: Arc<ProviderState>, cfg: HealthCheck) {
    loop {
        // ±10 % jitter so the checks of a fleet of sidecars do not line up.
        let factor = 0.9 + 0.2 * rand::random::<f64>();
        tokio::time::sleep(cfg.interval.mul_f64(factor)).await;
        let result = upstream.check(&cfg.path, cfg.timeout).await;
        state.record_check(result, &cfg, Instant::now());
    }
}

/// The interval of checks, for callers that want to wait for one round.
pub fn round(cfg: &HealthCheck) -> Duration {
    cfg.interval.mul_f64(1.1) + cfg.timeout
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HealthCheck {
        HealthCheck {
            path: "/healthz".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(100),
            unhealthy_after: 3,
            healthy_after: 2,
        }
    }

    #[test]
    fn unhealthy_after_failures_in_a_row_and_back_after_passes() {
        let c = cfg();
        let mut t = CheckTracker::default();
        assert!(!t.unhealthy());
        assert_eq!(t.record(Err("503".into()), &c), None);
        assert_eq!(t.record(Err("503".into()), &c), None);
        assert_eq!(t.record(Ok(()), &c), None, "a pass breaks the run");
        assert_eq!(t.record(Err("503".into()), &c), None);
        assert_eq!(t.record(Err("503".into()), &c), None);
        assert_eq!(t.record(Err("refused".into()), &c), Some(false));
        assert!(t.unhealthy());
        assert_eq!(t.last_error(), Some("refused"));
        assert_eq!(t.record(Ok(()), &c), None);
        assert_eq!(t.record(Err("503".into()), &c), None, "still unhealthy");
        assert_eq!(t.record(Ok(()), &c), None);
        assert_eq!(t.record(Ok(()), &c), Some(true));
        assert!(!t.unhealthy());
    }
}
