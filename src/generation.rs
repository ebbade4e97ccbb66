//! One generation of the running config: the validated snapshot and the upstreams built for it.
//!
//! The app swaps the whole generation atomically on reload; a request loads it once and runs to its end
//! on that generation, even if a reload happens meanwhile.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::config::Snapshot;
use crate::health::States;
use crate::idempotency::{ObjectPins, RouteStores};
use crate::limits::RouteLimits;
use crate::retry::RouteBudgets;
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
    pub pins: Arc<ObjectPins>,
    /// Each route's retry budget (kept across reloads while unchanged).
    pub retry_budgets: RouteBudgets,
    /// SHA-256 of the file's bytes, hex.
    pub sha256: String,
    /// When it was loaded.
    pub loaded_at: SystemTime,
}

/// The generation in use, swapped atomically on reload.
pub type Current = Arc<ArcSwap<Generation>>;
