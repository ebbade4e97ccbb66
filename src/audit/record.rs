//! The audit record types, and how each becomes one JSON line with card data and secrets removed.
//!
//! Callers fill records with what they saw, as is; the writer task redacts when it writes (so redaction
//! never runs on the request path): paths, keys and ids lose card numbers, bodies are dropped
//! (`bodies: none`) or redacted (`bodies: redacted`), and no record type has a field for headers, so
//! `Authorization`, API keys, cookies and signatures can never reach a file.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use serde_json::{json, Map, Value};

use super::clock::rfc3339_millis;
use crate::config::AuditBodies;
use crate::redact::{mask_pans, redact_body, redact_path};

/// One audit record.
#[derive(Debug, Clone)]
pub enum Record {
    /// A request from the shop and the answer it got.
    ShopRequest(ShopRequestRecord),
    /// One attempt at a provider.
    Attempt(AttemptRecord),
    /// A webhook a provider posted.
    Webhook(WebhookRecord),
    /// Refused webhooks over the per-second limit, counted instead of recorded one by one.
    Suppressed(SuppressedRecord),
}

impl From<ShopRequestRecord> for Record {
    fn from(r: ShopRequestRecord) -> Self {
        Self::ShopRequest(r)
    }
}

impl From<AttemptRecord> for Record {
    fn from(r: AttemptRecord) -> Self {
        Self::Attempt(r)
    }
}

impl From<SuppressedRecord> for Record {
    fn from(r: SuppressedRecord) -> Self {
        Self::Suppressed(r)
    }
}

impl From<WebhookRecord> for Record {
    fn from(r: WebhookRecord) -> Self {
        Self::Webhook(r)
    }
}

/// A request or response body as seen, with its content type. The writer cuts it to `audit.max_body`
/// and redacts it; with `bodies: none` it is never written.
#[derive(Debug, Clone, Default)]
pub struct RecordedBody {
    /// The `Content-Type` it was sent with.
    pub content_type: Option<String>,
    /// The bytes (all of them, or the first ones when `truncated`).
    pub bytes: Bytes,
    /// Whether `bytes` is only the start of the body.
    pub truncated: bool,
}

impl RecordedBody {
    /// A whole body with the content type from `headers`.
    pub fn new(headers: &HeaderMap, bytes: Bytes) -> Self {
        Self {
            content_type: content_type(headers),
            bytes,
            truncated: false,
        }
    }
}

/// The `Content-Type` of `headers`, as text.
pub fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The provider's own id of the request, from the first of these response headers that is present:
/// `Request-Id` (Stripe), `Cko-Request-Id` (Checkout.com), `PayPal-Debug-Id` (PayPal), `pspReference`
/// (Adyen).
pub fn provider_request_id(headers: &HeaderMap) -> Option<String> {
    [
        "request-id",
        "cko-request-id",
        "paypal-debug-id",
        "pspreference",
    ]
    .iter()
    .find_map(|name| headers.get(*name))
    .and_then(|v: &HeaderValue| v.to_str().ok())
    .map(str::to_owned)
}

/// A request from the shop and the answer it got: written by the audit layer for every shop request.
#[derive(Debug, Clone)]
pub struct ShopRequestRecord {
    /// When the request arrived.
    pub timestamp: SystemTime,
    /// The request id.
    pub request_id: String,
    /// The matched route, if any.
    pub route: Option<Arc<str>>,
    /// The provider that answered (or was tried last), if any.
    pub provider: Option<Arc<str>>,
    /// Method.
    pub method: Method,
    /// Path and query as the shop sent them.
    pub path: String,
    /// Status of the answer.
    pub status: u16,
    /// The proxy's error kind when it answered itself.
    pub error: Option<&'static str>,
    /// Time to the response head.
    pub latency: Duration,
    /// The idempotency key (the shop's or the one the proxy made).
    pub idempotency_key: Option<String>,
    /// The provider's id of the request.
    pub provider_request_id: Option<String>,
    /// Whether the answer was a replay of a stored one (`Idempotent-Replayed: true`).
    pub replayed: bool,
    /// The shop's request body.
    pub request_body: Option<RecordedBody>,
    /// The body of the answer.
    pub response_body: Option<RecordedBody>,
}

/// Why an attempt went to its provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptReason {
    /// The route's first choice.
    Primary,
    /// Moved to another provider after the previous one did not take the request.
    Failover,
    /// The same provider again.
    Retry,
    /// The operation is pinned to this provider (an earlier attempt may have reached it).
    Pinned,
}

impl AttemptReason {
    /// Its name in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Failover => "failover",
            Self::Retry => "retry",
            Self::Pinned => "pinned",
        }
    }
}

/// The outcome class of an attempt (`PAYMENT_RULES.md` §1): the classifier's own type.
pub use crate::outcome::OutcomeClass as AttemptOutcome;

/// One attempt at a provider: what was sent and what came back.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// When the attempt started.
    pub timestamp: SystemTime,
    /// The shop request's id.
    pub request_id: String,
    /// Route name.
    pub route: Arc<str>,
    /// Provider name.
    pub provider: Arc<str>,
    /// 1 for the first attempt of the shop's request, then 2, 3, ...
    pub attempt: u32,
    /// Why this provider.
    pub reason: AttemptReason,
    /// Method sent.
    pub method: Method,
    /// Path and query sent to the provider.
    pub path: String,
    /// The provider's status, when it answered.
    pub status: Option<u16>,
    /// The outcome class.
    pub outcome: AttemptOutcome,
    /// Time to the response head (or to the failure).
    pub latency: Duration,
    /// The idempotency key sent to this provider.
    pub idempotency_key: Option<String>,
    /// The provider's id of the request (see [`provider_request_id`]).
    pub provider_request_id: Option<String>,
    /// Whether the provider replayed an earlier answer.
    pub replayed: bool,
    /// The body sent.
    pub request_body: Option<RecordedBody>,
    /// The body received.
    pub response_body: Option<RecordedBody>,
}

/// What an attempt's record takes from the provider request before it is sent (the request itself
/// moves into the send).
#[derive(Debug)]
pub struct AttemptStart {
    timestamp: SystemTime,
    path: String,
    idempotency_key: Option<String>,
}

/// What an attempt's record takes from its end.
#[derive(Debug)]
pub struct AttemptEnd<'a> {
    /// The shop request's id.
    pub request_id: &'a str,
    /// Route name.
    pub route: &'a Arc<str>,
    /// Provider name.
    pub provider: &'a Arc<str>,
    /// 1 for the first attempt of the shop's request, then 2, 3, ...
    pub attempt: u32,
    /// Why this provider.
    pub reason: AttemptReason,
    /// Method sent.
    pub method: &'a Method,
    /// The provider's status and headers, when it answered.
    pub answer: Option<(http::StatusCode, &'a HeaderMap)>,
    /// The outcome class.
    pub outcome: AttemptOutcome,
    /// Time to the response head (or to the failure).
    pub latency: Duration,
    /// The shop's request body, when bodies are kept.
    pub request_body: Option<RecordedBody>,
}

impl AttemptStart {
    /// Notes the attempt starting at `timestamp` with `request`; `key_header` is the provider's
    /// idempotency header when the operation is keyed.
    pub fn new(
        timestamp: SystemTime,
        request: &http::Request<Bytes>,
        key_header: Option<&http::HeaderName>,
    ) -> Self {
        Self {
            timestamp,
            path: request
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            idempotency_key: key_header
                .and_then(|h| request.headers().get(h))
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        }
    }

    /// The attempt's record, once it ended.
    pub fn finish(self, end: AttemptEnd<'_>) -> AttemptRecord {
        let headers = end.answer.map(|(_, h)| h);
        AttemptRecord {
            timestamp: self.timestamp,
            request_id: end.request_id.to_owned(),
            route: Arc::clone(end.route),
            provider: Arc::clone(end.provider),
            attempt: end.attempt,
            reason: end.reason,
            method: end.method.clone(),
            path: self.path,
            status: end.answer.map(|(s, _)| s.as_u16()),
            outcome: end.outcome,
            latency: end.latency,
            idempotency_key: self.idempotency_key,
            provider_request_id: headers.and_then(provider_request_id),
            replayed: headers.is_some_and(|h| {
                h.get("idempotent-replayed")
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
            }),
            request_body: end.request_body,
            // The answer's body is in the shop request's record, which sees it stream by.
            response_body: None,
        }
    }
}

/// A webhook a provider posted, and what became of it.
#[derive(Debug, Clone)]
pub struct WebhookRecord {
    /// When it arrived.
    pub timestamp: SystemTime,
    /// The request id.
    pub request_id: String,
    /// Webhook name.
    pub webhook: Arc<str>,
    /// Signature scheme.
    pub scheme: &'static str,
    /// Result, as counted in `switchyard_webhooks_total`.
    pub result: &'static str,
    /// Whether the signature verified.
    pub verified: bool,
    /// The event id used for deduplication.
    pub event_id: Option<String>,
    /// What deduplication decided: `new`, `duplicate`, `waited` (a concurrent copy was waited for).
    pub dedupe: Option<&'static str>,
    /// The shop's status, when it was asked.
    pub shop_status: Option<u16>,
    /// Time until the answer to the provider.
    pub latency: Duration,
    /// The event body: only for a verified webhook (with `bodies: redacted`).
    pub body: Option<RecordedBody>,
    /// What a refused webhook's body was, without the body: its SHA-256 and size.
    pub body_digest: Option<BodyDigest>,
}

/// The SHA-256 and size of a body that is not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyDigest {
    /// Lowercase hex SHA-256 of the body.
    pub sha256: String,
    /// Its length in bytes.
    pub size: u64,
}

impl BodyDigest {
    /// The digest of `body`.
    pub fn of(body: &[u8]) -> Self {
        use sha2::Digest;
        Self {
            sha256: hex::encode(sha2::Sha256::digest(body)),
            size: body.len() as u64,
        }
    }
}

/// Refused webhooks of one webhook that were over the per-second record limit: written once their second
/// is over (see [`super::limit`]).
#[derive(Debug, Clone)]
pub struct SuppressedRecord {
    /// When the summary was made.
    pub timestamp: SystemTime,
    /// Webhook name.
    pub webhook: Arc<str>,
    /// How many refused requests had no record of their own.
    pub suppressed: u64,
    /// When the first of them arrived.
    pub first: SystemTime,
    /// When the last of them arrived.
    pub last: SystemTime,
}

/// What the writer applies to every record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Redaction {
    pub(crate) bodies: AuditBodies,
    pub(crate) max_body: usize,
}

fn text(s: &str) -> Value {
    Value::String(mask_pans(s).into_owned())
}

fn opt_text(s: Option<&str>) -> Value {
    s.map_or(Value::Null, text)
}

/// A path with its query: card numbers masked in the path and the query, as written and as decoded;
/// sensitive fields masked in the query.
fn path_value(path: &str) -> Value {
    Value::String(redact_path(path))
}

fn millis(d: Duration) -> Value {
    json!((d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0)
}

impl Redaction {
    fn body(&self, out: &mut Map<String, Value>, prefix: &str, body: Option<&RecordedBody>) {
        let (AuditBodies::Redacted, Some(b)) = (self.bodies, body) else {
            return;
        };
        let cut = b.bytes.len() > self.max_body;
        let bytes = &b.bytes[..b.bytes.len().min(self.max_body)];
        let truncated = cut || b.truncated;
        let redacted = redact_body(b.content_type.as_deref(), bytes, truncated);
        out.insert(
            format!("{prefix}_content_type"),
            opt_text(b.content_type.as_deref()),
        );
        out.insert(
            format!("{prefix}_body_format"),
            json!(redacted.format.as_str()),
        );
        out.insert(format!("{prefix}_body"), Value::String(redacted.text));
        if truncated {
            out.insert(format!("{prefix}_body_truncated"), json!(true));
        }
    }

    /// The record as one JSON object (without the trailing newline).
    pub(crate) fn line(&self, record: &Record) -> String {
        let mut m = Map::new();
        match record {
            Record::ShopRequest(r) => {
                m.insert("type".into(), json!("shop_request"));
                m.insert("ts".into(), json!(rfc3339_millis(r.timestamp)));
                m.insert("request_id".into(), text(&r.request_id));
                m.insert("route".into(), opt_text(r.route.as_deref()));
                m.insert("provider".into(), opt_text(r.provider.as_deref()));
                m.insert("method".into(), json!(r.method.as_str()));
                m.insert("path".into(), path_value(&r.path));
                m.insert("status".into(), json!(r.status));
                m.insert("error".into(), json!(r.error));
                m.insert("latency_ms".into(), millis(r.latency));
                m.insert(
                    "idempotency_key".into(),
                    opt_text(r.idempotency_key.as_deref()),
                );
                m.insert(
                    "provider_request_id".into(),
                    opt_text(r.provider_request_id.as_deref()),
                );
                m.insert("replayed".into(), json!(r.replayed));
                self.body(&mut m, "request", r.request_body.as_ref());
                self.body(&mut m, "response", r.response_body.as_ref());
            }
            Record::Attempt(r) => {
                m.insert("type".into(), json!("attempt"));
                m.insert("ts".into(), json!(rfc3339_millis(r.timestamp)));
                m.insert("request_id".into(), text(&r.request_id));
                m.insert("route".into(), text(&r.route));
                m.insert("provider".into(), text(&r.provider));
                m.insert("attempt".into(), json!(r.attempt));
                m.insert("reason".into(), json!(r.reason.as_str()));
                m.insert("method".into(), json!(r.method.as_str()));
                m.insert("path".into(), path_value(&r.path));
                m.insert("status".into(), json!(r.status));
                m.insert("outcome".into(), json!(r.outcome.as_str()));
                m.insert("latency_ms".into(), millis(r.latency));
                m.insert(
                    "idempotency_key".into(),
                    opt_text(r.idempotency_key.as_deref()),
                );
                m.insert(
                    "provider_request_id".into(),
                    opt_text(r.provider_request_id.as_deref()),
                );
                m.insert("replayed".into(), json!(r.replayed));
                self.body(&mut m, "request", r.request_body.as_ref());
                self.body(&mut m, "response", r.response_body.as_ref());
            }
            Record::Webhook(r) => {
                m.insert("type".into(), json!("webhook"));
                m.insert("ts".into(), json!(rfc3339_millis(r.timestamp)));
                m.insert("request_id".into(), text(&r.request_id));
                m.insert("webhook".into(), text(&r.webhook));
                m.insert("scheme".into(), json!(r.scheme));
                m.insert("result".into(), json!(r.result));
                m.insert("verified".into(), json!(r.verified));
                m.insert("event_id".into(), opt_text(r.event_id.as_deref()));
                m.insert("dedupe".into(), json!(r.dedupe));
                m.insert("shop_status".into(), json!(r.shop_status));
                m.insert("latency_ms".into(), millis(r.latency));
                if r.verified {
                    self.body(&mut m, "request", r.body.as_ref());
                }
                if let Some(d) = &r.body_digest {
                    m.insert("request_body_sha256".into(), json!(d.sha256));
                    m.insert("request_body_bytes".into(), json!(d.size));
                }
            }
            Record::Suppressed(r) => {
                m.insert("type".into(), json!("webhook_refused_suppressed"));
                m.insert("ts".into(), json!(rfc3339_millis(r.timestamp)));
                m.insert("webhook".into(), text(&r.webhook));
                m.insert("suppressed".into(), json!(r.suppressed));
                m.insert("first_ts".into(), json!(rfc3339_millis(r.first)));
                m.insert("last_ts".into(), json!(rfc3339_millis(r.last)));
                m.insert(
                    "message".into(),
                    json!(format!("{} refused webhooks suppressed", r.suppressed)),
                );
            }
        }
        Value::Object(m).to_string()
    }

    /// The UTC timestamp of a record.
    pub(crate) fn timestamp(record: &Record) -> SystemTime {
        match record {
            Record::ShopRequest(r) => r.timestamp,
            Record::Attempt(r) => r.timestamp,
            Record::Webhook(r) => r.timestamp,
            Record::Suppressed(r) => r.timestamp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn attempt(body: &'static [u8], ct: &str) -> AttemptRecord {
        AttemptRecord {
            timestamp: UNIX_EPOCH + Duration::from_millis(1_704_164_645_678),
            request_id: "req-1".into(),
            route: Arc::from("payments"),
            provider: Arc::from("psp"),
            attempt: 2,
            reason: AttemptReason::Failover,
            method: Method::POST,
            path: "/v1/cards/4242424242424242?card[cvc]=123&expand=x".into(),
            status: Some(200),
            outcome: AttemptOutcome::Processed,
            latency: Duration::from_micros(12_345),
            idempotency_key: Some("order-1".into()),
            provider_request_id: Some("req_abc".into()),
            replayed: false,
            request_body: Some(RecordedBody {
                content_type: Some(ct.into()),
                bytes: Bytes::from_static(body),
                truncated: false,
            }),
            response_body: None,
        }
    }

    #[test]
    fn an_attempt_is_one_json_line_with_every_field() {
        let r = Redaction {
            bodies: AuditBodies::Redacted,
            max_body: 1024,
        };
        let line = r.line(
            &attempt(
                b"amount=1&card[number]=4242424242424242",
                "application/x-www-form-urlencoded",
            )
            .into(),
        );
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["type"], "attempt");
        assert_eq!(v["ts"], "2024-01-02T03:04:05.678Z");
        assert_eq!(v["attempt"], 2);
        assert_eq!(v["reason"], "failover");
        assert_eq!(v["outcome"], "processed");
        assert_eq!(v["status"], 200);
        assert_eq!(v["latency_ms"], 12.345);
        assert_eq!(v["idempotency_key"], "order-1");
        assert_eq!(v["provider_request_id"], "req_abc");
        assert_eq!(
            v["path"],
            "/v1/cards/424242******4242?card[cvc]=%5Bredacted%5D&expand=x"
        );
        assert_eq!(v["request_body"], "amount=1&card[number]=424242******4242");
        assert_eq!(v["request_body_format"], "form");
        assert!(v.get("response_body").is_none());
    }

    #[test]
    fn bodies_none_keeps_no_body_and_long_bodies_are_cut() {
        let none = Redaction {
            bodies: AuditBodies::None,
            max_body: 1024,
        };
        let line = none.line(&attempt(b"{\"a\":1}", "application/json").into());
        assert!(!line.contains("request_body"), "{line}");

        let short = Redaction {
            bodies: AuditBodies::Redacted,
            max_body: 20,
        };
        let line = short.line(&attempt(b"note=card 4242424242424242 end", "text/plain").into());
        let v: Value = serde_json::from_str(&line).unwrap();
        // Cut inside the card number: the cut digits are dropped, not kept.
        assert_eq!(v["request_body"], "note=card");
        assert_eq!(v["request_body_truncated"], true);
    }

    #[test]
    fn provider_request_ids_come_from_the_providers_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(provider_request_id(&h), None);
        h.insert("cko-request-id", HeaderValue::from_static("cko-1"));
        assert_eq!(provider_request_id(&h).as_deref(), Some("cko-1"));
        h.insert("request-id", HeaderValue::from_static("req_1"));
        assert_eq!(provider_request_id(&h).as_deref(), Some("req_1"));
    }

    #[test]
    fn a_refused_webhook_keeps_the_digest_and_size_of_its_body_never_the_body() {
        let r = Redaction {
            bodies: AuditBodies::Redacted,
            max_body: 1024,
        };
        let body = br#"{"note":"card 4242 4242 4242 4242"}"#;
        let record = WebhookRecord {
            timestamp: UNIX_EPOCH,
            request_id: "req-1".into(),
            webhook: Arc::from("hook"),
            scheme: "stripe",
            result: "bad_signature",
            verified: false,
            event_id: None,
            dedupe: None,
            shop_status: None,
            latency: Duration::ZERO,
            body: Some(RecordedBody {
                content_type: Some("application/json".into()),
                bytes: Bytes::from_static(body),
                truncated: false,
            }),
            body_digest: Some(BodyDigest::of(body)),
        };
        let v: Value = serde_json::from_str(&r.line(&record.into())).unwrap();
        assert!(v.get("request_body").is_none(), "{v}");
        assert_eq!(v["request_body_bytes"], body.len());
        assert_eq!(
            v["request_body_sha256"],
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body))
        );
    }

    #[test]
    fn a_path_with_a_percent_encoded_card_number_is_kept_masked() {
        let r = Redaction {
            bodies: AuditBodies::None,
            max_body: 0,
        };
        let mut a = attempt(b"", "text/plain");
        a.path = "/v1/payment_methods/3782%20822463%2010005".into();
        let v: Value = serde_json::from_str(&r.line(&a.into())).unwrap();
        assert_eq!(v["path"], "/v1/payment_methods/3782%2082****%20*0005");
    }
}
