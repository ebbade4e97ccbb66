//! The stores a running sidecar uses, whichever backend holds them (`state.backend`): one idempotency
//! store per route, one pin store, one webhook event store per webhook. Each kind is an enum over the
//! backends implementing that kind's trait by dispatch, so the request path names one concrete type
//! and no future is boxed.
//!
//! The backend is chosen once, at start: a reload keeps it (changing `state` needs a restart).

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;

use super::local::{Local, LocalError, LocalEvents, LocalOptions, LocalPins, LocalRecords};
use super::meter::{Meter, Op};
use super::redis::{self, Redis, RedisEvents, RedisPins, RedisQuota, RedisRecords};
use super::StateError;
use crate::config::{Dedupe, OnUnavailable, Snapshot, StateBackend};
use crate::idempotency::{Begin, Candidates, Finish, Lease, Limits, MemoryStore, ObjectPins};
use crate::idempotency::{PinStore, RecordKey, Store};
use crate::webhooks::dedupe::{self, DedupeStore, EventStore, Token};

/// The backend behind every store of this process.
#[derive(Debug)]
pub enum Engine {
    /// In this process's memory only: lost on restart, not shared (tests and throwaway runs).
    Memory,
    /// A journal on disk: survives restarts, this sidecar's alone.
    Local {
        /// The open journal.
        local: Local,
        /// Its calls, counted.
        meter: Arc<Meter>,
    },
    /// One Redis shared by the fleet; with `primary_only`, claims fall back to this process's memory
    /// while it is down.
    Redis {
        /// The connection.
        redis: Redis,
        /// Whether claims fall back to a local store while Redis is down.
        fallback: bool,
    },
}

/// Why the stores of payment state could not be opened: the sidecar does not start without them.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Redis could not be used.
    #[error("the shared state store (state.redis) cannot be used: {0}")]
    Redis(#[from] redis::ConnectError),
    /// The local store could not be opened.
    #[error("the local state store (state.dir) cannot be used: {0}")]
    Local(#[from] LocalError),
}

/// The stores' factory: one per process.
#[derive(Debug)]
pub struct Stores {
    engine: Engine,
}

impl Stores {
    /// Stores kept in memory only.
    pub fn memory() -> Self {
        Self {
            engine: Engine::Memory,
        }
    }

    /// Opens the backend `snapshot.state` names, reporting to `metrics`.
    pub async fn open(
        snapshot: &Snapshot,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Self, OpenError> {
        let state = &snapshot.state;
        let engine = match (state.backend, &state.redis) {
            (StateBackend::Redis, Some(cfg)) => {
                let mut o = redis::Options::new(cfg.timeout);
                let fallback = cfg.on_unavailable == OnUnavailable::PrimaryOnly;
                if fallback {
                    o.on_unavailable = redis::OnUnavailable::PrimaryOnly;
                }
                o.epoch_file = Some(state.dir.join("redis.epoch"));
                // Keyed payments stay on their primary until every record Redis lost would have
                // expired anyway.
                o.hold_after_forget = snapshot
                    .routes
                    .iter()
                    .map(|r| r.idempotency.ttl)
                    .max()
                    .unwrap_or(Duration::from_secs(24 * 3600))
                    .max(snapshot.pins.ttl);
                o.metrics = Some(redis::StateMetrics {
                    operations: metrics.state_operations_total.clone(),
                    duration: metrics.state_duration_seconds.clone(),
                    up: metrics.state_up.clone(),
                    epoch_changes: metrics.state_epoch_changes_total.clone(),
                    degraded: metrics.state_degraded.clone(),
                });
                if let Err(e) = std::fs::create_dir_all(&state.dir) {
                    tracing::warn!(dir = %state.dir.display(), error = %e, "the state dir cannot be made: a Redis that forgets its data while this sidecar is down will not be noticed at start-up");
                    o.epoch_file = None;
                }
                let redis = Redis::connect_with(cfg.url.expose(), o).await?;
                Engine::Redis { redis, fallback }
            }
            (StateBackend::Local, _) => {
                let dir = state.dir.clone();
                let local =
                    tokio::task::spawn_blocking(move || Local::open(&dir, LocalOptions::default()))
                        .await
                        .map_err(|e| LocalError::Io {
                            path: state.dir.clone(),
                            source: std::io::Error::other(e.to_string()),
                        })??;
                Engine::Local {
                    local,
                    meter: Arc::new(Meter::new(metrics, "local")),
                }
            }
            (StateBackend::Memory, _) | (StateBackend::Redis, None) => Engine::Memory,
        };
        Ok(Self { engine })
    }

    /// The backend's name, as metrics and logs give it.
    pub fn backend(&self) -> &'static str {
        match self.engine {
            Engine::Memory => "memory",
            Engine::Local { .. } => "local",
            Engine::Redis { .. } => "redis",
        }
    }

    /// The fleet-wide provider quotas, when the backend shares them.
    pub fn quotas(&self) -> Option<RedisQuota> {
        match &self.engine {
            Engine::Redis { redis, .. } => Some(RedisQuota::new(redis.clone())),
            Engine::Memory | Engine::Local { .. } => None,
        }
    }

    /// A new idempotency store for route `route`, bounded by `limits`.
    pub fn records(&self, route: &str, limits: Limits, evictions: &IntCounter) -> Records {
        match &self.engine {
            Engine::Memory => Records::Memory(MemoryStore::with_eviction_counter(
                limits,
                evictions.clone(),
            )),
            Engine::Local { local, meter } => Records::Local(
                local.records(route, limits, evictions.clone()),
                Arc::clone(meter),
            ),
            Engine::Redis { redis, fallback } => {
                let fallback = fallback.then(|| {
                    Arc::new(MemoryStore::with_eviction_counter(
                        limits,
                        evictions.clone(),
                    ))
                });
                Records::Redis(RedisRecords::new(
                    redis.clone(),
                    route,
                    limits.ttl,
                    fallback,
                ))
            }
        }
    }

    /// A new object pin store.
    pub fn pins(&self, ttl: Duration, max: usize) -> Pins {
        match &self.engine {
            Engine::Memory => Pins::Memory(ObjectPins::new(ttl, max)),
            Engine::Local { local, meter } => Pins::Local(local.pins(ttl, max), Arc::clone(meter)),
            Engine::Redis { redis, .. } => Pins::Redis(RedisPins::new(redis.clone(), ttl)),
        }
    }

    /// A new event store for webhook `name`; a delivery in flight holds its event for `lease`.
    pub fn events(&self, name: &str, lease: Duration) -> Events {
        match &self.engine {
            Engine::Memory => Events::Memory(DedupeStore::default()),
            Engine::Local { local, meter } => Events::Local(local.events(name), Arc::clone(meter)),
            Engine::Redis { redis, .. } => {
                Events::Redis(RedisEvents::new(redis.clone(), name, lease))
            }
        }
    }
}

/// A route's idempotency records, in one of the backends.
#[derive(Debug)]
pub enum Records {
    /// In memory.
    Memory(MemoryStore),
    /// In the local journal.
    Local(Arc<LocalRecords>, Arc<Meter>),
    /// In Redis. Its calls' futures are boxed (here and in `Pins`, `Events`): a Redis exchange is
    /// a network round trip, and inline they would make every payment's future kilobytes larger on
    /// every backend (moved on each `.await`), where one allocation per call costs nothing beside it.
    Redis(RedisRecords),
    /// In memory, every call written to a log and `attempt` failing when told (tests of the loop).
    #[cfg(test)]
    Recording(Recording),
}

/// A memory store whose calls are logged (`begin:a`, `attempt:b`, `finish:final`…) into a log the
/// test shares with its scripted sender, and whose `attempt` fails while `refuse_attempts` is set.
#[cfg(test)]
#[derive(Debug)]
pub struct Recording {
    /// The store underneath.
    pub inner: MemoryStore,
    /// What happened, in order.
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
    /// `attempt` answers [`StateError::Unreachable`] while set.
    pub refuse_attempts: std::sync::atomic::AtomicBool,
}

#[cfg(test)]
impl Recording {
    fn note(&self, what: String) {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(what);
    }
}

impl Records {
    /// New bounds (a reload); records stay.
    pub fn set_limits(&self, limits: Limits) {
        match self {
            Self::Memory(s) => s.set_limits(limits),
            Self::Local(s, _) => s.memory().set_limits(limits),
            // Bounded by ttl in Redis, which is fixed per route at start.
            Self::Redis(_) => {}
            #[cfg(test)]
            Self::Recording(r) => r.inner.set_limits(limits),
        }
    }

    /// Records held by this process (for a shared backend: its local part).
    pub fn len(&self) -> usize {
        match self {
            Self::Memory(s) => s.len(),
            Self::Local(s, _) => s.memory().len(),
            Self::Redis(_) => 0,
            #[cfg(test)]
            Self::Recording(r) => r.inner.len(),
        }
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records evicted for room so far.
    pub fn evictions(&self) -> u64 {
        match self {
            Self::Memory(s) => s.evictions(),
            Self::Local(s, _) => s.memory().evictions(),
            Self::Redis(_) => 0,
            #[cfg(test)]
            Self::Recording(r) => r.inner.evictions(),
        }
    }
}

impl Store for Records {
    async fn begin(
        &self,
        key: &RecordKey,
        fingerprint: [u8; 32],
        lease: Duration,
        first: Option<&Arc<str>>,
    ) -> Result<Begin, StateError> {
        match self {
            Self::Memory(s) => s.begin(key, fingerprint, lease, first).await,
            Self::Local(s, m) => {
                metered(m, Op::Begin, s.begin(key, fingerprint, lease, first)).await
            }
            Self::Redis(s) => Box::pin(s.begin(key, fingerprint, lease, first)).await,
            #[cfg(test)]
            Self::Recording(r) => {
                r.note(format!("begin:{}", first.map_or("-", |p| &**p)));
                r.inner.begin(key, fingerprint, lease, first).await
            }
        }
    }

    async fn attempt(
        &self,
        key: &RecordKey,
        lease: Lease,
        provider: &Arc<str>,
    ) -> Result<(), StateError> {
        match self {
            Self::Memory(s) => s.attempt(key, lease, provider).await,
            Self::Local(s, m) => metered(m, Op::Attempt, s.attempt(key, lease, provider)).await,
            Self::Redis(s) => Box::pin(s.attempt(key, lease, provider)).await,
            #[cfg(test)]
            Self::Recording(r) => {
                if r.refuse_attempts.load(std::sync::atomic::Ordering::SeqCst) {
                    r.note(format!("attempt-refused:{provider}"));
                    return Err(StateError::Unreachable("refused by the test".into()));
                }
                r.note(format!("attempt:{provider}"));
                r.inner.attempt(key, lease, provider).await
            }
        }
    }

    async fn finish(
        &self,
        key: &RecordKey,
        lease: Lease,
        finish: Finish,
    ) -> Result<(), StateError> {
        match self {
            Self::Memory(s) => s.finish(key, lease, finish).await,
            Self::Local(s, m) => metered(m, Op::Finish, s.finish(key, lease, finish)).await,
            Self::Redis(s) => Box::pin(s.finish(key, lease, finish)).await,
            #[cfg(test)]
            Self::Recording(r) => {
                r.note(format!("finish:{}", finish_name(&finish)));
                r.inner.finish(key, lease, finish).await
            }
        }
    }

    fn finish_now(&self, key: &RecordKey, lease: Lease, finish: Finish) -> Result<(), Finish> {
        match self {
            Self::Memory(s) => s.finish_now(key, lease, finish),
            Self::Local(s, _) => s.finish_now(key, lease, finish),
            Self::Redis(s) => s.finish_now(key, lease, finish),
            #[cfg(test)]
            Self::Recording(r) => {
                r.note(format!("finish:{}", finish_name(&finish)));
                r.inner.finish_now(key, lease, finish)
            }
        }
    }

    fn degraded(&self) -> bool {
        match self {
            Self::Memory(s) => s.degraded(),
            Self::Local(s, _) => s.degraded(),
            Self::Redis(s) => s.degraded(),
            #[cfg(test)]
            Self::Recording(r) => r.inner.degraded(),
        }
    }

    async fn unknowns(
        &self,
        limit: usize,
    ) -> Result<Vec<crate::idempotency::UnknownOp>, StateError> {
        match self {
            Self::Memory(s) => s.unknowns(limit).await,
            Self::Local(s, _) => s.unknowns(limit).await,
            Self::Redis(s) => Box::pin(s.unknowns(limit)).await,
            #[cfg(test)]
            Self::Recording(r) => r.inner.unknowns(limit).await,
        }
    }
}

/// The object pins, in one of the backends.
#[derive(Debug)]
pub enum Pins {
    /// In memory.
    Memory(ObjectPins),
    /// In the local journal.
    Local(Arc<LocalPins>, Arc<Meter>),
    /// In Redis.
    Redis(RedisPins),
}

impl Pins {
    /// New bounds (a reload); pins stay.
    pub fn set_limits(&self, ttl: Duration, max: usize) {
        match self {
            Self::Memory(p) => p.set_limits(ttl, max),
            Self::Local(p, _) => p.memory().set_limits(ttl, max),
            Self::Redis(_) => {}
        }
    }
}

impl PinStore for Pins {
    async fn remember(&self, id: &str, provider: &Arc<str>) -> Result<(), StateError> {
        match self {
            Self::Memory(p) => p.remember(id, provider).await,
            Self::Local(p, m) => metered(m, Op::PinRemember, p.remember(id, provider)).await,
            Self::Redis(p) => Box::pin(p.remember(id, provider)).await,
        }
    }

    async fn find_any(&self, ids: &Candidates<'_>) -> Result<Option<Arc<str>>, StateError> {
        match self {
            Self::Memory(p) => p.find_any(ids).await,
            Self::Local(p, m) => metered(m, Op::PinFind, p.find_any(ids)).await,
            Self::Redis(p) => Box::pin(p.find_any(ids)).await,
        }
    }
}

/// A webhook's delivered event ids, in one of the backends.
#[derive(Debug)]
pub enum Events {
    /// In memory.
    Memory(DedupeStore),
    /// In the local journal.
    Local(Arc<LocalEvents>, Arc<Meter>),
    /// In Redis.
    Redis(RedisEvents),
}

impl EventStore for Events {
    async fn begin(&self, id: &str) -> Result<dedupe::Begin<Token>, StateError> {
        match self {
            Self::Memory(e) => e.begin(id).await,
            Self::Local(e, m) => metered(m, Op::EventBegin, e.begin(id)).await,
            Self::Redis(e) => Box::pin(e.begin(id)).await,
        }
    }

    async fn finish(
        &self,
        id: &str,
        token: Token,
        delivered: Option<Dedupe>,
    ) -> Result<(), StateError> {
        match self {
            Self::Memory(e) => e.finish(id, token, delivered).await,
            Self::Local(e, m) => metered(m, Op::EventFinish, e.finish(id, token, delivered)).await,
            Self::Redis(e) => Box::pin(e.finish(id, token, delivered)).await,
        }
    }

    fn forget_now(&self, id: &str, token: Token) -> bool {
        match self {
            Self::Memory(e) => e.forget_now(id, token),
            Self::Local(e, _) => e.forget_now(id, token),
            Self::Redis(e) => e.forget_now(id, token),
        }
    }
}

#[cfg(test)]
fn finish_name(f: &Finish) -> String {
    match f {
        Finish::Final(a) => format!("final@{}", a.provider()),
        Finish::Unknown { provider, .. } => format!("unknown@{provider}"),
        Finish::NothingSent => "nothing_sent".into(),
    }
}

/// Runs `call`, counting it in `meter` as `op`.
async fn metered<T>(
    meter: &Meter,
    op: Op,
    call: impl std::future::Future<Output = Result<T, StateError>>,
) -> Result<T, StateError> {
    let started = std::time::Instant::now();
    let result = call.await;
    meter.observe(op, started, &result);
    result
}
