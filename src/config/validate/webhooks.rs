//! `webhooks:` and `audit:` — the typed settings of webhook ingress and of the audit trail, and their
//! checks. A child of `validate`, so it shares the validator's helpers and reports problems the same way.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Scheme;
use http::{HeaderName, Uri};

use super::{is_loopback_host, valid_name, SecretRef, SecretUse, Validator};
use crate::config::schema;

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
    /// Whether the provider's `Authorization` header reaches the shop (Adyen's Basic auth for
    /// webhooks is checked by the shop).
    pub forward_authorization: bool,
}

impl Webhook {
    /// `forward_to` safe to print: scheme, host, port and path, never user info or a query (which
    /// may carry a token).
    pub fn forward_to_shown(&self) -> String {
        let u = &self.forward_to;
        let host = u.host().unwrap_or("");
        let port = u.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
        format!(
            "{}://{host}{port}{}",
            u.scheme_str().unwrap_or("http"),
            u.path()
        )
    }
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
}

/// Whether audit records keep bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditBodies {
    /// No bodies.
    None,
    /// Bodies with card data and secrets removed.
    Redacted,
}

impl Validator<'_> {
    /// Reads one secret named at `key_path`, recording where it comes from.
    fn secret_at(&mut self, key_path: String, source: SecretRef) -> Option<String> {
        self.secret_uses.push(SecretUse {
            path: key_path.clone(),
            source: source.clone(),
        });
        match self.secrets.read(&source) {
            Ok(value) => {
                let value = value.trim_end_matches(['\r', '\n']);
                if value.is_empty() {
                    self.problem(key_path, format!("{source} is empty"));
                    return None;
                }
                Some(value.to_owned())
            }
            Err(e) => {
                self.problem(key_path, e);
                None
            }
        }
    }

    pub(super) fn webhooks(
        &mut self,
        raw: Vec<schema::RawWebhook>,
        shop: SocketAddr,
        admin: SocketAddr,
        route_names: &HashSet<String>,
    ) -> Vec<Arc<Webhook>> {
        let mut names = HashSet::new();
        let mut paths: HashMap<(Option<SocketAddr>, String), usize> = HashMap::new();
        let mut out = Vec::new();
        for (i, w) in raw.into_iter().enumerate() {
            let path = format!("webhooks[{i}]");
            if !valid_name(&w.name) {
                self.problem(
                    format!("{path}.name"),
                    "webhook names use letters, digits, '-', '_' and '.' only",
                );
            } else if !names.insert(w.name.clone()) {
                self.problem(
                    format!("{path}.name"),
                    format!("duplicate webhook name \"{}\"", w.name),
                );
            } else if route_names.contains(&w.name) {
                self.problem(
                    format!("{path}.name"),
                    format!(
                        "\"{}\" is also a route name; webhook requests are logged and counted under their webhook's name, so the two must differ",
                        w.name
                    ),
                );
            }
            if let Some(hook) = self.webhook(&path, w, shop, admin) {
                let key = (hook.listen, hook.path.clone());
                if let Some(first) = paths.insert(key, i) {
                    self.problem(
                        format!("{path}.path"),
                        format!(
                            "webhooks[{first}] already serves {} on this listener",
                            hook.path
                        ),
                    );
                }
                out.push(Arc::new(hook));
            }
        }
        out
    }

    fn webhook(
        &mut self,
        path: &str,
        w: schema::RawWebhook,
        shop: SocketAddr,
        admin: SocketAddr,
    ) -> Option<Webhook> {
        if !w.path.starts_with('/') || w.path.contains(['?', '#']) {
            self.problem(
                format!("{path}.path"),
                "must start with '/' and hold no query",
            );
        }
        let listen = w.listen.as_deref().map(|l| {
            let addr = self.socket_addr(&format!("{path}.listen"), Some(l), "");
            if addr.port() != 0 && addr == admin {
                self.problem(
                    format!("{path}.listen"),
                    "must differ from admin.listen: the admin API is never served to providers",
                );
            } else if addr.port() != 0 && addr == shop {
                self.problem(
                    format!("{path}.listen"),
                    "is the shop listener; omit listen to serve this webhook there",
                );
            }
            addr
        });
        let forward_to = self.forward_to(&format!("{path}.forward_to"), &w.forward_to);
        let verify = self.verify(&format!("{path}.verify"), w.verify);
        let allow_from = w
            .allow_from
            .map(|list| self.allow_from(&format!("{path}.allow_from"), list));
        let dedupe = match w.dedupe {
            None => Dedupe {
                ttl: DEFAULT_DEDUPE_TTL,
                max_entries: DEFAULT_DEDUPE_MAX_ENTRIES,
            },
            Some(d) => {
                let ttl = self.duration(
                    &format!("{path}.dedupe.ttl"),
                    d.ttl.as_deref(),
                    DEFAULT_DEDUPE_TTL,
                );
                let max_entries = d.max_entries.unwrap_or(DEFAULT_DEDUPE_MAX_ENTRIES);
                if max_entries == 0 {
                    self.problem(format!("{path}.dedupe.max_entries"), "must be at least 1");
                }
                Dedupe {
                    ttl,
                    max_entries: max_entries.max(1),
                }
            }
        };
        let sign_for_shop = w.sign_for_shop.and_then(|s| {
            let spath = format!("{path}.sign_for_shop");
            let header = self.header_name(
                &format!("{spath}.header"),
                s.header.as_deref().unwrap_or(DEFAULT_SHOP_SIGNATURE_HEADER),
            );
            let secret = self.required_secret(
                &spath,
                "secret",
                s.secret_env.as_deref(),
                s.secret_file.as_deref(),
                "the shop's webhook secret",
            )?;
            Some(SignForShop {
                header: header?,
                key: SigningKey(secret.header_value().as_bytes().to_vec()),
            })
        });
        let max_body = self.size(
            &format!("{path}.max_body"),
            w.max_body.as_deref(),
            DEFAULT_WEBHOOK_MAX_BODY,
            1,
            64 << 20,
        );
        let timeout = self.duration(
            &format!("{path}.timeout"),
            w.timeout.as_deref(),
            DEFAULT_WEBHOOK_TIMEOUT,
        );
        Some(Webhook {
            name: Arc::from(w.name.as_str()),
            path: w.path,
            listen,
            forward_to: forward_to?,
            verify: verify?,
            allow_from,
            dedupe,
            sign_for_shop,
            max_body,
            timeout,
            forward_authorization: w.forward_authorization.unwrap_or(true),
        })
    }

    fn forward_to(&mut self, path: &str, text: &str) -> Option<Uri> {
        let uri: Uri = match text.parse() {
            Ok(u) => u,
            Err(e) => {
                self.problem(path, format!("\"{text}\" is not a URL: {e}"));
                return None;
            }
        };
        let ok_scheme = match uri.scheme() {
            Some(s) if *s == Scheme::HTTPS => true,
            Some(s) if *s == Scheme::HTTP => {
                if !uri.host().is_some_and(is_loopback_host) {
                    self.problem(
                        path,
                        "plain http:// is only allowed to a loopback address; use https://",
                    );
                    return None;
                }
                true
            }
            _ => false,
        };
        if !ok_scheme || uri.host().is_none() {
            self.problem(
                path,
                format!("\"{text}\" must be an http://127.0.0.1:PORT/... or https:// URL"),
            );
            return None;
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            self.problem(path, "credentials in the URL are not allowed");
            return None;
        }
        Some(uri)
    }

    fn verify(&mut self, path: &str, v: schema::RawVerify) -> Option<Verify> {
        let generic_only = [
            ("header", v.header.is_some()),
            ("encoding", v.encoding.is_some()),
            ("prefix", v.prefix.is_some()),
            ("timestamp_header", v.timestamp_header.is_some()),
        ];
        let scheme = match v.scheme.as_str() {
            "stripe" | "adyen" => {
                for (key, set) in generic_only {
                    if set {
                        self.problem(
                            format!("{path}.{key}"),
                            format!("applies to scheme hmac-sha256 only, not {}", v.scheme),
                        );
                    }
                }
                if v.scheme == "stripe" {
                    SignatureScheme::Stripe
                } else {
                    SignatureScheme::Adyen
                }
            }
            "hmac-sha256" => {
                let header = match v.header.as_deref() {
                    Some(h) => self.header_name(&format!("{path}.header"), h),
                    None => {
                        self.problem(
                            format!("{path}.header"),
                            "scheme hmac-sha256 needs the header that carries the signature",
                        );
                        None
                    }
                };
                let encoding = match v.encoding.as_deref() {
                    None | Some("hex") => SignatureEncoding::Hex,
                    Some("base64") => SignatureEncoding::Base64,
                    Some(other) => {
                        self.problem(
                            format!("{path}.encoding"),
                            format!("\"{other}\" is not one of hex, base64"),
                        );
                        SignatureEncoding::Hex
                    }
                };
                let timestamp_header = v
                    .timestamp_header
                    .as_deref()
                    .and_then(|h| self.header_name(&format!("{path}.timestamp_header"), h));
                SignatureScheme::HmacSha256(GenericHmac {
                    header: header?,
                    encoding,
                    prefix: v.prefix.unwrap_or_default(),
                    timestamp_header,
                })
            }
            other => {
                self.problem(
                    format!("{path}.scheme"),
                    format!("\"{other}\" is not one of stripe, adyen, hmac-sha256"),
                );
                return None;
            }
        };
        let signs_time = match &scheme {
            SignatureScheme::Stripe => true,
            SignatureScheme::Adyen => false,
            SignatureScheme::HmacSha256(g) => g.timestamp_header.is_some(),
        };
        if v.tolerance.is_some() && !signs_time {
            self.problem(
                format!("{path}.tolerance"),
                "this scheme signs no timestamp (replays are caught by dedupe); remove tolerance",
            );
        }
        let tolerance = self.duration(
            &format!("{path}.tolerance"),
            v.tolerance.as_deref(),
            DEFAULT_WEBHOOK_TOLERANCE,
        );
        let mut keys = Vec::new();
        let mut sources = Vec::new();
        for (i, name) in v.secrets_env.unwrap_or_default().into_iter().enumerate() {
            sources.push((
                format!("{path}.secrets_env[{i}]"),
                SecretRef::Env(name.clone()),
                name.is_empty(),
            ));
        }
        for (i, file) in v.secrets_file.unwrap_or_default().into_iter().enumerate() {
            sources.push((
                format!("{path}.secrets_file[{i}]"),
                SecretRef::File(self.file(&file)),
                file.is_empty(),
            ));
        }
        if sources.is_empty() {
            self.problem(
                path,
                "set secrets_env or secrets_file (a list: several secrets are accepted during a rotation)",
            );
        }
        for (key_path, source, empty) in sources {
            if empty {
                self.problem(key_path, "the name of the secret's source is empty");
                continue;
            }
            let Some(value) = self.secret_at(key_path.clone(), source.clone()) else {
                continue;
            };
            if scheme == SignatureScheme::Adyen {
                match hex::decode(value.trim()) {
                    Ok(bytes) if !bytes.is_empty() => keys.push(SigningKey(bytes)),
                    _ => self.problem(
                        key_path,
                        format!("{source} is not an Adyen HMAC key (hexadecimal)"),
                    ),
                }
            } else {
                keys.push(SigningKey(value.into_bytes()));
            }
        }
        Some(Verify {
            scheme,
            keys,
            tolerance,
        })
    }

    fn allow_from(&mut self, path: &str, list: Vec<String>) -> Vec<ipnet::IpNet> {
        if list.is_empty() {
            self.problem(
                path,
                "an empty list allows no source; omit allow_from to allow any",
            );
        }
        list.iter()
            .enumerate()
            .filter_map(|(i, text)| {
                let text = text.trim();
                let parsed = text
                    .parse::<ipnet::IpNet>()
                    .ok()
                    .or_else(|| text.parse::<IpAddr>().ok().map(ipnet::IpNet::from));
                if parsed.is_none() {
                    self.problem(
                        format!("{path}[{i}]"),
                        format!("\"{text}\" is not an address or network (e.g. 3.18.12.63/32, 2600:1f18::/32)"),
                    );
                }
                parsed.map(|n| n.trunc())
            })
            .collect()
    }

    pub(super) fn audit(&mut self, raw: schema::RawAudit) -> AuditConfig {
        if raw.dir.trim().is_empty() {
            self.problem("audit.dir", "must name a folder");
        }
        let retention = self.duration(
            "audit.retention",
            raw.retention.as_deref(),
            DEFAULT_AUDIT_RETENTION,
        );
        if retention < Duration::from_secs(24 * 3600) {
            self.problem(
                "audit.retention",
                "must be at least 1d (files hold one UTC day each)",
            );
        }
        let bodies = match raw.bodies.as_deref() {
            None | Some("none") => AuditBodies::None,
            Some("redacted") => AuditBodies::Redacted,
            Some(other) => {
                self.problem(
                    "audit.bodies",
                    format!("\"{other}\" is not one of none, redacted"),
                );
                AuditBodies::None
            }
        };
        let max_body = self.size(
            "audit.max_body",
            raw.max_body.as_deref(),
            DEFAULT_AUDIT_MAX_BODY,
            0,
            1 << 20,
        );
        let queue = raw.queue.unwrap_or(DEFAULT_AUDIT_QUEUE);
        if !(1..=1_000_000).contains(&queue) {
            self.problem("audit.queue", "must be between 1 and 1000000");
        }
        AuditConfig {
            dir: self.file(raw.dir.trim()),
            retention,
            bodies,
            max_body,
            queue: queue.clamp(1, 1_000_000),
        }
    }
}
