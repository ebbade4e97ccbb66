//! One generation of the running config: the validated snapshot and the upstreams built for it.
//!
//! The app swaps the whole generation atomically on reload; a request loads it once and runs to its end
//! on that generation, even if a reload happens meanwhile.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use crate::config::{Problem, Snapshot};
use crate::health::States;
use crate::idempotency::RouteStores;
use crate::limits::RouteLimits;
use crate::meters::Meters;
use crate::metrics::Metrics;
use crate::retry::RouteBudgets;
use crate::state::{Pins, Stores};
use crate::upstream::Upstreams;

/// A config generation.
#[derive(Debug)]
pub struct Generation {
    /// 1 for the config loaded at start, then one more per applied reload.
    pub number: u64,
    /// The validated config.
    pub snapshot: Arc<Snapshot>,
    /// A client per provider.
    pub upstreams: Upstreams,
    /// Each provider's health (kept across reloads by name).
    pub health: States,
    /// Each route's rate limiter (kept across reloads while unchanged).
    pub route_limits: RouteLimits,
    /// Each route's idempotency records (kept across reloads by route name).
    pub idempotency: RouteStores,
    /// Payment objects pinned to the provider holding them (kept across reloads).
    pub pins: Arc<Pins>,
    /// The backend of payment state, chosen at start and kept by every generation.
    pub state: Arc<Stores>,
    /// Each route's retry budget (kept across reloads while unchanged).
    pub retry_budgets: RouteBudgets,
    /// Each route's metric handles, made on its first request (never carried over: a reload drops
    /// the series of what it removed).
    pub meters: Meters,
    /// SHA-256 of the file's bytes, hex.
    pub sha256: String,
    /// When it was loaded.
    pub loaded_at: SystemTime,
}

/// The generation in use, swapped atomically on reload.
pub type Current = Arc<ArcSwap<Generation>>;

impl Generation {
    /// Builds the generation that runs `snapshot`, loaded from `text` (for its digest). `previous` is
    /// the generation it replaces on a reload, `None` at start: the state that must survive a reload
    /// (health, limiters, idempotency records, pins, retry budgets, pooled clients) is carried over from
    /// it by name; `state` makes the stores of payment state new routes need. Fails only when an upstream client cannot be built (a TLS file that does not load).
    pub fn build(
        snapshot: Snapshot,
        text: &str,
        previous: Option<&Generation>,
        state: &Arc<Stores>,
        metrics: &Metrics,
        now: Instant,
    ) -> Result<Self, Vec<Problem>> {
        let upstreams = Upstreams::build(&snapshot, previous.map(|p| &p.upstreams))?;
        let pins = match previous {
            Some(old) => {
                old.pins
                    .set_limits(snapshot.pins.ttl, snapshot.pins.max_entries);
                Arc::clone(&old.pins)
            }
            None => Arc::new(state.pins(snapshot.pins.ttl, snapshot.pins.max_entries)),
        };
        let health = States::build(&snapshot, previous.map(|p| &p.health), metrics, now);
        if let (Some(shared), Some(redis)) = (state.quotas(), &snapshot.state.redis) {
            for provider in health.iter() {
                provider.share_quota(&shared, redis.quota_share);
            }
        }
        Ok(Self {
            number: previous.map_or(1, |p| p.number + 1),
            health,
            route_limits: RouteLimits::build(&snapshot, previous.map(|p| &p.route_limits)),
            idempotency: RouteStores::build(
                &snapshot,
                previous.map(|p| &p.idempotency),
                &metrics.idempotency_evictions_total,
                state,
            ),
            pins,
            state: Arc::clone(state),
            retry_budgets: RouteBudgets::build(&snapshot, previous.map(|p| &p.retry_budgets), now),
            meters: Meters::new(metrics),
            snapshot: Arc::new(snapshot),
            upstreams,
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
            loaded_at: SystemTime::now(),
        })
    }
}
