//! The circuit breaker of one provider: a pure state machine over an injected clock.
//!
//! Closed → Open when any trigger fires: `consecutive_failures` failures in a row; a failure rate of at
//! least `failure_rate` over the sliding `window` once `min_requests` calls were seen there; a rate of
//! calls slower than `slow_call` of at least `slow_call_rate` (same minimum). Open lasts `open_for`,
//! doubled on each re-trip up to `max_open_for`, with ±`jitter` so a fleet of sidecars does not probe in
//! step. Then HalfOpen admits at most `half_open_probes` concurrent probe calls: when that many have
//! succeeded the breaker closes; one failure opens it again.
//!
//! Only technical failures are fed to it as [`CallResult::Failure`] (connect and TLS errors, timeouts,
//! resets, 5xx). A 4xx (a card decline included) is a success; a 429 is neither (the caller records a
//! throttle instead). Everything takes `now`, so tests run it with a fake clock.

use std::time::{Duration, Instant};

pub use crate::config::BreakerConfig;

/// The standard breaker states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls are refused until the open period ends.
    Open,
    /// A few probe calls test whether the provider is back.
    HalfOpen,
}

impl BreakerState {
    /// Every state, for metrics that show one as 1 and the others as 0.
    pub const ALL: [BreakerState; 3] = [Self::Closed, Self::Open, Self::HalfOpen];

    /// Its label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// What a finished call tells the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// The provider answered (2xx, 3xx, 4xx other than 429).
    Success,
    /// A technical failure (connect, TLS, timeout, reset, 5xx).
    Failure,
}

/// Whether a call may go to the provider now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go.
    Allowed,
    /// HalfOpen: go, as one of the probes; report its result with `probe = true`.
    Probe,
    /// Open, or HalfOpen with every probe slot taken: do not send.
    Rejected {
        /// When it may admit again (zero while probes are running).
        retry_in: Duration,
    },
}

/// Why a breaker changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: BreakerState,
    /// The state after.
    pub to: BreakerState,
}

#[derive(Debug, Clone, Copy)]
enum Inner {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32, succeeded: u32 },
}

const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    index: u64,
    total: u32,
    failures: u32,
    slow: u32,
}

/// A sliding window of call counts in `BUCKETS` time slices.
#[derive(Debug, Clone)]
struct Window {
    epoch: Instant,
    slice: Duration,
    buckets: [Bucket; BUCKETS],
}

impl Window {
    fn new(epoch: Instant, length: Duration) -> Self {
        let slice = (length / BUCKETS as u32).max(Duration::from_millis(1));
        Self {
            epoch,
            slice,
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    fn index(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.epoch).as_nanos() / self.slice.as_nanos()) as u64
    }

    fn record(&mut self, now: Instant, failure: bool, slow: bool) {
        let index = self.index(now);
        let b = &mut self.buckets[(index % BUCKETS as u64) as usize];
        if b.index != index {
            *b = Bucket {
                index,
                ..Bucket::default()
            };
        }
        b.total += 1;
        b.failures += u32::from(failure);
        b.slow += u32::from(slow);
    }

    /// (total, failures, slow) over the window ending at `now`.
    fn totals(&self, now: Instant) -> (u32, u32, u32) {
        let current = self.index(now);
        self.buckets
            .iter()
            .filter(|b| b.total > 0 && b.index + (BUCKETS as u64) > current && b.index <= current)
            .fold((0, 0, 0), |(t, f, s), b| {
                (t + b.total, f + b.failures, s + b.slow)
            })
    }

    fn clear(&mut self) {
        self.buckets = [Bucket::default(); BUCKETS];
    }
}

/// One provider's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    inner: Inner,
    window: Window,
    consecutive: u32,
    trips: u32,
    rng: u64,
}

impl Breaker {
    /// A closed breaker. `seed` drives the jitter (any value; tests fix it).
    pub fn new(config: BreakerConfig, now: Instant, seed: u64) -> Self {
        let window = Window::new(now, config.window);
        Self {
            config,
            inner: Inner::Closed,
            window,
            consecutive: 0,
            trips: 0,
            rng: splitmix(seed) | 1,
        }
    }

    /// Applies new settings (a config reload) and keeps the state.
    pub fn reconfigure(&mut self, config: BreakerConfig, now: Instant) {
        if config.window != self.config.window {
            self.window = Window::new(now, config.window);
        }
        self.config = config;
    }

    /// The settings.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The state at `now` (an Open breaker whose period ended reads as HalfOpen).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.inner {
            Inner::Closed => BreakerState::Closed,
            Inner::Open { until } if now >= until => BreakerState::HalfOpen,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a probe call would be admitted now.
    pub fn probe_ready(&self, now: Instant) -> bool {
        match self.inner {
            Inner::Closed => false,
            Inner::Open { until } => now >= until,
            Inner::HalfOpen { in_flight, .. } => in_flight < self.config.half_open_probes,
        }
    }

    /// How long until an Open breaker lets a probe through (`None` unless Open).
    pub fn open_remaining(&self, now: Instant) -> Option<Duration> {
        match self.inner {
            Inner::Open { until } if now < until => Some(until - now),
            _ => None,
        }
    }

    /// Success share over the window, once it holds enough calls to mean something.
    pub fn success_rate(&self, now: Instant) -> Option<f64> {
        let (total, failures, _) = self.window.totals(now);
        let enough = self.config.min_requests.clamp(1, 10);
        (total >= enough).then(|| f64::from(total - failures) / f64::from(total))
    }

    fn move_to(&mut self, inner: Inner, now: Instant) -> Option<Transition> {
        // The stored state, not the one `state()` reads: an Open breaker whose period ended is still
        // Open until a probe moves it, and that move is a transition worth counting.
        let from = match self.inner {
            Inner::Closed => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        };
        self.inner = inner;
        let to = self.state(now);
        (from != to).then_some(Transition { from, to })
    }

    /// Asks to send one call now.
    pub fn admit(&mut self, now: Instant) -> (Admission, Option<Transition>) {
        match self.inner {
            Inner::Closed => (Admission::Allowed, None),
            Inner::Open { until } if now < until => (
                Admission::Rejected {
                    retry_in: until - now,
                },
                None,
            ),
            Inner::Open { .. } => {
                // The open period is over: this call is the first probe.
                let t = self.move_to(
                    Inner::HalfOpen {
                        in_flight: 1,
                        succeeded: 0,
                    },
                    now,
                );
                (Admission::Probe, t)
            }
            Inner::HalfOpen {
                in_flight,
                succeeded,
            } => {
                if in_flight < self.config.half_open_probes {
                    self.inner = Inner::HalfOpen {
                        in_flight: in_flight + 1,
                        succeeded,
                    };
                    (Admission::Probe, None)
                } else {
                    (
                        Admission::Rejected {
                            retry_in: Duration::ZERO,
                        },
                        None,
                    )
                }
            }
        }
    }

    /// Gives back a probe slot whose call ended without a result (cancelled before an answer).
    pub fn release_probe(&mut self) {
        if let Inner::HalfOpen {
            in_flight,
            succeeded,
        } = self.inner
        {
            self.inner = Inner::HalfOpen {
                in_flight: in_flight.saturating_sub(1),
                succeeded,
            };
        }
    }

    /// Records a finished call. `probe` says whether it was admitted as a probe.
    pub fn record(
        &mut self,
        now: Instant,
        probe: bool,
        result: CallResult,
        elapsed: Duration,
    ) -> Option<Transition> {
        let failure = result == CallResult::Failure;
        match self.inner {
            Inner::Closed => {
                let slow = self.config.slow_call.is_some_and(|s| elapsed > s);
                self.window.record(now, failure, slow);
                self.consecutive = if failure { self.consecutive + 1 } else { 0 };
                if self.should_trip(now) {
                    return self.trip(now);
                }
                None
            }
            // A call admitted before the breaker opened finished late: it changes nothing.
            Inner::Open { .. } => None,
            Inner::HalfOpen {
                in_flight,
                succeeded,
            } => {
                if !probe {
                    return None;
                }
                if failure {
                    return self.trip(now);
                }
                let succeeded = succeeded + 1;
                if succeeded >= self.config.half_open_probes {
                    self.trips = 0;
                    self.consecutive = 0;
                    self.window.clear();
                    return self.move_to(Inner::Closed, now);
                }
                self.inner = Inner::HalfOpen {
                    in_flight: in_flight.saturating_sub(1),
                    succeeded,
                };
                None
            }
        }
    }

    fn should_trip(&self, now: Instant) -> bool {
        let c = &self.config;
        if c.consecutive_failures > 0 && self.consecutive >= c.consecutive_failures {
            return true;
        }
        let (total, failures, slow) = self.window.totals(now);
        if total < c.min_requests.max(1) {
            return false;
        }
        let total = f64::from(total);
        f64::from(failures) / total >= c.failure_rate
            || (c.slow_call.is_some() && f64::from(slow) / total >= c.slow_call_rate)
    }

    fn trip(&mut self, now: Instant) -> Option<Transition> {
        self.trips = self.trips.saturating_add(1);
        let doubling = 2u32.saturating_pow(self.trips.saturating_sub(1).min(20));
        let base = self
            .config
            .open_for
            .saturating_mul(doubling)
            .min(self.config.max_open_for);
        let open_for = base
            .mul_f64(1.0 + self.config.jitter * (2.0 * self.next_unit() - 1.0))
            .min(self.config.max_open_for);
        self.consecutive = 0;
        self.window.clear();
        self.move_to(
            Inner::Open {
                until: now + open_for,
            },
            now,
        )
    }

    /// Closes the breaker and forgets its history (admin `reset`).
    pub fn reset(&mut self, now: Instant) -> Option<Transition> {
        self.trips = 0;
        self.consecutive = 0;
        self.window.clear();
        self.move_to(Inner::Closed, now)
    }

    /// A number in [0, 1) from a xorshift generator: enough for jitter, and repeatable in tests.
    fn next_unit(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Spreads a seed over all 64 bits, so that nearby seeds give unrelated jitter.
fn splitmix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            min_requests: 10,
            slow_call: None,
            slow_call_rate: 0.8,
            open_for: Duration::from_secs(1),
            max_open_for: Duration::from_secs(8),
            half_open_probes: 2,
            jitter: 0.0,
        }
    }

    fn fail(b: &mut Breaker, now: Instant) -> Option<Transition> {
        b.record(now, false, CallResult::Failure, MS)
    }

    fn ok(b: &mut Breaker, now: Instant) -> Option<Transition> {
        b.record(now, false, CallResult::Success, MS)
    }

    #[test]
    fn consecutive_failures_open_it() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0, 1);
        assert_eq!(fail(&mut b, t0), None);
        assert_eq!(fail(&mut b, t0), None);
        // A success in between resets the run.
        assert_eq!(ok(&mut b, t0), None);
        assert_eq!(fail(&mut b, t0), None);
        assert_eq!(fail(&mut b, t0), None);
        let t = fail(&mut b, t0).expect("third failure in a row trips");
        assert_eq!((t.from, t.to), (BreakerState::Closed, BreakerState::Open));
        assert_eq!(b.state(t0), BreakerState::Open);
        assert_eq!(
            b.admit(t0 + 500 * MS).0,
            Admission::Rejected { retry_in: 500 * MS }
        );
    }

    #[test]
    fn failure_rate_over_the_window_opens_it_once_min_requests_are_seen() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.consecutive_failures = 0;
        let mut b = Breaker::new(c, t0, 1);
        // Alternate: 50 % failures, never two in a row.
        for i in 0..9 {
            let now = t0 + i * 100 * MS;
            if i % 2 == 0 {
                assert_eq!(fail(&mut b, now), None);
            } else {
                assert_eq!(ok(&mut b, now), None);
            }
        }
        // 9 calls (5 failures) are below min_requests; the tenth decides.
        assert_eq!(b.state(t0 + 900 * MS), BreakerState::Closed);
        let t = ok(&mut b, t0 + 900 * MS).expect("5/10 failures trips at rate 0.5");
        assert_eq!(t.to, BreakerState::Open);
    }

    #[test]
    fn old_failures_slide_out_of_the_window() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.consecutive_failures = 0;
        let mut b = Breaker::new(c, t0, 1);
        for _ in 0..5 {
            fail(&mut b, t0);
        }
        // Eleven seconds later, those five are gone: ten successes do not trip it.
        let later = t0 + Duration::from_secs(11);
        for _ in 0..10 {
            assert_eq!(ok(&mut b, later), None);
        }
        assert_eq!(b.state(later), BreakerState::Closed);
        assert_eq!(b.success_rate(later), Some(1.0));
    }

    #[test]
    fn slow_calls_open_it() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.consecutive_failures = 0;
        c.slow_call = Some(Duration::from_millis(200));
        let mut b = Breaker::new(c, t0, 1);
        for _ in 0..7 {
            assert_eq!(b.record(t0, false, CallResult::Success, 300 * MS), None);
        }
        for _ in 0..2 {
            assert_eq!(b.record(t0, false, CallResult::Success, 10 * MS), None);
        }
        let t = b
            .record(t0, false, CallResult::Success, 300 * MS)
            .expect("8 of 10 slow trips at 0.8");
        assert_eq!(t.to, BreakerState::Open);
    }

    #[test]
    fn half_open_admits_limited_probes_and_closes_when_all_succeed() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0, 1);
        for _ in 0..3 {
            fail(&mut b, t0);
        }
        let after = t0 + Duration::from_secs(1);
        assert_eq!(b.state(after), BreakerState::HalfOpen);
        assert!(b.probe_ready(after));
        let (a1, t) = b.admit(after);
        assert_eq!(a1, Admission::Probe);
        assert_eq!(t.unwrap().to, BreakerState::HalfOpen);
        assert_eq!(b.admit(after).0, Admission::Probe);
        assert_eq!(
            b.admit(after).0,
            Admission::Rejected {
                retry_in: Duration::ZERO
            },
            "only two probes at once"
        );
        // A late result of a call admitted while Closed is ignored.
        assert_eq!(fail(&mut b, after), None);
        assert_eq!(b.record(after, true, CallResult::Success, MS), None);
        assert_eq!(b.state(after), BreakerState::HalfOpen);
        let t = b.record(after, true, CallResult::Success, MS).unwrap();
        assert_eq!(
            (t.from, t.to),
            (BreakerState::HalfOpen, BreakerState::Closed)
        );
        assert_eq!(b.admit(after).0, Admission::Allowed);
    }

    #[test]
    fn a_failed_probe_reopens_for_longer_up_to_the_cap() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0, 1);
        for _ in 0..3 {
            fail(&mut b, t0);
        }
        let mut now = t0;
        let mut expected = Duration::from_secs(1);
        for _ in 0..5 {
            assert_eq!(b.open_remaining(now), Some(expected));
            now += expected;
            assert_eq!(b.admit(now).0, Admission::Probe);
            let t = b.record(now, true, CallResult::Failure, MS).unwrap();
            assert_eq!((t.from, t.to), (BreakerState::HalfOpen, BreakerState::Open));
            expected = (expected * 2).min(Duration::from_secs(8));
        }
        assert_eq!(b.open_remaining(now), Some(Duration::from_secs(8)));
    }

    #[test]
    fn jitter_spreads_open_periods_within_bounds() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.jitter = 0.2;
        let mut seen = std::collections::HashSet::new();
        for seed in 0..20 {
            let mut b = Breaker::new(c.clone(), t0, seed);
            for _ in 0..3 {
                fail(&mut b, t0);
            }
            let d = b.open_remaining(t0).unwrap();
            assert!(d >= 800 * MS && d <= 1200 * MS, "{d:?}");
            seen.insert(d.as_millis());
        }
        assert!(
            seen.len() > 5,
            "jitter should differ between breakers: {seen:?}"
        );
    }

    #[test]
    fn a_released_probe_frees_its_slot_and_reset_closes() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.half_open_probes = 1;
        let mut b = Breaker::new(c, t0, 1);
        for _ in 0..3 {
            fail(&mut b, t0);
        }
        let after = t0 + Duration::from_secs(2);
        assert_eq!(b.admit(after).0, Admission::Probe);
        assert!(!b.probe_ready(after));
        b.release_probe();
        assert!(b.probe_ready(after));
        let t = b.reset(after).unwrap();
        assert_eq!(t.to, BreakerState::Closed);
        assert_eq!(b.success_rate(after), None, "history forgotten");
    }
}
