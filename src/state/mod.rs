//! What the stores of payment state share: the error a store can fail with, and the clock an
//! in-memory store reads.
//!
//! Three kinds of record must outlive a request (`PAYMENT_RULES.md` §2, §3, §3b): idempotency records
//! ([`crate::idempotency::Store`]), payment-object pins ([`crate::idempotency::PinStore`]) and webhook
//! event ids ([`crate::webhooks::dedupe::EventStore`]). Each is used through a trait with async methods,
//! so that a store on disk, or one shared by a fleet of sidecars, can take the in-memory store's place
//! without a change at the call sites. The traits:
//!
//! - return `impl Future + Send` (no boxed future per call); the in-memory stores answer at once;
//! - return [`StateError`] when the store cannot be reached or answers too late. A caller answers the
//!   shop `state_unavailable` (503, `Retry-After`) and never takes the failure for a reason to send a
//!   payment to another provider (§3b);
//! - take durations (a ttl), never an `Instant`: a shared store has no process clock. The in-memory
//!   stores read their own [`Clock`], which tests replace with a [`ManualClock`];
//! - name records with stable digests ([`crate::idempotency::RecordKey`]), the same in every process.
//!
//! `conformance` (test builds) is the one test suite every backend passes.

#[cfg(test)]
pub(crate) mod conformance;
mod meter;
mod stores;

pub use meter::{Meter, Op};

#[cfg(test)]
pub(crate) use stores::Recording;
pub use stores::{Engine, Events, OpenError, Pins, Records, Stores};
pub mod redis;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A store of payment state could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store could not be reached (connection refused, closed, not configured).
    #[error("the state store is unreachable: {0}")]
    Unreachable(String),
    /// The store did not answer in time.
    #[error("the state store did not answer within {0:?}")]
    Timeout(Duration),
    /// The record was claimed again after this holder's lease ran out: its write was refused.
    #[error("the record was claimed again after this request's lease ran out")]
    Fenced,
    /// The shared store lost its records (a restart without persistence, a failover, a flush):
    /// keyed payments are held until the records' ttl has passed.
    #[error("the state store lost its records; keyed payments are held until {0:?} from now")]
    Forgot(Duration),
}

impl StateError {
    /// When the shop may try again.
    pub fn retry_after(&self) -> Duration {
        match self {
            Self::Forgot(left) => (*left).clamp(Duration::from_secs(1), Duration::from_secs(60)),
            _ => Duration::from_secs(1),
        }
    }
}

/// The shop is told `state_unavailable`: nothing was sent, and nothing will be sent elsewhere.
impl From<StateError> for crate::error::ProxyError {
    fn from(e: StateError) -> Self {
        Self::StateUnavailable {
            retry_after: e.retry_after(),
            reason: e.to_string(),
        }
    }
}

/// Where an in-memory store reads the time from.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> Instant;
}

/// The process's monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told, for deterministic tests; clones share one time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    base: Instant,
    /// Nanoseconds after `base`.
    offset: Arc<AtomicU64>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            offset: Arc::default(),
        }
    }
}

impl ManualClock {
    /// Moves the clock `by` forward.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.offset.fetch_add(nanos, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + Duration::from_nanos(self.offset.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_that_cannot_answer_is_a_503_to_retry_that_sent_nothing() {
        use crate::error::{ErrorKind, ProxyError, Reached};
        let e = ProxyError::from(StateError::Timeout(Duration::from_millis(50)));
        assert_eq!(e.kind(), ErrorKind::StateUnavailable);
        assert_eq!(e.kind().as_str(), "state_unavailable");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
        assert_eq!(e.reached(), Reached::No);
        let (status, _) = crate::layers::rescue::status_and_title(e.kind());
        assert_eq!(status, http::StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn a_manual_clock_moves_only_when_told_and_clones_share_it() {
        let c = ManualClock::default();
        let t0 = c.now();
        assert_eq!(c.now(), t0);
        let other = c.clone();
        other.advance(Duration::from_secs(5));
        assert_eq!(c.now(), t0 + Duration::from_secs(5));
    }
}
