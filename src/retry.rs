//! Retry decisions as pure functions of `now`: exponential backoff with full jitter, and a retry budget
//! that caps retries at a share of recent requests (plus a small floor per second), so a failing
//! provider never gets a retry storm on top of its normal traffic.

use std::time::{Duration, Instant};

/// The pause before retry number `retry` (1 for the first retry): uniform in
/// `[0, min(cap, base × 2^(retry-1))]`, with `unit` uniform in [0, 1) ("full jitter").
pub fn backoff(retry: u32, base: Duration, cap: Duration, unit: f64) -> Duration {
    let exp = base.saturating_mul(2u32.saturating_pow(retry.saturating_sub(1).min(20)));
    exp.min(cap).mul_f64(unit.clamp(0.0, 1.0))
}

const SLOTS: usize = 10;
const SLOT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    index: u64,
    requests: u32,
    retries: u32,
}

/// Retries allowed: `ratio` × requests over the last 10 s, plus `min_per_second` × 10.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    ratio: f64,
    min_per_second: u32,
    epoch: Instant,
    slots: [Slot; SLOTS],
}

impl RetryBudget {
    /// A budget starting now.
    pub fn new(ratio: f64, min_per_second: u32, now: Instant) -> Self {
        Self {
            ratio,
            min_per_second,
            epoch: now,
            slots: [Slot::default(); SLOTS],
        }
    }

    /// Whether the settings differ from these.
    pub fn settings(&self) -> (f64, u32) {
        (self.ratio, self.min_per_second)
    }

    fn slot(&mut self, now: Instant) -> &mut Slot {
        let index = (now.saturating_duration_since(self.epoch).as_nanos() / SLOT.as_nanos()) as u64;
        let s = &mut self.slots[(index % SLOTS as u64) as usize];
        if s.index != index {
            *s = Slot {
                index,
                ..Slot::default()
            };
        }
        s
    }

    fn totals(&self, now: Instant) -> (u32, u32) {
        let current =
            (now.saturating_duration_since(self.epoch).as_nanos() / SLOT.as_nanos()) as u64;
        self.slots
            .iter()
            .filter(|s| s.index + SLOTS as u64 > current && s.index <= current)
            .fold((0, 0), |(r, t), s| (r + s.requests, t + s.retries))
    }

    /// Counts one request.
    pub fn deposit(&mut self, now: Instant) {
        self.slot(now).requests += 1;
    }

    /// Takes one retry if the budget allows it.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        let (requests, retries) = self.totals(now);
        let allowed = f64::from(requests) * self.ratio
            + f64::from(self.min_per_second) * SLOTS as f64 * SLOT.as_secs_f64();
        if f64::from(retries) + 1.0 > allowed {
            return false;
        }
        self.slot(now).retries += 1;
        true
    }
}

/// Each route's retry budget, kept across reloads by route name.
#[derive(Debug, Default)]
pub struct RouteBudgets {
    by_route: crate::config::NameMap<std::sync::Arc<std::sync::Mutex<RetryBudget>>>,
}

impl RouteBudgets {
    /// Budgets for the routes of `snapshot`, reusing those of `previous` with unchanged settings.
    pub fn build(
        snapshot: &crate::config::Snapshot,
        previous: Option<&RouteBudgets>,
        now: Instant,
    ) -> Self {
        let mut by_route = crate::config::NameMap::default();
        for route in &snapshot.routes {
            let settings = (route.retry.budget, route.retry.min_retries_per_second);
            let kept = previous
                .and_then(|p| p.by_route.get(&route.name))
                .filter(|b| b.lock().map(|b| b.settings() == settings).unwrap_or(false))
                .cloned();
            let budget = kept.unwrap_or_else(|| {
                std::sync::Arc::new(std::sync::Mutex::new(RetryBudget::new(
                    settings.0, settings.1, now,
                )))
            });
            by_route.insert(std::sync::Arc::clone(&route.name), budget);
        }
        Self { by_route }
    }

    /// The budget of route `name`.
    pub fn get(&self, name: &str) -> Option<&std::sync::Arc<std::sync::Mutex<RetryBudget>>> {
        self.by_route.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_full_jitter() {
        let base = Duration::from_millis(25);
        let cap = Duration::from_millis(150);
        assert_eq!(backoff(1, base, cap, 1.0), Duration::from_millis(25));
        assert_eq!(backoff(2, base, cap, 1.0), Duration::from_millis(50));
        assert_eq!(backoff(3, base, cap, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(4, base, cap, 1.0), Duration::from_millis(150));
        assert_eq!(backoff(30, base, cap, 1.0), Duration::from_millis(150));
        assert_eq!(backoff(3, base, cap, 0.5), Duration::from_millis(50));
        assert_eq!(backoff(3, base, cap, 0.0), Duration::ZERO);
    }

    #[test]
    fn budget_is_a_share_of_requests_plus_a_floor() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(0.2, 1, t0);
        // Floor: 1 per second over the 10 s window = 10 retries with no traffic at all.
        for _ in 0..10 {
            assert!(b.try_withdraw(t0));
        }
        assert!(!b.try_withdraw(t0));
        // 100 requests add 20 more.
        for _ in 0..100 {
            b.deposit(t0);
        }
        for _ in 0..20 {
            assert!(b.try_withdraw(t0));
        }
        assert!(!b.try_withdraw(t0), "exhausted");
        // Ten seconds later the window has slid past all of it.
        let later = t0 + Duration::from_secs(11);
        assert!(b.try_withdraw(later));
    }

    #[test]
    fn a_storm_stays_within_the_budget() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(0.1, 0, t0);
        let mut granted = 0;
        for i in 0..1000u32 {
            let now = t0 + Duration::from_millis(u64::from(i));
            b.deposit(now);
            // Every request fails and wants two retries.
            for _ in 0..2 {
                if b.try_withdraw(now) {
                    granted += 1;
                }
            }
        }
        assert!(
            granted <= 100,
            "{granted} retries for 1000 requests at ratio 0.1"
        );
        assert!(granted >= 95, "{granted}");
    }
}
