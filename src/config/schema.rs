//! The serde mirror of `routes.yaml`: field names and nesting exactly as users write them.
//!
//! Every struct denies unknown fields, so a typo is an error that names the YAML path and line, never a
//! silently ignored key. Values stay as written (strings for durations, sizes, URLs); `validate` turns
//! them into typed values.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Shop-facing listener address.
    pub listen: Option<String>,
    /// The admin listener.
    pub admin: Option<RawAdmin>,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain_timeout: Option<String>,
    /// Largest request head (request line and headers) the shop may send.
    pub max_header_bytes: Option<String>,
    /// Providers by name.
    #[serde(default, deserialize_with = "unique_keys")]
    pub providers: BTreeMap<String, RawProvider>,
    /// Routes, matched in order.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Simulated providers served by this process.
    #[serde(default)]
    pub sandbox: Vec<RawSandbox>,
    /// Webhook endpoints (provider → sidecar → shop).
    #[serde(default)]
    pub webhooks: Vec<RawWebhook>,
    /// The audit trail.
    pub audit: Option<RawAudit>,
    /// Payment objects pinned to the provider that holds them.
    pub pins: Option<RawPins>,
    /// Bounds on connections, buffered bytes and slow clients, process-wide and per listener.
    pub limits: Option<RawLimits>,
    /// Where payment state lives: this process's memory, an embedded store on disk, or a shared Redis.
    pub state: Option<RawState>,
}

/// `state:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    /// `local` (default), `redis` or `memory`.
    pub backend: Option<String>,
    /// (local) the embedded store's folder, relative to the config file's folder.
    pub dir: Option<String>,
    /// (redis) the shared store.
    pub redis: Option<RawRedis>,
}

/// `state.redis:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// `redis://` or `rediss://` URL without a password.
    pub url: Option<String>,
    /// Environment variable holding the URL (the way to give one with a password).
    pub url_env: Option<String>,
    /// File holding the URL.
    pub url_file: Option<String>,
    /// Timeout of one command.
    pub timeout: Option<String>,
    /// `fail_closed` or `primary_only`.
    pub on_unavailable: Option<String>,
    /// Share of a provider's quota this sidecar may use on its own while Redis is unavailable.
    pub quota_share: Option<f64>,
}

/// `limits:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Most open connections on the shop and webhook listeners together.
    pub max_connections: Option<usize>,
    /// Most request body bytes held in memory at once, every listener together.
    pub max_buffered_bytes: Option<String>,
    /// Most header fields in one request head.
    pub max_headers: Option<usize>,
    /// How long a connection may take to send a request head (and, between requests, to start one).
    pub header_read_timeout: Option<String>,
    /// How long a new connection may take to send its first bytes (the whole preface for HTTP/2).
    pub preface_timeout: Option<String>,
    /// How long an HTTP/2 connection may stay without a request before it is closed.
    pub h2_idle_timeout: Option<String>,
    /// Time between HTTP/2 keep-alive pings.
    pub h2_keep_alive_interval: Option<String>,
    /// How long an HTTP/2 keep-alive ping may wait for its answer.
    pub h2_keep_alive_timeout: Option<String>,
    /// The shop listener.
    pub shop: Option<RawListenerLimits>,
    /// Each webhook listener.
    pub webhooks: Option<RawListenerLimits>,
    /// The admin listener.
    pub admin: Option<RawListenerLimits>,
}

/// `limits.shop:`, `limits.webhooks:`, `limits.admin:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerLimits {
    /// Most open connections on this listener.
    pub max_connections: Option<usize>,
    /// How long a request body may take to arrive in full, from the end of its head.
    pub body_read_timeout: Option<String>,
}

/// `pins:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPins {
    /// Most object ids remembered.
    pub max_entries: Option<usize>,
    /// How long an id is remembered.
    pub ttl: Option<String>,
}

/// `admin:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Admin listener address.
    pub listen: Option<String>,
    /// Environment variable holding the bearer token for admin write calls.
    pub token_env: Option<String>,
    /// File holding the bearer token for admin write calls.
    pub token_file: Option<String>,
}

/// `providers.NAME:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// Base URL, possibly with a base path.
    pub url: String,
    /// Credential injected by the sidecar.
    pub auth: Option<RawAuth>,
    /// TLS files.
    pub tls: Option<RawTls>,
    /// TCP (and TLS) connect timeout.
    pub connect_timeout: Option<String>,
    /// Timeout of one attempt, until the response head.
    pub timeout: Option<String>,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Option<String>,
    /// Most idle pooled connections kept to this provider.
    pub pool_max_idle: Option<usize>,
    /// How this provider names the idempotency key.
    pub idempotency_header: Option<String>,
    /// Longest key this provider accepts.
    pub idempotency_key_max_len: Option<usize>,
    /// How long this provider keeps a key's answer (the resolver stops before).
    pub idempotency_retention: Option<String>,
    /// Circuit breaker settings.
    pub breaker: Option<RawBreaker>,
    /// Active health checks.
    pub health_check: Option<RawHealthCheck>,
    /// The provider account's own rate limit.
    pub quota: Option<RawQuota>,
    /// Ramp back to full weight after recovery.
    pub slow_start: Option<String>,
    /// Longest throttle window a provider's 429 Retry-After may set.
    pub max_throttle: Option<String>,
}

/// `providers.NAME.breaker:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    /// Failures in a row that open it.
    pub consecutive_failures: Option<u32>,
    /// Failure share over the window that opens it.
    pub failure_rate: Option<f64>,
    /// Sliding window length.
    pub window: Option<String>,
    /// Calls in the window before the rate triggers apply.
    pub min_requests: Option<u32>,
    /// Calls slower than this count as slow.
    pub slow_call: Option<String>,
    /// Slow share over the window that opens it.
    pub slow_call_rate: Option<f64>,
    /// First open period.
    pub open_for: Option<String>,
    /// Longest open period.
    pub max_open_for: Option<String>,
    /// Concurrent probes while HalfOpen.
    pub half_open_probes: Option<u32>,
    /// Relative jitter of the open period.
    pub jitter: Option<f64>,
}

/// `providers.NAME.health_check:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// Path to GET, below the provider URL's base path.
    pub path: Option<String>,
    /// Time between checks.
    pub interval: Option<String>,
    /// Timeout of one check.
    pub timeout: Option<String>,
    /// Failed checks in a row that make it unhealthy.
    pub unhealthy_after: Option<u32>,
    /// Passed checks in a row that make it healthy again.
    pub healthy_after: Option<u32>,
}

/// `providers.NAME.quota:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuota {
    /// Requests per second.
    pub rps: u32,
    /// Burst size.
    pub burst: Option<u32>,
    /// Longest wait for a slot before the attempt is given up.
    pub max_wait: Option<String>,
}

/// `routes[N].retry:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Most attempts of one request, the first included.
    pub attempts: Option<u32>,
    /// Base of the exponential backoff.
    pub backoff: Option<String>,
    /// Cap of the exponential backoff.
    pub max_backoff: Option<String>,
    /// Retries allowed as a share of recent requests.
    pub budget: Option<f64>,
    /// Retries always allowed per second, whatever the share.
    pub min_retries_per_second: Option<u32>,
    /// Longest provider `Retry-After` honoured before a retry.
    pub retry_after_cap: Option<String>,
    /// How long a pinned payment may wait for its provider's breaker.
    pub pinned_wait: Option<String>,
}

/// `routes[N].idempotency:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdempotency {
    /// `generate`, `require` or `off`.
    pub mode: Option<String>,
    /// How long a record is kept.
    pub ttl: Option<String>,
    /// Most records kept.
    pub max_entries: Option<usize>,
    /// Most bytes kept (stored answers included).
    pub max_bytes: Option<String>,
    /// The header the shop sends the key in.
    pub header: Option<String>,
    /// A header that tells shops (tenants) apart, so their keys never collide.
    pub scope_header: Option<String>,
}

/// `routes[N].failover:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFailover {
    /// Move an attempt the provider marked as not executed (429, REFUSED_STREAM, ...) to another target.
    pub on_not_processed: Option<bool>,
}

/// `routes[N].rate_limit:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// Requests per second.
    pub rps: u32,
    /// Burst size.
    pub burst: Option<u32>,
    /// `none`, `client_ip` or `header:NAME`.
    pub by: Option<String>,
    /// Most keys tracked at once.
    pub max_keys: Option<usize>,
}

/// `providers.NAME.auth:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// Header to set (default `Authorization`).
    pub header: Option<String>,
    /// Environment variable holding the header value.
    pub value_env: Option<String>,
    /// File holding the header value.
    pub value_file: Option<String>,
}

/// `providers.NAME.tls:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Extra CA certificates (PEM) trusted besides the webpki roots.
    pub ca_file: Option<String>,
    /// Client certificate chain (PEM) for mTLS.
    pub client_cert_file: Option<String>,
    /// Client private key (PEM) for mTLS.
    pub client_key_file: Option<String>,
    /// Server name to verify instead of the URL's host.
    pub server_name: Option<String>,
}

/// `routes[N]:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Route name, unique.
    pub name: String,
    /// What the route matches; absent, every request (each key of `match` has its own default).
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
    /// Path prefix removed before forwarding.
    pub strip_prefix: Option<String>,
    /// Where the route sends requests.
    pub targets: Vec<RawTarget>,
    /// Overall time for the whole request, all attempts.
    pub timeout: Option<String>,
    /// Largest request body.
    pub max_body: Option<String>,
    /// Retries.
    pub retry: Option<RawRetry>,
    /// Idempotency keys.
    pub idempotency: Option<RawIdempotency>,
    /// Shop-side rate limit.
    pub rate_limit: Option<RawRateLimit>,
    /// How much a priority level's health is scaled before traffic spills to the next one.
    pub overprovisioning: Option<f64>,
    /// Failover policy.
    pub failover: Option<RawFailover>,
    /// Dialect of the proxy's own error answers: `problem` (default), `stripe` or `adyen`.
    pub errors: Option<String>,
}

/// `routes[N].match:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// Path prefix, on segment boundaries.
    pub path_prefix: Option<String>,
    /// Methods (any when absent).
    pub methods: Option<Vec<String>>,
    /// Host the shop addressed (without port).
    pub host: Option<String>,
    /// Headers that must have these exact values.
    #[serde(default, deserialize_with = "unique_keys")]
    pub headers: BTreeMap<String, String>,
}

/// `routes[N].targets[M]:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    /// Provider name.
    pub provider: String,
    /// Lower is preferred; higher priorities are the backup channel.
    pub priority: Option<u32>,
    /// Share within a priority.
    pub weight: Option<u32>,
}

/// `sandbox[N]:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSandbox {
    /// Name, used by the admin API.
    pub name: String,
    /// Address to listen on.
    pub listen: String,
}

/// `webhooks[N]:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    /// Name, unique; used in metrics, logs and audit records.
    pub name: String,
    /// Exact request path the provider posts to.
    pub path: String,
    /// A listener of its own (else the shop-facing listener).
    pub listen: Option<String>,
    /// The shop's URL that verified events are posted to.
    pub forward_to: String,
    /// How the provider signs its events.
    pub verify: RawVerify,
    /// Source addresses (CIDR) allowed to post; any when absent.
    pub allow_from: Option<Vec<String>>,
    /// Event deduplication.
    pub dedupe: Option<RawDedupe>,
    /// A signature the sidecar adds for the shop.
    pub sign_for_shop: Option<RawSignForShop>,
    /// Largest event body.
    pub max_body: Option<String>,
    /// How long the shop may take to answer.
    pub timeout: Option<String>,
    /// Pass the provider's `Authorization` header on to the shop (default true).
    pub forward_authorization: Option<bool>,
}

/// `webhooks[N].verify:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVerify {
    /// `stripe`, `adyen` or `hmac-sha256`.
    pub scheme: String,
    /// Environment variables holding the active secrets (several during a rotation).
    pub secrets_env: Option<Vec<String>>,
    /// Files holding the active secrets.
    pub secrets_file: Option<Vec<String>>,
    /// Oldest signature timestamp accepted (stripe, and hmac-sha256 with a timestamp header).
    pub tolerance: Option<String>,
    /// (hmac-sha256) header carrying the signature.
    pub header: Option<String>,
    /// (hmac-sha256) `hex` or `base64`.
    pub encoding: Option<String>,
    /// (hmac-sha256) text before the signature in the header, e.g. `sha256=`.
    pub prefix: Option<String>,
    /// (hmac-sha256) header carrying a Unix timestamp that is signed with the body.
    pub timestamp_header: Option<String>,
}

/// `webhooks[N].dedupe:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDedupe {
    /// How long a delivered event id is remembered.
    pub ttl: Option<String>,
    /// Most event ids remembered.
    pub max_entries: Option<usize>,
}

/// `webhooks[N].sign_for_shop:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSignForShop {
    /// Header to put the signature in.
    pub header: Option<String>,
    /// Environment variable holding the shop's secret.
    pub secret_env: Option<String>,
    /// File holding the shop's secret.
    pub secret_file: Option<String>,
}

/// `audit:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// Folder of the daily JSON-lines files.
    pub dir: String,
    /// How long files are kept.
    pub retention: Option<String>,
    /// `none` or `redacted`.
    pub bodies: Option<String>,
    /// Most bytes of one body kept.
    pub max_body: Option<String>,
    /// Most records waiting for the writer.
    pub queue: Option<usize>,
    /// Most bytes of all the audit files together (a size: `512MiB`, `10GiB`).
    pub max_bytes: Option<String>,
}

/// A map that refuses a key written twice: serde's maps would silently keep the last one, so a second
/// `psp:` block would quietly replace the first provider.
fn unique_keys<'de, D, V>(deserializer: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Visitor<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<V> {
        type Value = BTreeMap<String, V>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a mapping with unique keys")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                if out.contains_key(&key) {
                    return Err(serde::de::Error::custom(format_args!(
                        "duplicate key \"{key}\": each name may appear once"
                    )));
                }
                let value = map.next_value()?;
                out.insert(key, value);
            }
            Ok(out)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
    }
    deserializer.deserialize_map(Visitor(std::marker::PhantomData))
}

/// Parses YAML text into the raw mirror. The error names the path and line of the problem.
pub fn from_yaml(text: &str) -> Result<RawConfig, serde_yaml::Error> {
    serde_yaml::from_str(text)
}
