//! Turns the raw mirror into a typed, checked [`Snapshot`]: every value parsed, every reference
//! resolved, every secret read. Each problem is reported with the YAML path it comes from, and all
//! problems of a file are reported at once.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue, Method, Uri};

use super::schema::{self, RawConfig};
use super::units::{parse_duration, parse_size};

mod limits;
mod webhooks;
pub use self::limits::{Limits, ListenerLimits};
pub use self::webhooks::{
    AuditBodies, AuditConfig, Dedupe, GenericHmac, SignForShop, SignatureEncoding, SignatureScheme,
    SigningKey, Verify, Webhook, DEFAULT_AUDIT_MAX_BODY, DEFAULT_AUDIT_QUEUE,
    DEFAULT_AUDIT_RETENTION, DEFAULT_DEDUPE_MAX_ENTRIES, DEFAULT_DEDUPE_TTL,
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
    /// Every secret the config reads, where from (never the value).
    pub secrets: Vec<SecretUse>,
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

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// An environment variable.
    Env(String),
    /// A file (its content, trailing newline removed).
    File(PathBuf),
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Env(name) => write!(f, "environment variable {name}"),
            Self::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// A secret the config reads: where it is used and where it comes from.
#[derive(Debug, Clone)]
pub struct SecretUse {
    /// YAML path of the key that names it.
    pub path: String,
    /// Its source.
    pub source: SecretRef,
}

/// A secret value. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(HeaderValue);

impl Secret {
    /// The value as a header value (marked sensitive, so HTTP/2 never indexes it).
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }

    /// Compares with `candidate` in time that does not depend on where they differ.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let mine = self.0.as_bytes();
        if mine.len() != candidate.len() {
            return false;
        }
        mine.iter()
            .zip(candidate)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// YAML path, e.g. `routes[0].targets[1].provider`.
    pub path: String,
    /// Line in the file, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.path.is_empty() {
            "(top)"
        } else {
            &self.path
        };
        match self.line {
            Some(line) => write!(f, "{path} (line {line}): {}", self.message),
            None => write!(f, "{path}: {}", self.message),
        }
    }
}

/// What the validator needs from the outside world: secret values.
pub trait SecretSource {
    /// The value of `secret`, or why it cannot be read.
    fn read(&self, secret: &SecretRef) -> Result<String, String>;
}

/// Reads secrets from the process environment and the file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct EnvAndFiles;

impl SecretSource for EnvAndFiles {
    fn read(&self, secret: &SecretRef) -> Result<String, String> {
        match secret {
            SecretRef::Env(name) => {
                std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))
            }
            SecretRef::File(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
        }
    }
}

/// Accepts every secret with a placeholder value: for `check --allow-missing-secrets`.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlaceholderSecrets;

impl SecretSource for PlaceholderSecrets {
    fn read(&self, _: &SecretRef) -> Result<String, String> {
        Ok("placeholder".to_owned())
    }
}

/// Validates a raw config. `base_dir` is the folder relative file paths are resolved against.
pub fn validate(
    raw: RawConfig,
    base_dir: &Path,
    secrets: &dyn SecretSource,
) -> Result<Snapshot, Vec<Problem>> {
    let mut v = Validator {
        problems: Vec::new(),
        base_dir,
        secrets,
        secret_uses: Vec::new(),
    };
    let snapshot = v.config(raw);
    if v.problems.is_empty() {
        Ok(Snapshot {
            secrets: v.secret_uses,
            ..snapshot
        })
    } else {
        Err(v.problems)
    }
}

struct Validator<'a> {
    problems: Vec<Problem>,
    base_dir: &'a Path,
    secrets: &'a dyn SecretSource,
    secret_uses: Vec<SecretUse>,
}

impl Validator<'_> {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            line: None,
            message: message.into(),
        });
    }

    fn duration(&mut self, path: &str, text: Option<&str>, default: Duration) -> Duration {
        let Some(text) = text else { return default };
        match parse_duration(text) {
            Ok(d) if d.is_zero() => {
                self.problem(path, "must be greater than zero");
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.problem(path, e);
                default
            }
        }
    }

    fn size(&mut self, path: &str, text: Option<&str>, default: u64, min: u64, max: u64) -> usize {
        let Some(text) = text else {
            return default as usize;
        };
        match parse_size(text) {
            Ok(n) if n < min || n > max => {
                self.problem(path, format!("must be between {min} and {max} bytes"));
                default as usize
            }
            Ok(n) => n as usize,
            Err(e) => {
                self.problem(path, e);
                default as usize
            }
        }
    }

    fn socket_addr(&mut self, path: &str, text: Option<&str>, default: &str) -> SocketAddr {
        let text = text.unwrap_or(default);
        let parsed = match text.strip_prefix("localhost:") {
            Some(port) => port
                .parse::<u16>()
                .map(|p| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p))
                .ok(),
            None => text.parse::<SocketAddr>().ok(),
        };
        parsed.unwrap_or_else(|| {
            self.problem(
                path,
                format!("\"{text}\" is not an address; write IP:PORT, e.g. 127.0.0.1:8080"),
            );
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
        })
    }

    fn file(&self, text: &str) -> PathBuf {
        self.base_dir.join(text)
    }

    fn secret(
        &mut self,
        path: &str,
        env: Option<&str>,
        file: Option<&str>,
        what: &str,
    ) -> Option<Secret> {
        let (key, source) = match (env, file) {
            (Some(_), Some(_)) => {
                self.problem(
                    path,
                    format!("give {what} in one of _env or _file, not both"),
                );
                return None;
            }
            (Some(name), None) if !name.is_empty() => ("env", SecretRef::Env(name.to_owned())),
            (None, Some(f)) if !f.is_empty() => ("file", SecretRef::File(self.file(f))),
            (None, None) => return None,
            _ => {
                self.problem(path, format!("the name of {what}'s source is empty"));
                return None;
            }
        };
        let key_path = format!("{path}_{key}");
        self.secret_uses.push(SecretUse {
            path: key_path.clone(),
            source: source.clone(),
        });
        match self.secrets.read(&source) {
            Ok(value) => {
                let value = value.trim_end_matches(['\r', '\n']);
                match HeaderValue::from_str(value) {
                    Ok(mut v) => {
                        v.set_sensitive(true);
                        Some(Secret(v))
                    }
                    Err(_) => {
                        self.problem(
                            key_path,
                            format!("{source} holds characters not allowed in an HTTP header"),
                        );
                        None
                    }
                }
            }
            Err(e) => {
                self.problem(key_path, e);
                None
            }
        }
    }

    /// A header name, or a problem at `path`.
    fn header_name(&mut self, path: &str, text: &str) -> Option<HeaderName> {
        match HeaderName::from_bytes(text.as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                self.problem(path, format!("\"{text}\" is not a header name"));
                None
            }
        }
    }

    /// A secret that must be given: `{key}_env` or `{key}_file` under `path`.
    fn required_secret(
        &mut self,
        path: &str,
        key: &str,
        env: Option<&str>,
        file: Option<&str>,
        what: &str,
    ) -> Option<Secret> {
        if env.is_none() && file.is_none() {
            self.problem(path, format!("set {key}_env or {key}_file"));
            return None;
        }
        self.secret(&format!("{path}.{key}"), env, file, what)
    }

    fn config(&mut self, raw: RawConfig) -> Snapshot {
        let listen = self.socket_addr("listen", raw.listen.as_deref(), DEFAULT_LISTEN);
        let admin = self.admin(raw.admin, listen);
        let drain_timeout = self.duration(
            "drain_timeout",
            raw.drain_timeout.as_deref(),
            DEFAULT_DRAIN_TIMEOUT,
        );
        let max_header_bytes = self.size(
            "max_header_bytes",
            raw.max_header_bytes.as_deref(),
            DEFAULT_MAX_HEADER_BYTES,
            8 << 10,
            16 << 20,
        );
        let audit = raw.audit.map(|a| self.audit(a));
        let pins = self.pins(raw.pins);

        // Every name written, valid or not: a target naming a provider that has problems of its own
        // is not also reported as unknown.
        let defined: BTreeSet<String> = raw.providers.keys().cloned().collect();
        let mut providers = BTreeMap::new();
        for (name, p) in raw.providers {
            let path = format!("providers.{name}");
            if !valid_name(&name) {
                self.problem(
                    &path,
                    "provider names use letters, digits, '-', '_' and '.' only",
                );
            }
            if let Some(p) = self.provider(&path, &name, p) {
                providers.insert(Arc::clone(&p.name), Arc::new(p));
            }
        }

        if raw.routes.is_empty() {
            self.problem("routes", "at least one route is needed");
        }
        let mut route_names = HashSet::new();
        let mut routes = Vec::new();
        for (i, r) in raw.routes.into_iter().enumerate() {
            let path = format!("routes[{i}]");
            if !route_names.insert(r.name.clone()) {
                self.problem(
                    format!("{path}.name"),
                    format!("duplicate route name \"{}\"", r.name),
                );
            }
            routes.push(Arc::new(self.route(&path, r, &providers, &defined)));
        }
        let webhooks = self.webhooks(raw.webhooks, listen, admin.listen, &route_names);

        let mut sandbox_names = HashSet::new();
        let mut sandbox = Vec::new();
        for (i, s) in raw.sandbox.into_iter().enumerate() {
            let path = format!("sandbox[{i}]");
            if !sandbox_names.insert(s.name.clone()) {
                self.problem(
                    format!("{path}.name"),
                    format!("duplicate sandbox name \"{}\"", s.name),
                );
            }
            if !valid_name(&s.name) {
                self.problem(
                    format!("{path}.name"),
                    "sandbox names use letters, digits, '-', '_' and '.' only",
                );
            }
            let listen = self.socket_addr(&format!("{path}.listen"), Some(&s.listen), "");
            sandbox.push(Sandbox {
                name: s.name,
                listen,
            });
        }

        let largest_body = routes
            .iter()
            .map(|r| r.max_body)
            .chain(webhooks.iter().map(|w| w.max_body))
            .max()
            .unwrap_or(0);
        let limits = self.limits(raw.limits, largest_body);
        Snapshot {
            listen,
            admin,
            drain_timeout,
            max_header_bytes,
            providers,
            routes,
            sandbox,
            webhooks,
            audit,
            pins,
            limits,
            secrets: Vec::new(),
        }
    }

    fn pins(&mut self, raw: Option<schema::RawPins>) -> Pins {
        let d = Pins::default();
        let Some(p) = raw else { return d };
        let max_entries = p.max_entries.unwrap_or(d.max_entries);
        if max_entries == 0 {
            self.problem("pins.max_entries", "must be at least 1");
        }
        Pins {
            max_entries: max_entries.max(1),
            ttl: self.duration("pins.ttl", p.ttl.as_deref(), d.ttl),
        }
    }

    fn admin(&mut self, raw: Option<schema::RawAdmin>, shop: SocketAddr) -> Admin {
        let raw = raw.unwrap_or(schema::RawAdmin {
            listen: None,
            token_env: None,
            token_file: None,
        });
        let listen = self.socket_addr("admin.listen", raw.listen.as_deref(), DEFAULT_ADMIN_LISTEN);
        if listen == shop && listen.port() != 0 {
            self.problem(
                "admin.listen",
                "must differ from listen: the admin API is never served to the shop",
            );
        }
        let token = self.secret(
            "admin.token",
            raw.token_env.as_deref(),
            raw.token_file.as_deref(),
            "the admin token",
        );
        // A token that is configured but unreadable is already reported at its key.
        let configured = raw.token_env.is_some() || raw.token_file.is_some();
        if token.is_none() && !listen.ip().is_loopback() && !configured {
            self.problem(
                "admin.listen",
                "an admin listener off loopback needs a token: set admin.token_env or admin.token_file",
            );
        }
        Admin { listen, token }
    }

    fn provider(&mut self, path: &str, name: &str, p: schema::RawProvider) -> Option<Provider> {
        let idempotency_header = match p.idempotency_header.as_deref() {
            None => HeaderName::from_static("idempotency-key"),
            Some(h) => self
                .header_name(&format!("{path}.idempotency_header"), h)
                .unwrap_or(HeaderName::from_static("idempotency-key")),
        };
        let idempotency_key_max_len = p.idempotency_key_max_len.unwrap_or(255);
        if !(16..=4096).contains(&idempotency_key_max_len) {
            self.problem(
                format!("{path}.idempotency_key_max_len"),
                "must be between 16 and 4096",
            );
        }
        let breaker = self.breaker(&format!("{path}.breaker"), p.breaker);
        let health_check = p
            .health_check
            .map(|h| self.health_check(&format!("{path}.health_check"), h));
        let quota = p.quota.map(|q| self.quota(&format!("{path}.quota"), q));
        let slow_start = self.duration_or_zero(
            &format!("{path}.slow_start"),
            p.slow_start.as_deref(),
            DEFAULT_SLOW_START,
        );
        let max_throttle = self.duration(
            &format!("{path}.max_throttle"),
            p.max_throttle.as_deref(),
            DEFAULT_MAX_THROTTLE,
        );

        let url_path = format!("{path}.url");
        let url = self.url(&url_path, &p.url);
        let connect_timeout = self.duration(
            &format!("{path}.connect_timeout"),
            p.connect_timeout.as_deref(),
            DEFAULT_CONNECT_TIMEOUT,
        );
        let timeout = self.duration(
            &format!("{path}.timeout"),
            p.timeout.as_deref(),
            DEFAULT_PROVIDER_TIMEOUT,
        );
        let pool_idle_timeout = self.duration(
            &format!("{path}.pool_idle_timeout"),
            p.pool_idle_timeout.as_deref(),
            DEFAULT_POOL_IDLE_TIMEOUT,
        );
        let auth = p.auth.and_then(|a| {
            let apath = format!("{path}.auth");
            let header = a.header.as_deref().unwrap_or("Authorization");
            let header = self.header_name(&format!("{apath}.header"), header)?;
            let value = self.required_secret(
                &apath,
                "value",
                a.value_env.as_deref(),
                a.value_file.as_deref(),
                "the credential",
            )?;
            Some(Auth { header, value })
        });
        let tls = p.tls.map(|t| {
            let tpath = format!("{path}.tls");
            let client_cert = match (t.client_cert_file, t.client_key_file) {
                (Some(c), Some(k)) => Some((self.file(&c), self.file(&k))),
                (None, None) => None,
                _ => {
                    self.problem(
                        &tpath,
                        "client_cert_file and client_key_file go together: set both or neither",
                    );
                    None
                }
            };
            Tls {
                ca_file: t.ca_file.map(|f| self.file(&f)),
                client_cert,
                server_name: t.server_name,
            }
        });
        let (scheme, authority, base_path) = url?;
        if tls.is_some() && scheme == Scheme::HTTP {
            self.problem(
                format!("{path}.tls"),
                "tls is set but the url is http://; use https://",
            );
        }
        Some(Provider {
            name: Arc::from(name),
            scheme,
            authority,
            base_path,
            auth,
            tls: tls.unwrap_or_default(),
            connect_timeout,
            timeout,
            pool_idle_timeout,
            pool_max_idle: p.pool_max_idle.unwrap_or(DEFAULT_POOL_MAX_IDLE),
            breaker,
            health_check,
            quota,
            slow_start,
            max_throttle,
            idempotency_header,
            idempotency_key_max_len,
        })
    }

    fn url(&mut self, path: &str, text: &str) -> Option<(Scheme, Authority, String)> {
        let uri: Uri = match text.parse() {
            Ok(u) => u,
            Err(e) => {
                self.problem(path, format!("\"{text}\" is not a URL: {e}"));
                return None;
            }
        };
        let scheme = match uri.scheme_str() {
            Some("https") => Scheme::HTTPS,
            Some("http") => Scheme::HTTP,
            _ => {
                self.problem(
                    path,
                    format!(
                        "\"{text}\" must start with https:// (or http:// for a loopback address)"
                    ),
                );
                return None;
            }
        };
        let Some(authority) = uri.authority().cloned() else {
            self.problem(path, format!("\"{text}\" has no host"));
            return None;
        };
        if authority.as_str().contains('@') {
            self.problem(
                path,
                "credentials in the URL are not allowed; use auth.value_env",
            );
            return None;
        }
        if uri.query().is_some() {
            self.problem(path, "a provider URL may carry a base path but no query");
            return None;
        }
        if scheme == Scheme::HTTP && !is_loopback_host(authority.host()) {
            self.problem(
                path,
                "plain http:// is only allowed to a loopback address (sandbox, tests); provider traffic uses https://",
            );
            return None;
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        Some((scheme, authority, base_path))
    }

    fn route(
        &mut self,
        path: &str,
        r: schema::RawRoute,
        providers: &BTreeMap<Arc<str>, Arc<Provider>>,
        defined: &BTreeSet<String>,
    ) -> Route {
        if !valid_name(&r.name) {
            self.problem(
                format!("{path}.name"),
                "route names use letters, digits, '-', '_' and '.' only",
            );
        }
        let matcher = self.matcher(&format!("{path}.match"), r.matcher);
        let strip_prefix = r.strip_prefix.filter(|s| {
            let ok = s.starts_with('/');
            if !ok {
                self.problem(format!("{path}.strip_prefix"), "must start with '/'");
            }
            ok
        });
        if r.targets.is_empty() {
            self.problem(
                format!("{path}.targets"),
                "a route needs at least one target",
            );
        }
        let mut seen = HashSet::new();
        let mut targets = Vec::new();
        for (j, t) in r.targets.into_iter().enumerate() {
            let tpath = format!("{path}.targets[{j}]");
            let Some((name, _)) = providers.get_key_value(t.provider.as_str()) else {
                if !defined.contains(&t.provider) {
                    self.problem(
                        format!("{tpath}.provider"),
                        unknown_provider(&t.provider, defined),
                    );
                }
                continue;
            };
            if !seen.insert(Arc::clone(name)) {
                self.problem(
                    format!("{tpath}.provider"),
                    format!("provider \"{name}\" is already a target of this route"),
                );
            }
            let weight = t.weight.unwrap_or(DEFAULT_WEIGHT);
            if weight == 0 || weight > 10_000 {
                self.problem(format!("{tpath}.weight"), "must be between 1 and 10000");
            }
            targets.push(Target {
                provider: Arc::clone(name),
                priority: t.priority.unwrap_or(0),
                weight,
            });
        }
        let timeout = self.duration(
            &format!("{path}.timeout"),
            r.timeout.as_deref(),
            DEFAULT_ROUTE_TIMEOUT,
        );
        let max_body = self.size(
            &format!("{path}.max_body"),
            r.max_body.as_deref(),
            DEFAULT_MAX_BODY,
            0,
            64 << 20,
        );
        let rate_limit = r
            .rate_limit
            .map(|l| self.rate_limit(&format!("{path}.rate_limit"), l));
        let retry = self.retry(&format!("{path}.retry"), r.retry);
        let idempotency = self.idempotency(&format!("{path}.idempotency"), r.idempotency);
        let failover_on_not_processed = r.failover.and_then(|f| f.on_not_processed).unwrap_or(true);
        let overprovisioning = r.overprovisioning.unwrap_or(DEFAULT_OVERPROVISIONING);
        if !(1.0..=10.0).contains(&overprovisioning) {
            self.problem(
                format!("{path}.overprovisioning"),
                "must be between 1.0 and 10.0",
            );
        }
        Route {
            name: Arc::from(r.name.as_str()),
            matcher,
            strip_prefix,
            targets,
            timeout,
            max_body,
            rate_limit,
            overprovisioning,
            retry,
            idempotency,
            failover_on_not_processed,
        }
    }

    fn retry(&mut self, path: &str, raw: Option<schema::RawRetry>) -> Retry {
        let d = Retry::default();
        let Some(r) = raw else { return d };
        let attempts = self.count(format!("{path}.attempts"), r.attempts, d.attempts, 1);
        if attempts > 10 {
            self.problem(format!("{path}.attempts"), "must be at most 10");
        }
        let backoff = self.duration(&format!("{path}.backoff"), r.backoff.as_deref(), d.backoff);
        let max_backoff = self.duration(
            &format!("{path}.max_backoff"),
            r.max_backoff.as_deref(),
            d.max_backoff.max(backoff),
        );
        if max_backoff < backoff {
            self.problem(format!("{path}.max_backoff"), "must be at least backoff");
        }
        Retry {
            attempts: attempts.min(10),
            backoff,
            max_backoff,
            budget: self.ratio(format!("{path}.budget"), r.budget, d.budget, 10.0),
            min_retries_per_second: r.min_retries_per_second.unwrap_or(d.min_retries_per_second),
            retry_after_cap: self.duration_or_zero(
                &format!("{path}.retry_after_cap"),
                r.retry_after_cap.as_deref(),
                d.retry_after_cap,
            ),
            pinned_wait: self.duration_or_zero(
                &format!("{path}.pinned_wait"),
                r.pinned_wait.as_deref(),
                d.pinned_wait,
            ),
        }
    }

    fn idempotency(&mut self, path: &str, raw: Option<schema::RawIdempotency>) -> Idempotency {
        let d = Idempotency::default();
        let Some(i) = raw else { return d };
        let mode = match i.mode.as_deref() {
            None | Some("generate") => IdempotencyMode::Generate,
            Some("require") => IdempotencyMode::Require,
            Some("off") => IdempotencyMode::Off,
            Some(other) => {
                self.problem(
                    format!("{path}.mode"),
                    format!("\"{other}\" is not one of generate, require, off"),
                );
                IdempotencyMode::Generate
            }
        };
        let header = |v: &mut Self, key: &str, text: Option<String>| {
            text.and_then(|h| v.header_name(&format!("{path}.{key}"), &h))
        };
        let key_header = header(self, "header", i.header).unwrap_or(d.header);
        let scope_header = header(self, "scope_header", i.scope_header);
        let max_entries = i.max_entries.unwrap_or(d.max_entries);
        if max_entries == 0 {
            self.problem(format!("{path}.max_entries"), "must be at least 1");
        }
        Idempotency {
            mode,
            ttl: self.duration(&format!("{path}.ttl"), i.ttl.as_deref(), d.ttl),
            max_entries: max_entries.max(1),
            max_bytes: self.size(
                &format!("{path}.max_bytes"),
                i.max_bytes.as_deref(),
                d.max_bytes as u64,
                64 << 10,
                16 << 30,
            ),
            header: key_header,
            scope_header,
        }
    }

    /// Like `duration`, but "0s" is allowed and means off.
    fn duration_or_zero(&mut self, path: &str, text: Option<&str>, default: Duration) -> Duration {
        match text.map(parse_duration) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.problem(path, e);
                default
            }
        }
    }

    fn count(&mut self, path: String, value: Option<u32>, default: u32, min: u32) -> u32 {
        let v = value.unwrap_or(default);
        if v < min {
            self.problem(path, format!("must be at least {min}"));
            return default;
        }
        v
    }

    fn ratio(&mut self, path: String, value: Option<f64>, default: f64, max: f64) -> f64 {
        let v = value.unwrap_or(default);
        if v.is_nan() || !(0.0..=max).contains(&v) {
            self.problem(path, format!("must be between 0.0 and {max}"));
            return default;
        }
        v
    }

    fn breaker(&mut self, path: &str, raw: Option<schema::RawBreaker>) -> BreakerConfig {
        let d = BreakerConfig::default();
        let Some(b) = raw else { return d };
        let window = self.duration(&format!("{path}.window"), b.window.as_deref(), d.window);
        let open_for = self.duration(
            &format!("{path}.open_for"),
            b.open_for.as_deref(),
            d.open_for,
        );
        let max_open_for = self.duration(
            &format!("{path}.max_open_for"),
            b.max_open_for.as_deref(),
            d.max_open_for.max(open_for),
        );
        if max_open_for < open_for {
            self.problem(format!("{path}.max_open_for"), "must be at least open_for");
        }
        let failure_rate = self.ratio(
            format!("{path}.failure_rate"),
            b.failure_rate,
            d.failure_rate,
            1.0,
        );
        if failure_rate == 0.0 {
            self.problem(format!("{path}.failure_rate"), "must be greater than 0");
        }
        let slow_call = b.slow_call.as_deref().map(|s| {
            self.duration(
                &format!("{path}.slow_call"),
                Some(s),
                Duration::from_secs(1),
            )
        });
        BreakerConfig {
            consecutive_failures: b.consecutive_failures.unwrap_or(d.consecutive_failures),
            failure_rate,
            window,
            min_requests: self.count(
                format!("{path}.min_requests"),
                b.min_requests,
                d.min_requests,
                1,
            ),
            slow_call,
            slow_call_rate: self.ratio(
                format!("{path}.slow_call_rate"),
                b.slow_call_rate,
                d.slow_call_rate,
                1.0,
            ),
            open_for,
            max_open_for,
            half_open_probes: self.count(
                format!("{path}.half_open_probes"),
                b.half_open_probes,
                d.half_open_probes,
                1,
            ),
            jitter: self.ratio(format!("{path}.jitter"), b.jitter, d.jitter, 0.5),
        }
    }

    fn health_check(&mut self, path: &str, h: schema::RawHealthCheck) -> HealthCheck {
        let check_path = h.path.unwrap_or_else(|| "/healthz".to_owned());
        if !check_path.starts_with('/') {
            self.problem(format!("{path}.path"), "must start with '/'");
        }
        let interval = self.duration(
            &format!("{path}.interval"),
            h.interval.as_deref(),
            Duration::from_secs(5),
        );
        let timeout = self.duration(
            &format!("{path}.timeout"),
            h.timeout.as_deref(),
            Duration::from_secs(1),
        );
        if timeout > interval {
            self.problem(
                format!("{path}.timeout"),
                "must not be longer than interval",
            );
        }
        HealthCheck {
            path: check_path,
            interval,
            timeout,
            unhealthy_after: self.count(format!("{path}.unhealthy_after"), h.unhealthy_after, 3, 1),
            healthy_after: self.count(format!("{path}.healthy_after"), h.healthy_after, 2, 1),
        }
    }

    fn quota(&mut self, path: &str, q: schema::RawQuota) -> Quota {
        let rps = self.count(format!("{path}.rps"), Some(q.rps), 1, 1);
        Quota {
            rps,
            burst: self.count(format!("{path}.burst"), q.burst, rps, 1),
            max_wait: self.duration_or_zero(
                &format!("{path}.max_wait"),
                q.max_wait.as_deref(),
                Duration::from_millis(50),
            ),
        }
    }

    fn rate_limit(&mut self, path: &str, l: schema::RawRateLimit) -> RateLimit {
        let rps = self.count(format!("{path}.rps"), Some(l.rps), 1, 1);
        let by = match l.by.as_deref() {
            None | Some("none") => RateLimitKey::None,
            Some("client_ip") => RateLimitKey::ClientIp,
            Some(other) => match other.strip_prefix("header:").map(str::trim) {
                Some(name) => self
                    .header_name(&format!("{path}.by"), name)
                    .map_or(RateLimitKey::None, RateLimitKey::Header),
                None => {
                    self.problem(
                        format!("{path}.by"),
                        format!("\"{other}\" is not one of none, client_ip, header:NAME"),
                    );
                    RateLimitKey::None
                }
            },
        };
        let max_keys = l.max_keys.unwrap_or(DEFAULT_RATE_LIMIT_MAX_KEYS);
        if max_keys == 0 {
            self.problem(format!("{path}.max_keys"), "must be at least 1");
        }
        RateLimit {
            rps,
            burst: self.count(format!("{path}.burst"), l.burst, rps, 1),
            by,
            max_keys: max_keys.max(1),
        }
    }

    fn matcher(&mut self, path: &str, m: schema::RawMatch) -> Match {
        let path_prefix = m.path_prefix.unwrap_or_else(|| "/".to_owned());
        if !path_prefix.starts_with('/') {
            self.problem(format!("{path}.path_prefix"), "must start with '/'");
        }
        let methods = m.methods.map(|ms| {
            ms.iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    let upper = s.to_ascii_uppercase();
                    match Method::from_bytes(upper.as_bytes()) {
                        Ok(method) if upper == *s => Some(method),
                        _ => {
                            self.problem(
                                format!("{path}.methods[{i}]"),
                                format!("\"{s}\" is not an HTTP method (write it in capitals, e.g. POST)"),
                            );
                            None
                        }
                    }
                })
                .collect()
        });
        let host = m.host.map(|h| h.to_ascii_lowercase());
        let mut headers = Vec::new();
        for (name, value) in m.headers {
            let hpath = format!("{path}.headers.{name}");
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                (Ok(n), Ok(v)) => headers.push((n, v)),
                (Err(_), _) => self.problem(hpath, format!("\"{name}\" is not a header name")),
                (_, Err(_)) => self.problem(hpath, "not a valid header value"),
            }
        }
        Match {
            path_prefix,
            methods,
            host,
            headers,
        }
    }
}

fn unknown_provider(name: &str, defined: &BTreeSet<String>) -> String {
    let known: Vec<&str> = defined.iter().map(String::as_str).collect();
    if known.is_empty() {
        format!("unknown provider \"{name}\" (no providers are defined)")
    } else {
        format!(
            "unknown provider \"{name}\" (defined: {})",
            known.join(", ")
        )
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl Match {
    /// Whether a request with these parts matches.
    pub fn matches(
        &self,
        method: &Method,
        path: &str,
        host: Option<&str>,
        headers: &http::HeaderMap,
    ) -> bool {
        path_has_prefix(path, &self.path_prefix)
            && self.methods.as_ref().is_none_or(|ms| ms.contains(method))
            && self
                .host
                .as_ref()
                .is_none_or(|h| host.is_some_and(|got| got.eq_ignore_ascii_case(h)))
            && self
                .headers
                .iter()
                .all(|(n, v)| headers.get_all(n).iter().any(|got| got == v))
    }
}

/// Whether `path` starts with `prefix` on a segment boundary: `/v1` matches `/v1` and `/v1/x`, not `/v10`.
pub fn path_has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}
