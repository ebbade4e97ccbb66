//! The fault scenarios: what breaks, when, and how the shop's traffic looks while it does.
//!
//! A fault covers the middle third of the measured time, so every run shows the system before, during
//! and after it. Faults are set on the primary sandbox through its control API; the backup stays well.

use std::time::Duration;

use serde_json::{json, Value};

use crate::options::StateArg;

/// One scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// No fault: the cost per request and the latency floor.
    Steady,
    /// The primary refuses connections.
    Outage,
    /// The primary answers 503 (not charged) for a share of requests.
    Brownout,
    /// The primary charges at once and answers after the attempt timeout.
    SlowPrimary,
    /// The primary charges, then answers 500.
    Error500,
    /// The primary charges, then closes the connection without an answer.
    Reset,
    /// The primary answers 429 with `Retry-After`.
    Throttle,
    /// The proxy's config file is rewritten every 100 ms under load.
    Reload,
    /// Many requests re-send an earlier key, half of them concurrently with the first.
    Duplicates,
    /// Several sidecars in front of the same providers; the primary charges, then answers 500, and
    /// the shop retries a failed payment with the same key at the next sidecar, as a job queue or a
    /// load balancer would.
    Fleet,
    /// A webhook flood, idle HTTP/2 connections and slow uploads beside the payments, in the middle
    /// third (`crate::abuse`).
    Abuse,
}

/// How the shop retries a payment that failed, in a scenario that does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShopRetry {
    /// Wait before the retry.
    pub delay: Duration,
    /// Sends of one request in all, the first included.
    pub attempts: u32,
}

/// The fleet scenario's shop: a failed payment is sent again with the same key after 100 ms, at the
/// next sidecar, up to 3 sends in all.
pub const FLEET_SHOP_RETRY: ShopRetry = ShopRetry {
    delay: Duration::from_millis(100),
    attempts: 3,
};

/// Share of requests the brownout fails.
pub const BROWNOUT_RATIO: f64 = 0.3;
/// How much later than the attempt timeout the slow primary answers.
pub const SLOW_PAST_TIMEOUT: Duration = Duration::from_millis(500);
/// The throttled primary's `Retry-After`, in seconds.
pub const THROTTLE_RETRY_AFTER_S: u64 = 1;
/// How often the reload scenario rewrites the config.
pub const RELOAD_EVERY: Duration = Duration::from_millis(100);

impl Scenario {
    /// Every scenario, in the order `all` runs them.
    pub const ALL: [Scenario; 11] = [
        Scenario::Steady,
        Scenario::Outage,
        Scenario::Brownout,
        Scenario::SlowPrimary,
        Scenario::Error500,
        Scenario::Reset,
        Scenario::Throttle,
        Scenario::Reload,
        Scenario::Duplicates,
        Scenario::Fleet,
        Scenario::Abuse,
    ];

    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::Outage => "outage",
            Scenario::Brownout => "brownout",
            Scenario::SlowPrimary => "slow-primary",
            Scenario::Error500 => "error500",
            Scenario::Reset => "reset",
            Scenario::Throttle => "throttle",
            Scenario::Reload => "reload",
            Scenario::Duplicates => "duplicates",
            Scenario::Fleet => "fleet",
            Scenario::Abuse => "abuse",
        }
    }

    /// What happens, in a sentence.
    pub fn describe(self, attempt_timeout: Duration) -> String {
        match self {
            Scenario::Steady => "no fault".into(),
            Scenario::Outage => "primary refuses connections (middle third)".into(),
            Scenario::Brownout => format!(
                "primary answers 503 to {:.0} % of requests (middle third)",
                BROWNOUT_RATIO * 100.0
            ),
            Scenario::SlowPrimary => format!(
                "primary charges, answers after {} ms, past the {} ms attempt timeout (middle third)",
                (attempt_timeout + SLOW_PAST_TIMEOUT).as_millis(),
                attempt_timeout.as_millis()
            ),
            Scenario::Error500 => "primary charges, then answers 500 (middle third)".into(),
            Scenario::Reset => {
                "primary charges, then closes the connection without an answer (middle third)"
                    .into()
            }
            Scenario::Throttle => format!(
                "primary answers 429, Retry-After {THROTTLE_RETRY_AFTER_S} s (middle third)"
            ),
            Scenario::Reload => format!(
                "proxy config rewritten every {} ms under load",
                RELOAD_EVERY.as_millis()
            ),
            Scenario::Duplicates => {
                "30 % of requests re-send a key, half of them concurrently; providers take 20 ms"
                    .into()
            }
            Scenario::Fleet => format!(
                "primary charges, then answers 500 (middle third); the shop retries a failed payment with the same key at the next sidecar after {} ms, up to {} sends",
                FLEET_SHOP_RETRY.delay.as_millis(),
                FLEET_SHOP_RETRY.attempts
            ),
            Scenario::Abuse => "a webhook flood (unsigned, bad-signature and oversize events), idle h2c connections and slow uploads beside the payments (middle third)".into(),
        }
    }

    /// The primary's mode during the fault, as the sandbox control API takes it; `None` when the
    /// scenario has no provider fault.
    pub fn fault(self, attempt_timeout: Duration) -> Option<Value> {
        let process_ms = self.process_ms();
        match self {
            Scenario::Steady | Scenario::Reload | Scenario::Duplicates | Scenario::Abuse => None,
            Scenario::Outage => Some(json!({ "mode": "down", "process_ms": process_ms })),
            Scenario::Brownout => {
                Some(json!({ "mode": "flaky", "ratio": BROWNOUT_RATIO, "process_ms": process_ms }))
            }
            Scenario::SlowPrimary => Some(json!({
                "mode": "slow",
                "delay_ms": (attempt_timeout + SLOW_PAST_TIMEOUT).as_millis() as u64,
                "process_ms": process_ms,
            })),
            Scenario::Error500 | Scenario::Fleet => {
                Some(json!({ "mode": "error500", "process_ms": process_ms }))
            }
            Scenario::Reset => Some(json!({ "mode": "reset", "process_ms": process_ms })),
            Scenario::Throttle => Some(json!({
                "mode": "throttle",
                "retry_after_s": THROTTLE_RETRY_AFTER_S,
                "process_ms": process_ms,
            })),
        }
    }

    /// The providers' healthy mode in this scenario.
    pub fn healthy(self) -> Value {
        json!({ "mode": "ok", "process_ms": self.process_ms() })
    }

    /// Processing time of a charge at the providers (a key is in flight meanwhile), in ms.
    pub fn process_ms(self) -> u64 {
        match self {
            Scenario::Duplicates => 20,
            _ => 0,
        }
    }

    /// The default share of requests that re-send a key, and the share of those sent concurrently.
    /// The scenarios that measure resolution send every key once: a re-send of a key whose outcome
    /// is unknown would be the shop's retry, and the resolver must settle it without one.
    pub fn resend_defaults(self) -> (f64, f64) {
        match self {
            Scenario::Duplicates => (0.3, 0.5),
            _ if self.measures_resolution() => (0.0, 0.0),
            _ => (0.05, 0.2),
        }
    }

    /// Whether the run watches the sidecars' unknown operations until the resolver settled them
    /// (issue 14: `reset`, `brownout`, `outage`; see [`crate::resolution`]).
    pub fn measures_resolution(self) -> bool {
        matches!(
            self,
            Scenario::Reset | Scenario::Brownout | Scenario::Outage
        )
    }

    /// The lines of switchyard's route for this scenario: the user's (`--route-extra`), and the
    /// scenario's own unless the user set the same key. The fleet scenario's sidecars make one
    /// attempt per request (`retry: { attempts: 1 }`): the shop's job queue does the retrying, so a
    /// payment whose outcome is unknown goes back to the shop and its retry lands on another sidecar.
    /// With the sidecar's own retries, the primary's replay of the key would answer the retry at the
    /// same sidecar, and the path where a second sidecar must know the key would seldom be taken.
    pub fn route_extra(self, user: &[String]) -> Vec<String> {
        let mut lines = user.to_vec();
        let has = |key: &str| user.iter().any(|l| l.trim_start().starts_with(key));
        if self == Scenario::Fleet && !has("retry:") {
            lines.push("retry: { attempts: 1 }".into());
        }
        if self == Scenario::Abuse && !has("idempotency:") {
            // A sidecar in its steady state: the store full before the window opens, so the RSS
            // before and 10 s after the abuse compare what the abuse left, not the records the
            // payments added in between (uncapped, they grow RSS by about 0.85 MiB/s).
            lines.push(format!(
                "idempotency: {{ max_entries: {} }}",
                Self::ABUSE_STORE_ENTRIES
            ));
        }
        lines
    }

    /// The abuse scenario's cap on stored answers and on object pins (unless `--route-extra` or
    /// `--config-extra` set them): reached in the quiet phase's first 5 s at 1 000/s.
    pub const ABUSE_STORE_ENTRIES: usize = 5_000;

    /// How the shop retries a failed payment (`None`: it does not).
    pub fn shop_retry(self) -> Option<ShopRetry> {
        match self {
            Scenario::Fleet => Some(FLEET_SHOP_RETRY),
            _ => None,
        }
    }

    /// Sidecars a run starts without `--sidecars`.
    pub fn default_sidecars(self) -> usize {
        match self {
            Scenario::Fleet => 2,
            _ => 1,
        }
    }

    /// State backends a run uses without `--state`: the fleet scenario compares all three; the
    /// others keep the in-memory store they were first measured with.
    pub fn default_states(self) -> &'static [StateArg] {
        match self {
            Scenario::Fleet => &[StateArg::Memory, StateArg::Local, StateArg::Redis],
            _ => &[StateArg::Memory],
        }
    }

    /// Whether the fault covers the middle third.
    pub fn has_fault_window(self) -> bool {
        self.fault(Duration::from_secs(1)).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_valid_mode_specs() {
        for s in Scenario::ALL {
            if let Some(f) = s.fault(Duration::from_secs(1)) {
                let mode = f["mode"].as_str().unwrap_or_default();
                assert!(
                    ["down", "flaky", "slow", "error500", "reset", "throttle"].contains(&mode),
                    "{mode}"
                );
            }
        }
        assert_eq!(
            Scenario::SlowPrimary.fault(Duration::from_secs(1)).unwrap()["delay_ms"],
            1500
        );
        let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names.len(), 11);
        assert_eq!(
            Scenario::Reset.fault(Duration::from_secs(1)).unwrap()["mode"],
            "reset"
        );
        for s in Scenario::ALL {
            assert_eq!(
                s.measures_resolution(),
                ["reset", "brownout", "outage"].contains(&s.name()),
                "{}",
                s.name()
            );
            if s.measures_resolution() {
                assert!(s.shop_retry().is_none(), "{}", s.name());
                assert_eq!(s.resend_defaults(), (0.0, 0.0), "{}", s.name());
            }
        }
        assert_eq!(
            Scenario::Fleet.fault(Duration::from_secs(1)).unwrap()["mode"],
            "error500"
        );
        assert!(Scenario::Fleet
            .shop_retry()
            .is_some_and(|r| r.attempts >= 2));
        assert!(Scenario::Error500.shop_retry().is_none());
        assert_eq!(
            Scenario::Fleet.route_extra(&["idempotency: { max_entries: 9 }".into()]),
            ["idempotency: { max_entries: 9 }", "retry: { attempts: 1 }"]
        );
        assert_eq!(
            Scenario::Fleet.route_extra(&["retry: { attempts: 2 }".into()]),
            ["retry: { attempts: 2 }"]
        );
        assert!(Scenario::Error500.route_extra(&[]).is_empty());
        assert_eq!(
            Scenario::Abuse.route_extra(&[]),
            ["idempotency: { max_entries: 5000 }"]
        );
        assert_eq!(
            Scenario::Abuse.route_extra(&["idempotency: { max_entries: 9 }".into()]),
            ["idempotency: { max_entries: 9 }"]
        );
    }
}
