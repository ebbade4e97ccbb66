//! The `redis` backend: the payment state of a fleet of sidecars in one shared Redis, so that a
//! retry landing on another sidecar finds the key's record, pin and provider (`PAYMENT_RULES.md` §3b).
//!
//! - **One script per step.** Claim, record the attempt, complete or release: each is one Lua script
//!   ([`scripts`]), atomic on Redis, one round trip, and safe to run again after a lost reply. A
//!   successful payment costs two round trips (claim with its first provider, then finish).
//! - **Our own timeout around every call.** A call that does not answer within `timeout` fails with
//!   [`StateError::Timeout`], and a write that timed out is taken as possibly applied: the caller
//!   sends nothing on anything but `Ok`, and the record a timed-out claim may have left holds its key
//!   for the lease at most, then resumes at the provider it recorded.
//! - **Redis time.** Leases, ttls and quotas run on Redis's `TIME`, one clock for the fleet, never a
//!   sidecar's.
//! - **Redis that forgot.** A random epoch id lives in `sy:epoch` (set if absent). A sidecar keeps
//!   the last one it saw (in memory and in its epoch file, so that a restart notices a Redis that
//!   lost its data meanwhile) and checks it at start-up, after any failed call (before the next one
//!   is served: a restart without persistence drops connections) and every `check_every`. A changed
//!   or recreated id means records may be gone: [`Redis::degraded`] is true for `hold_after_forget`
//!   (the longest record ttl), keyed payments stay on the primary, and it is logged and counted.
//!   A `FLUSHALL` that drops no connection is seen at the next periodic check.
//! - **Eviction.** Start-up refuses a Redis whose `maxmemory-policy` is not `noeviction`: records
//!   carry ttls, so every `volatile-*` policy could evict them too. A full Redis then refuses writes,
//!   and the caller fails closed. A managed Redis that disables `CONFIG` is let through with a warning.
//! - **Unavailable.** `fail_closed`: every call fails with [`StateError`] and the proxy answers 503
//!   `state_unavailable`, calling nobody. `primary_only`: records are kept in a local fallback store
//!   while Redis is down, and [`Redis::degraded`] is true (the proxy keeps keyed payments on the
//!   priority-0 provider). Pins, webhook events and quotas always fail closed here; the caller decides
//!   (quotas fall back to the local limiter).
//! - **Bounds.** `max_entries` and `max_bytes` bound one process's memory; on Redis, records are
//!   bounded by their ttl (and stored answers by the proxy's answer size limit), and Redis's own
//!   `maxmemory` with `noeviction` refuses writes rather than drop a record.
//!
//! Keys: `sy:r:{route:digest}` (records), `sy:u:{route}` (each route's index of the records that
//! may be unknown), `sy:p:{digest}` (object pins), `sy:e:{webhook:digest}` (webhook events),
//! `sy:q:{provider}` (quotas), `sy:epoch`. The steps of pins, events, quotas and the epoch touch one
//! key each; those of records touch a record and its route's index, two hash slots, so they do not
//! run on a Redis Cluster (`records.rs` says why the names stay): the backend runs on one Redis, with
//! replicas or Sentinel.

mod epoch;
mod events;
mod pins;
mod quota;
mod records;
mod scripts;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::Value;
use prometheus::{HistogramVec, IntCounterVec, IntGauge, IntGaugeVec};

use crate::state::StateError;

pub use events::RedisEvents;
pub use pins::RedisPins;
pub use quota::RedisQuota;
pub use records::RedisRecords;

/// The `backend` label of this backend's metrics.
const BACKEND: &str = "redis";

/// What keyed payments do while Redis cannot be reached (`state.redis.on_unavailable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnUnavailable {
    /// Fail every call: the proxy answers 503 `state_unavailable` and calls no provider.
    #[default]
    FailClosed,
    /// Keep records in the local fallback store, priority-0 provider only (`degraded`).
    PrimaryOnly,
}

/// The metric handles this backend reports to (the families of `crate::metrics`, passed in by the
/// caller): `switchyard_state_operations_total{backend,op,result}`,
/// `switchyard_state_duration_seconds{backend,op}`, `switchyard_state_up{backend}`,
/// `switchyard_state_epoch_changes_total{backend}` and `switchyard_state_degraded`.
#[derive(Debug, Clone)]
pub struct StateMetrics {
    /// Calls by backend, op and result (`ok`, `error`, `timeout`, `fenced`).
    pub operations: IntCounterVec,
    /// Time of one call, by backend and op.
    pub duration: HistogramVec,
    /// 1 when the last call worked, by backend.
    pub up: IntGaugeVec,
    /// Times the store was found to have forgotten its data, by backend.
    pub epoch_changes: IntCounterVec,
    /// 1 while keyed payments are held to the primary.
    pub degraded: IntGauge,
}

/// How to run against Redis.
#[derive(Debug, Clone)]
pub struct Options {
    /// The longest any call may take (`state.redis.timeout`).
    pub timeout: Duration,
    /// What keyed payments do while Redis is down.
    pub on_unavailable: OnUnavailable,
    /// Where the last epoch seen is kept across restarts (in the state dir); `None`: in memory only,
    /// and a Redis that forgot while this sidecar was down goes unnoticed.
    pub epoch_file: Option<PathBuf>,
    /// How long keyed payments are held to the primary after Redis forgot: the longest record ttl.
    pub hold_after_forget: Duration,
    /// How often the epoch (and whether Redis answers) is checked in the background.
    pub check_every: Duration,
    /// Where to report.
    pub metrics: Option<StateMetrics>,
}

impl Options {
    /// Fail closed, no epoch file, a 24 h hold after a forget, a check every second, no metrics.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            on_unavailable: OnUnavailable::FailClosed,
            epoch_file: None,
            hold_after_forget: Duration::from_secs(24 * 3600),
            check_every: Duration::from_secs(1),
            metrics: None,
        }
    }
}

/// Why the backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL is not a Redis URL.
    #[error("state.redis.url is not a usable Redis URL: {0}")]
    Url(String),
    /// Redis did not answer at start-up.
    #[error("Redis did not answer at start-up: {0}")]
    Unreachable(StateError),
    /// Redis may evict records.
    #[error("Redis maxmemory-policy is {0:?}: records could be evicted (every volatile-* policy evicts keys with a ttl, which records have); set maxmemory-policy noeviction")]
    Eviction(String),
    /// The epoch file could not be read or written.
    #[error("the state epoch file {path}: {reason}")]
    EpochFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// A connection to the fleet's Redis, shared by every store of this backend (clones share it).
#[derive(Clone)]
pub struct Redis {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("timeout", &self.shared.options.timeout)
            .field("up", &self.shared.up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

struct Shared {
    conn: ConnectionManager,
    options: Options,
    /// Milliseconds added to Redis's time by every script: 0 in service; tests move it forward.
    offset_ms: AtomicU64,
    /// Whether the last call (or check) was answered.
    up: AtomicBool,
    /// A call failed: the epoch is checked before the next one is served.
    suspect: AtomicBool,
    epoch: epoch::Epoch,
}

/// The store calls, as the `op` label names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Begin,
    Attempt,
    Finish,
    PinFind,
    PinRemember,
    EventBegin,
    EventFinish,
    Quota,
    Unknowns,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Self::Begin => "begin",
            Self::Attempt => "attempt",
            Self::Finish => "finish",
            Self::PinFind => "pin_find",
            Self::PinRemember => "pin_remember",
            Self::EventBegin => "event_begin",
            Self::EventFinish => "event_finish",
            Self::Quota => "quota",
            Self::Unknowns => "unknowns",
        }
    }
}

impl Redis {
    /// Connects to `url` with a per-call `timeout`, keeping the last epoch seen in `epoch_file`;
    /// fails closed while Redis is down. See [`Redis::connect_with`].
    pub async fn connect(
        url: &str,
        timeout: Duration,
        epoch_file: Option<&Path>,
    ) -> Result<Self, ConnectError> {
        let mut options = Options::new(timeout);
        options.epoch_file = epoch_file.map(Path::to_path_buf);
        Self::connect_with(url, options).await
    }

    /// Connects to `url`, checks that Redis answers and cannot evict records, reads the fleet's epoch
    /// (comparing it with the epoch file's), and starts the background check.
    pub async fn connect_with(url: &str, options: Options) -> Result<Self, ConnectError> {
        let client = ::redis::Client::open(url).map_err(|e| ConnectError::Url(e.to_string()))?;
        let epoch = epoch::Epoch::load(options.epoch_file.clone())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.timeout.max(Duration::from_millis(100))))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(200));
        let startup = (options.timeout * 10).max(Duration::from_secs(2));
        let conn =
            match tokio::time::timeout(startup, ConnectionManager::new_with_config(client, config))
                .await
            {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => return Err(ConnectError::Unreachable(unreachable(&e))),
                Err(_) => return Err(ConnectError::Unreachable(StateError::Timeout(startup))),
            };
        let redis = Self {
            shared: Arc::new(Shared {
                conn,
                options,
                offset_ms: AtomicU64::new(0),
                up: AtomicBool::new(true),
                suspect: AtomicBool::new(false),
                epoch,
            }),
        };
        redis.startup_checks(startup).await.map_err(|e| match e {
            Startup::State(e) => ConnectError::Unreachable(e),
            Startup::Refused(e) => e,
        })?;
        if let Some(m) = &redis.shared.options.metrics {
            m.up.with_label_values(&[BACKEND]).set(1);
            m.epoch_changes.with_label_values(&[BACKEND]);
        }
        tokio::spawn(background(Arc::downgrade(&redis.shared)));
        Ok(redis)
    }

    async fn startup_checks(&self, within: Duration) -> Result<(), Startup> {
        let mut conn = self.shared.conn.clone();
        let checks = async {
            let pong: String = ::redis::cmd("PING")
                .query_async(&mut conn)
                .await
                .map_err(|e| Startup::State(unreachable(&e)))?;
            if pong != "PONG" {
                return Err(Startup::State(StateError::Unreachable(format!(
                    "PING answered {pong:?}"
                ))));
            }
            let policy: Result<Vec<String>, _> = ::redis::cmd("CONFIG")
                .arg("GET")
                .arg("maxmemory-policy")
                .query_async(&mut conn)
                .await;
            match policy {
                Ok(pair) => match pair.get(1) {
                    Some(p) if p == "noeviction" => {}
                    Some(p) => return Err(Startup::Refused(ConnectError::Eviction(p.clone()))),
                    None => tracing::warn!(
                        "Redis did not say its maxmemory-policy; make sure it is noeviction"
                    ),
                },
                Err(e) if e.is_io_error() || e.is_connection_dropped() => {
                    return Err(Startup::State(unreachable(&e)))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Redis refused CONFIG GET maxmemory-policy (a managed Redis?); make sure it is noeviction")
                }
            }
            self.check_epoch().await.map_err(Startup::State)
        };
        match tokio::time::timeout(within, checks).await {
            Ok(r) => r,
            Err(_) => Err(Startup::State(StateError::Timeout(within))),
        }
    }

    /// Whether keyed payments are held to the primary: Redis forgot its data (for the hold after
    /// the forget), or it is down and records go to the local fallback (`primary_only`).
    pub fn degraded(&self) -> bool {
        self.shared.epoch.held().is_some() || self.on_fallback()
    }

    /// How long keyed payments are still held after Redis forgot its data, if they are.
    pub fn forgot(&self) -> Option<Duration> {
        self.shared.epoch.held()
    }

    /// Whether the last call or check was answered.
    pub fn up(&self) -> bool {
        self.shared.up.load(Ordering::SeqCst)
    }

    /// Whether records go to the local fallback now: `primary_only` while Redis is down.
    fn on_fallback(&self) -> bool {
        self.shared.options.on_unavailable == OnUnavailable::PrimaryOnly && !self.up()
    }

    /// The time offset the scripts add to Redis's time, in milliseconds.
    fn offset_ms(&self) -> u64 {
        self.shared.offset_ms.load(Ordering::SeqCst)
    }

    /// Moves this backend's view of Redis's time forward (tests: leases and ttls run out).
    #[cfg(test)]
    pub(crate) fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.shared.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Checks the epoch now: start-up, after a failed call, and in the background.
    async fn check_epoch(&self) -> Result<(), StateError> {
        let mut conn = self.shared.conn.clone();
        let fresh = format!("{:032x}", rand::random::<u128>());
        let answer: Value = scripts::EPOCH
            .key("sy:epoch")
            .arg(&fresh)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unreachable(&e))?;
        let (current, created) = match answer {
            Value::Array(items) => match items.as_slice() {
                [id, created] => (text(id), int(created) == Some(1)),
                _ => (None, false),
            },
            _ => (None, false),
        };
        let Some(current) = current else {
            return Err(StateError::Unreachable(
                "Redis answered the epoch check with something else".to_owned(),
            ));
        };
        let hold = self.shared.options.hold_after_forget;
        if let Some(change) = self.shared.epoch.observe(&current, created, hold) {
            tracing::error!(
                previous = %change.previous,
                current = %current,
                hold_s = hold.as_secs(),
                "Redis lost its records (restart without persistence, failover or flush): keyed payments stay on their primary provider until the records' ttl has passed"
            );
            if let Some(m) = &self.shared.options.metrics {
                m.epoch_changes.with_label_values(&[BACKEND]).inc();
            }
        }
        if let Err(e) = self.shared.epoch.persist().await {
            tracing::warn!(error = %e, "the state epoch file could not be written");
        }
        self.shared.suspect.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Runs one store call: checks the epoch first if a call failed since the last check, bounds
    /// the whole by the timeout, and reports it. A call that fails or times out marks Redis down
    /// and suspect (its data may be gone when it answers again).
    pub(crate) async fn run<T, F>(&self, op: Op, call: F) -> Result<T, StateError>
    where
        F: Future<Output = Result<T, StateError>> + Send,
    {
        let started = Instant::now();
        let timeout = self.shared.options.timeout;
        let guarded = async {
            if self.shared.suspect.load(Ordering::SeqCst) {
                self.check_epoch().await?;
            }
            call.await
        };
        let result = match tokio::time::timeout(timeout, guarded).await {
            Ok(r) => r,
            Err(_) => Err(StateError::Timeout(timeout)),
        };
        let label = match &result {
            Ok(_) => "ok",
            Err(StateError::Fenced) => "fenced",
            Err(StateError::Timeout(_)) => "timeout",
            Err(_) => "error",
        };
        let failed = matches!(
            result,
            Err(StateError::Timeout(_) | StateError::Unreachable(_))
        );
        self.shared.up.store(!failed, Ordering::SeqCst);
        if failed {
            self.shared.suspect.store(true, Ordering::SeqCst);
        }
        if let Some(m) = &self.shared.options.metrics {
            m.operations
                .with_label_values(&[BACKEND, op.as_str(), label])
                .inc();
            m.duration
                .with_label_values(&[BACKEND, op.as_str()])
                .observe(started.elapsed().as_secs_f64());
            m.up.with_label_values(&[BACKEND]).set(i64::from(!failed));
        }
        result
    }

    /// A connection for one call (clones share the one multiplexed connection).
    fn conn(&self) -> ConnectionManager {
        self.shared.conn.clone()
    }
}

enum Startup {
    State(StateError),
    Refused(ConnectError),
}

/// Checks the epoch (and so whether Redis answers) every `check_every` while the backend lives.
async fn background(shared: Weak<Shared>) {
    loop {
        let every = match shared.upgrade() {
            Some(s) => s.options.check_every,
            None => return,
        };
        tokio::time::sleep(every).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let redis = Redis { shared };
        let timeout = redis.shared.options.timeout;
        let answered = matches!(
            tokio::time::timeout(timeout, redis.check_epoch()).await,
            Ok(Ok(()))
        );
        redis.shared.up.store(answered, Ordering::SeqCst);
        if !answered {
            redis.shared.suspect.store(true, Ordering::SeqCst);
        }
        if let Some(m) = &redis.shared.options.metrics {
            m.up.with_label_values(&[BACKEND]).set(i64::from(answered));
            m.degraded.set(i64::from(redis.degraded()));
        }
    }
}

/// A Redis error as the caller sees it (the URL, which may hold a password, is never in it).
fn unreachable(e: &::redis::RedisError) -> StateError {
    StateError::Unreachable(e.to_string())
}

/// A bulk or simple string reply as text.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Okay => Some("OK".to_owned()),
        _ => None,
    }
}

/// An integer reply (or one sent as a string).
fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// A reply that is not what the script answers: a bug or another program's key.
fn bad_reply(what: &str) -> StateError {
    StateError::Unreachable(format!("Redis answered {what} with something unexpected"))
}

/// A fresh fencing token for a claim: random (fencing needs only inequality), never 0, top bit clear
/// (a lease with the top bit set was given by the local fallback store).
fn token() -> u64 {
    (rand::random::<u64>() >> 1).max(1)
}

/// The digest that names an id in a key: 16 bytes of SHA-256, hex.
fn digest(id: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(&sha2::Sha256::digest(id)[..16])
}
