//! The domain model of a validated config: what the proxy runs on, with every value parsed and every
//! reference resolved. Nothing here parses or checks; `validate` builds these types from the raw mirror,
//! and the rest of the crate reads them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue, Method};

use super::secrets::{Secret, SecretUse};

mod limits;
mod state;
mod webhooks;
pub use self::limits::*;
pub use self::state::{
    OnUnavailable, RedisConfig, RedisUrl, StateBackend, StateConfig, DEFAULT_QUOTA_SHARE,
    DEFAULT_REDIS_TIMEOUT, DEFAULT_STATE_DIR, MAX_REDIS_TIMEOUT,
};
pub use self::webhooks::{
    AuditBodies, AuditConfig, Dedupe, GenericHmac, SignForShop, SignatureEncoding, SignatureScheme,
    SigningKey, Verify, Webhook, DEFAULT_AUDIT_MAX_BODY, DEFAULT_AUDIT_MAX_BYTES,
    DEFAULT_AUDIT_QUEUE, DEFAULT_AUDIT_RETENTION, DEFAULT_DEDUPE_MAX_ENTRIES, DEFAULT_DEDUPE_TTL,
    DEFAULT_SHOP_SIGNATURE_HEADER, DEFAULT_WEBHOOK_MAX_BODY, DEFAULT_WEBHOOK_TIMEOUT,
    DEFAULT_WEBHOOK_TOLERANCE,
};

/// Default shop-facing listener.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default admin listener.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
/// Default provider connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default timeout of one attempt at a provider.
pub const DEFAULT_PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default overall route timeout.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default largest request body.
pub const DEFAULT_MAX_BODY: u64 = 1 << 20;
/// Default largest request head.
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 64 << 10;
/// Default drain timeout on shutdown.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default idle time of a pooled provider connection.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Default most idle pooled connections per provider.
pub const DEFAULT_POOL_MAX_IDLE: usize = 32;
/// Default target weight.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Default slow start after recovery.
pub const DEFAULT_SLOW_START: Duration = Duration::from_secs(10);
/// Default cap on a provider's Retry-After.
pub const DEFAULT_MAX_THROTTLE: Duration = Duration::from_secs(60);
/// Default `providers.NAME.idempotency_retention`: Stripe prunes keys after 24 hours.
pub const DEFAULT_IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(86_400);
/// Default overprovisioning factor (Envoy's).
pub const DEFAULT_OVERPROVISIONING: f64 = 1.4;
/// Default most keys of a keyed route rate limit.
pub const DEFAULT_RATE_LIMIT_MAX_KEYS: usize = 100_000;

/// The validated config: what the proxy runs on. Immutable; a reload builds a new one.
#[derive(Debug)]
pub struct Snapshot {
    /// Shop-facing listener.
    pub listen: SocketAddr,
    /// Admin listener and token.
    pub admin: Admin,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain_timeout: Duration,
    /// Largest request head the shop may send.
    pub max_header_bytes: usize,
    /// Providers by name.
    pub providers: BTreeMap<Arc<str>, Arc<Provider>>,
    /// Routes in match order.
    pub routes: Vec<Arc<Route>>,
    /// Simulated providers to serve in this process.
    pub sandbox: Vec<Sandbox>,
    /// Webhook endpoints, in file order.
    pub webhooks: Vec<Arc<Webhook>>,
    /// The audit trail, when configured.
    pub audit: Option<AuditConfig>,
    /// Payment objects pinned to their provider.
    pub pins: Pins,
    /// Bounds on connections, buffered bytes and slow clients.
    pub limits: Limits,
    /// Where payment state lives (needs a restart to change).
    pub state: StateConfig,
    /// Every secret the config reads, where from (never the value).
    pub secrets: Vec<SecretUse>,
}

impl Snapshot {
    /// The distinct `listen` addresses of the webhooks, in file order.
    pub fn webhook_listeners(&self) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for addr in self.webhooks.iter().filter_map(|w| w.listen) {
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
        out
    }
}

/// The admin listener.
#[derive(Debug)]
pub struct Admin {
    /// Address.
    pub listen: SocketAddr,
    /// Bearer token for write calls, if configured.
    pub token: Option<Secret>,
}

/// A provider endpoint.
#[derive(Debug)]
pub struct Provider {
    /// Config name.
    pub name: Arc<str>,
    /// `http` (loopback only) or `https`.
    pub scheme: Scheme,
    /// Host and port.
    pub authority: Authority,
    /// Base path prepended to every forwarded path, without a trailing slash (may be empty).
    pub base_path: String,
    /// Credential the sidecar injects.
    pub auth: Option<Auth>,
    /// TLS settings.
    pub tls: Tls,
    /// Connect timeout (TCP and TLS).
    pub connect_timeout: Duration,
    /// Timeout of one attempt until the response head.
    pub timeout: Duration,
    /// Idle time of a pooled connection.
    pub pool_idle_timeout: Duration,
    /// Most idle pooled connections.
    pub pool_max_idle: usize,
    /// Circuit breaker.
    pub breaker: BreakerConfig,
    /// Active health checks, when configured.
    pub health_check: Option<HealthCheck>,
    /// The account's rate limit, when configured.
    pub quota: Option<Quota>,
    /// Ramp back to full weight after recovery (zero: none).
    pub slow_start: Duration,
    /// Longest throttle window a 429's Retry-After may set.
    pub max_throttle: Duration,
    /// The header this provider reads the idempotency key from.
    pub idempotency_header: HeaderName,
    /// The longest key it accepts; longer keys are hashed, never cut.
    pub idempotency_key_max_len: usize,
    /// How long the provider keeps the answer of a key (Stripe 24 h, Adyen at least 31 days): the
    /// resolver sends an unknown operation again only within it, since after it the provider would
    /// take the resend for a new payment.
    pub idempotency_retention: std::time::Duration,
}

/// Circuit breaker settings of a provider (see `health::breaker`).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Failures in a row that open the breaker (0 turns this trigger off).
    pub consecutive_failures: u32,
    /// Failure share over the window that opens the breaker.
    pub failure_rate: f64,
    /// Length of the sliding window.
    pub window: Duration,
    /// Calls needed in the window before the rate triggers apply.
    pub min_requests: u32,
    /// Calls slower than this count as slow (`None`: the slow-call trigger is off).
    pub slow_call: Option<Duration>,
    /// Slow share over the window that opens the breaker.
    pub slow_call_rate: f64,
    /// First open period.
    pub open_for: Duration,
    /// Longest open period after repeated trips.
    pub max_open_for: Duration,
    /// Probe calls admitted at once while HalfOpen, and successes needed to close.
    pub half_open_probes: u32,
    /// Relative jitter of the open period, 0.0–0.5.
    pub jitter: f64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            min_requests: 20,
            slow_call: None,
            slow_call_rate: 0.8,
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(60),
            half_open_probes: 3,
            jitter: 0.1,
        }
    }
}

/// Active health checks of a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Path (with the provider's base path) to GET; a 2xx passes.
    pub path: String,
    /// Time between checks (jittered by ±10 %).
    pub interval: Duration,
    /// Timeout of one check.
    pub timeout: Duration,
    /// Failed checks in a row that make the provider unhealthy.
    pub unhealthy_after: u32,
    /// Passed checks in a row that make it healthy again.
    pub healthy_after: u32,
}

/// The provider account's own rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Requests per second.
    pub rps: u32,
    /// Burst size.
    pub burst: u32,
    /// Longest wait for a slot.
    pub max_wait: Duration,
}

/// What a route's rate limit counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    /// One bucket for the whole route.
    None,
    /// One bucket per shop connection's IP address.
    ClientIp,
    /// One bucket per value of this header (requests without it share one bucket).
    Header(HeaderName),
}

/// A route's rate limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per second.
    pub rps: u32,
    /// Burst size.
    pub burst: u32,
    /// What it counts by.
    pub by: RateLimitKey,
    /// Most keys tracked at once.
    pub max_keys: usize,
}

/// A route's retry policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    /// Most attempts of one request, the first included (1: no retry).
    pub attempts: u32,
    /// Base of the exponential backoff with full jitter.
    pub backoff: Duration,
    /// Cap of the backoff.
    pub max_backoff: Duration,
    /// Retries allowed as a share of recent requests.
    pub budget: f64,
    /// Retries always allowed per second.
    pub min_retries_per_second: u32,
    /// Longest provider `Retry-After` honoured.
    pub retry_after_cap: Duration,
    /// How long, from the request's start, a payment pinned to a provider whose breaker is open may
    /// wait for it (within the route's timeout) before the shop gets 503; zero: no wait.
    pub pinned_wait: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 3,
            backoff: Duration::from_millis(25),
            max_backoff: Duration::from_secs(1),
            budget: 0.2,
            min_retries_per_second: 10,
            retry_after_cap: Duration::from_secs(2),
            pinned_wait: Duration::from_secs(5),
        }
    }
}

/// How a route treats idempotency keys on POST and PATCH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdempotencyMode {
    /// Use the shop's key, or make a UUIDv4 and return it.
    Generate,
    /// A POST/PATCH without a key gets 400.
    Require,
    /// No keys, no records; a POST is never re-sent once it may have reached a provider.
    Off,
}

/// A route's idempotency settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Idempotency {
    /// Mode.
    pub mode: IdempotencyMode,
    /// How long a record is kept.
    pub ttl: Duration,
    /// Most records.
    pub max_entries: usize,
    /// Most bytes (stored answers included).
    pub max_bytes: usize,
    /// The shop's key header.
    pub header: HeaderName,
    /// A header that tells shops apart.
    pub scope_header: Option<HeaderName>,
}

impl Default for Idempotency {
    fn default() -> Self {
        Self {
            mode: IdempotencyMode::Generate,
            ttl: Duration::from_secs(24 * 3600),
            max_entries: 100_000,
            max_bytes: 64 << 20,
            header: HeaderName::from_static("idempotency-key"),
            scope_header: None,
        }
    }
}

/// How many payment-object ids (`pi_…`, a provider's `"id"`) are remembered with the provider that
/// holds them, and for how long: a capture or refund naming one goes to that provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pins {
    /// Most ids (about 35 bytes each); the oldest go first.
    pub max_entries: usize,
    /// How long an id is remembered after its provider's last answer naming it.
    pub ttl: Duration,
}

impl Default for Pins {
    fn default() -> Self {
        Self {
            max_entries: 200_000,
            ttl: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

/// A credential header.
#[derive(Debug)]
pub struct Auth {
    /// Header name.
    pub header: HeaderName,
    /// Header value, marked sensitive.
    pub value: Secret,
}

/// TLS settings of a provider; paths are resolved against the config file's folder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Tls {
    /// Extra trusted CA certificates (PEM).
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and key (PEM) for mTLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Name to verify in the provider's certificate instead of the URL host.
    pub server_name: Option<String>,
}

/// A route.
#[derive(Debug)]
pub struct Route {
    /// Config name.
    pub name: Arc<str>,
    /// What it matches.
    pub matcher: Match,
    /// Prefix removed from the path before forwarding.
    pub strip_prefix: Option<String>,
    /// Targets in config order.
    pub targets: Vec<Target>,
    /// Overall time for the request, all attempts.
    pub timeout: Duration,
    /// Largest request body in bytes.
    pub max_body: usize,
    /// Shop-side rate limit.
    pub rate_limit: Option<RateLimit>,
    /// Envoy's overprovisioning factor for spilling traffic to the next priority.
    pub overprovisioning: f64,
    /// Retry policy.
    pub retry: Retry,
    /// Idempotency keys.
    pub idempotency: Idempotency,
    /// Whether an attempt a provider did not execute may move to another target.
    pub failover_on_not_processed: bool,
    /// How the proxy's own answers on this route are written.
    pub errors: ErrorDialect,
}

/// A route's request matcher.
#[derive(Debug)]
pub struct Match {
    /// Path prefix, matched on segment boundaries.
    pub path_prefix: String,
    /// Allowed methods; `None` means any.
    pub methods: Option<Vec<Method>>,
    /// Host (lowercase, without port); `None` means any.
    pub host: Option<String>,
    /// Headers with exact values.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// One target of a route.
#[derive(Debug, Clone)]
pub struct Target {
    /// Provider name (exists in the snapshot).
    pub provider: Arc<str>,
    /// Lower is preferred.
    pub priority: u32,
    /// Share within a priority.
    pub weight: u32,
}

/// A simulated provider to run in-process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// Name.
    pub name: String,
    /// Address.
    pub listen: SocketAddr,
}

/// How the proxy's own answers on a route are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorDialect {
    /// `application/problem+json` (RFC 9457).
    #[default]
    Problem,
    /// Stripe's error envelope and `Stripe-Should-Retry`.
    Stripe,
    /// Adyen's service error body.
    Adyen,
}

impl ErrorDialect {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Problem => "problem",
            Self::Stripe => "stripe",
            Self::Adyen => "adyen",
        }
    }
}
