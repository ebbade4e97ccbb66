//! `webhooks:` and `audit:` — the typed settings of webhook ingress and of the audit trail.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Uri};

/// Default tolerance of a signature timestamp (Stripe's own default).
pub const DEFAULT_WEBHOOK_TOLERANCE: Duration = Duration::from_secs(300);
/// Default time a delivered event id is remembered: 30 days covers every provider's redelivery horizon.
pub const DEFAULT_DEDUPE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default most event ids remembered per webhook.
pub const DEFAULT_DEDUPE_MAX_ENTRIES: usize = 100_000;
/// Default largest webhook body.
pub const DEFAULT_WEBHOOK_MAX_BODY: u64 = 1 << 20;
/// Default time the shop may take to answer a webhook.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Default header of `sign_for_shop`.
pub const DEFAULT_SHOP_SIGNATURE_HEADER: &str = "x-switchyard-signature";
/// Default audit retention: PCI DSS 10.5.1 asks for 12 months of audit history.
pub const DEFAULT_AUDIT_RETENTION: Duration = Duration::from_secs(365 * 24 * 3600);
/// Default most bytes of one body kept in an audit record.
pub const DEFAULT_AUDIT_MAX_BODY: u64 = 64 << 10;
/// Default most audit records waiting for the writer.
pub const DEFAULT_AUDIT_QUEUE: usize = 10_000;
/// Default most bytes of all the audit files together.
pub const DEFAULT_AUDIT_MAX_BYTES: u64 = 10 << 30;

/// A webhook endpoint: events a provider posts, verified, deduplicated and passed on to the shop.
#[derive(Debug)]
pub struct Webhook {
    /// Config name (metrics, logs, audit records).
    pub name: Arc<str>,
    /// Exact path the provider posts to.
    pub path: String,
    /// Its own listener, or `None` for the shop-facing listener.
    pub listen: Option<SocketAddr>,
    /// Where verified events go.
    pub forward_to: Uri,
    /// Signature verification.
    pub verify: Verify,
    /// Allowed source networks; `None` allows any source (the signature is always checked).
    pub allow_from: Option<Vec<ipnet::IpNet>>,
    /// Deduplication of events.
    pub dedupe: Dedupe,
    /// The signature the sidecar adds for the shop.
    pub sign_for_shop: Option<SignForShop>,
    /// Largest body accepted.
    pub max_body: usize,
    /// How long the shop may take to answer.
    pub timeout: Duration,
}

/// How a webhook's signature is checked.
#[derive(Debug)]
pub struct Verify {
    /// The provider's scheme.
    pub scheme: SignatureScheme,
    /// Every active key (several during a rotation); any one may verify.
    pub keys: Vec<SigningKey>,
    /// Oldest signature timestamp accepted, for schemes that sign one.
    pub tolerance: Duration,
}

/// A provider's signature scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureScheme {
    /// `Stripe-Signature: t=…,v1=…`, HMAC-SHA256 over `"{t}.{body}"`, hex.
    Stripe,
    /// HMAC-SHA256 (hex-decoded key) over each notification item's fields, base64 in
    /// `additionalData.hmacSignature`.
    Adyen,
    /// HMAC-SHA256 over the body (or `"{timestamp}.{body}"`) in a header of choice.
    HmacSha256(GenericHmac),
}

impl SignatureScheme {
    /// The name as written in the config.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Stripe => "stripe",
            Self::Adyen => "adyen",
            Self::HmacSha256(_) => "hmac-sha256",
        }
    }
}

/// The generic HMAC-SHA256 scheme (Checkout.com's `Cko-Signature`, GitHub-style `sha256=` headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenericHmac {
    /// Header carrying the signature.
    pub header: HeaderName,
    /// How the signature is written.
    pub encoding: SignatureEncoding,
    /// Text before the signature, e.g. `sha256=` (may be empty).
    pub prefix: String,
    /// Header with a Unix timestamp; when set, `"{timestamp}.{body}"` is signed and the timestamp must
    /// be within the tolerance.
    pub timestamp_header: Option<HeaderName>,
}

/// How a signature is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureEncoding {
    /// Hexadecimal, either case.
    Hex,
    /// Standard base64 with padding.
    Base64,
}

/// An HMAC key. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl SigningKey {
    /// A key of these bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// Event deduplication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dedupe {
    /// How long a delivered event id is remembered.
    pub ttl: Duration,
    /// Most ids remembered (the oldest go first).
    pub max_entries: usize,
}

/// The signature the sidecar adds to events it passes on, so the shop can tell they came through it:
/// `t={unix seconds},v1={hex HMAC-SHA256 over "{t}.{body}"}` (Stripe's format).
#[derive(Debug)]
pub struct SignForShop {
    /// Header name.
    pub header: HeaderName,
    /// The shop's key.
    pub key: SigningKey,
}

/// The audit trail's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Folder of the daily files (resolved against the config file's folder).
    pub dir: PathBuf,
    /// Files whose day ended longer ago than this are deleted.
    pub retention: Duration,
    /// Whether bodies are kept.
    pub bodies: AuditBodies,
    /// Most bytes of one body kept (the rest is cut and marked).
    pub max_body: usize,
    /// Most records waiting for the writer; more are dropped and counted.
    pub queue: usize,
    /// Most bytes of the audit files together; past it records are dropped and counted.
    pub max_bytes: u64,
}

/// Whether audit records keep bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditBodies {
    /// No bodies.
    None,
    /// Bodies with card data and secrets removed.
    Redacted,
}
