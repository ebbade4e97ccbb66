//! `state:` — where what the proxy knows about a payment lives (idempotency records, unknown-outcome
//! and payment-object pins, webhook dedupe, provider quotas), so that it survives a restart
//! (`local`) or is shared by every sidecar of a fleet (`redis`).
//!
//! The Redis URL may hold a password: [`RedisUrl`] never shows itself in `Debug`, so neither a logged
//! snapshot nor an error message carries it.

use std::path::PathBuf;
use std::time::Duration;

/// Default folder of the embedded store, relative to the config file's folder.
pub const DEFAULT_STATE_DIR: &str = "state";
/// Default timeout of one Redis command.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(100);
/// Longest timeout of one Redis command: a slower store holds every keyed payment back.
pub const MAX_REDIS_TIMEOUT: Duration = Duration::from_secs(10);
/// Default share of a provider's quota one sidecar uses on its own while Redis is unavailable.
pub const DEFAULT_QUOTA_SHARE: f64 = 0.5;

/// The `state` section. Changing it needs a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct StateConfig {
    /// Which store.
    pub backend: StateBackend,
    /// Folder of the embedded store (`local`), resolved against the config file's folder.
    pub dir: PathBuf,
    /// The shared store; `Some` exactly when `backend` is [`StateBackend::Redis`].
    pub redis: Option<RedisConfig>,
}

/// Which store holds payment state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StateBackend {
    /// This process's memory: lost on every restart, never shared. Tests and throwaway runs only.
    Memory,
    /// An embedded store on disk in `dir`: survives restarts, not shared.
    #[default]
    Local,
    /// One Redis shared by every sidecar of a fleet.
    Redis,
}

impl StateBackend {
    /// The name as written in the config, and as the `backend` label of the state metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Local => "local",
            Self::Redis => "redis",
        }
    }
}

/// `state.redis`.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisConfig {
    /// Where Redis is.
    pub url: RedisUrl,
    /// Timeout of one command; a write that timed out is treated as possibly applied.
    pub timeout: Duration,
    /// What keyed payments do while Redis is unavailable.
    pub on_unavailable: OnUnavailable,
    /// Share (0 < share ≤ 1) of each provider's `quota` this sidecar uses on its own, from its local
    /// limiter, while Redis is unavailable (the fleet-wide limit cannot be counted then).
    pub quota_share: f64,
}

/// What keyed payments do while the shared store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnUnavailable {
    /// 503 `state_unavailable` with Retry-After; no provider is called.
    #[default]
    FailClosed,
    /// Served from the local store, to a priority-0 provider only (never a backup), the answer marked
    /// `x-switchyard-state: degraded`.
    PrimaryOnly,
}

impl OnUnavailable {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FailClosed => "fail_closed",
            Self::PrimaryOnly => "primary_only",
        }
    }
}

/// A `redis://` or `rediss://` URL. It may hold a password (when it came from an environment variable
/// or a file), so `Debug` shows only that it is there; never log it or put it in a metric.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    url: String,
    /// Start and end of the password in `url`, when it has one.
    password: Option<(usize, usize)>,
}

impl RedisUrl {
    /// Wraps a URL already checked by the validator; `password` is the byte range of its password.
    pub(crate) fn new(url: String, password: Option<(usize, usize)>) -> Self {
        Self { url, password }
    }

    /// The whole URL, password included: for the Redis client only.
    pub fn expose(&self) -> &str {
        &self.url
    }

    /// Whether TLS is used (`rediss://`).
    pub fn is_tls(&self) -> bool {
        self.url.starts_with("rediss://")
    }

    /// The URL with its password replaced by `***`: safe for a start-up log line or an error message.
    pub fn redacted(&self) -> String {
        match self.password {
            Some((start, end)) => format!("{}***{}", &self.url[..start], &self.url[end..]),
            None => self.url.clone(),
        }
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisUrl(<redacted>)")
    }
}
