//! Webhook ingress (provider → sidecar → shop): the provider's notifications are verified, deduplicated
//! and passed on to the shop, so a forged or repeated "payment succeeded" never reaches it
//! (`PAYMENT_RULES.md` §5).
//!
//! For each request to a webhook's path, in this order:
//! 1. only `POST` (405 otherwise); the source address must be in `allow_from` when it is set (403) —
//!    defence in depth, never the only check;
//! 2. the body is read up to `max_body` (413);
//! 3. the signature is verified on the raw bytes with every active key, in constant time (401
//!    `bad_signature` or `stale`; 400 `malformed` when the body is not what the scheme needs);
//! 4. deduplication by event id ([`dedupe`]; an Adyen batch item by item, and only its new items are
//!    forwarded): a copy of an event the shop already accepted is answered
//!    200 without forwarding; a copy that arrives while another is being delivered waits for it;
//! 5. the event goes to the shop (`forward_to`), with `sign_for_shop`'s signature when configured. Only
//!    a 2xx from the shop marks it delivered; otherwise the provider gets the shop's status (or a 502/504
//!    when the shop is unreachable) and redelivers later. The delivery runs on its own task, so a provider
//!    that hangs up does not cut a delivery short.
//!
//! Every request is counted in `switchyard_webhooks_total{webhook,result}` and written to the audit
//! trail. Dedupe state is in memory, keyed by webhook name, and survives config reloads (not restarts).

pub mod dedupe;
mod refusals;
mod resolve;
pub mod verify;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::audit::{Audit, BodyDigest, RecordedBody, WebhookRecord};
use crate::body::{full, BoxError, ProxyBody};
use crate::budget::{read_body, ReadError};
use crate::config::{SignatureScheme, Webhook};
use crate::metrics::Metrics;
use crate::redact::mask_pans;
use crate::upstream::headers::remove_hop_by_hop;
use dedupe::{Begin, WebhookStore};
use verify::Rejection;

/// Header naming the webhook on events passed to the shop.
pub const X_SWITCHYARD_WEBHOOK: HeaderName = HeaderName::from_static("x-switchyard-webhook");
/// Header naming the result on answers the sidecar makes itself.
const X_SWITCHYARD_ERROR: HeaderName = HeaderName::from_static("x-switchyard-error");
/// Most bytes of the shop's answer passed back to the provider.
const MAX_SHOP_ANSWER: usize = 64 << 10;

/// What became of a webhook request: the `result` label of `switchyard_webhooks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookResult {
    /// Verified, new, and accepted by the shop (2xx).
    Forwarded,
    /// Verified, and already accepted by the shop before: answered 200, not forwarded.
    Duplicate,
    /// No signature, or none that verifies.
    BadSignature,
    /// The signature's timestamp is outside the tolerance.
    Stale,
    /// The source address is not in `allow_from`.
    ForbiddenSource,
    /// The body is not what the scheme needs, or could not be read.
    Malformed,
    /// The body is over `max_body`.
    TooLarge,
    /// Not a POST.
    MethodNotAllowed,
    /// Another copy is still being delivered; the provider retries later.
    InFlight,
    /// The shop did not accept it (non-2xx, unreachable, timeout); the provider redelivers.
    ShopError,
    /// The dedupe state could not be read; nothing was forwarded, the provider redelivers.
    StateUnavailable,
    /// The body did not arrive within the listener's `body_read_timeout`.
    BodyTimeout,
    /// The process-wide buffer budget had no room for the body.
    Overloaded,
    /// The source got too many refusals this second: turned away before its body was read.
    Throttled,
}

impl WebhookResult {
    /// Whether the event was refused as anyone's traffic (it failed verification or was not a
    /// readable event): counted against its source.
    fn is_refusal(self) -> bool {
        matches!(
            self,
            Self::BadSignature | Self::Stale | Self::Malformed | Self::TooLarge | Self::BodyTimeout
        )
    }

    /// Every result, for zeroed series.
    pub const ALL: [WebhookResult; 14] = [
        Self::Forwarded,
        Self::Duplicate,
        Self::BadSignature,
        Self::Stale,
        Self::ForbiddenSource,
        Self::Malformed,
        Self::TooLarge,
        Self::MethodNotAllowed,
        Self::InFlight,
        Self::ShopError,
        Self::StateUnavailable,
        Self::BodyTimeout,
        Self::Overloaded,
        Self::Throttled,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::Duplicate => "duplicate",
            Self::BadSignature => "bad_signature",
            Self::Stale => "stale",
            Self::ForbiddenSource => "forbidden_source",
            Self::Malformed => "malformed",
            Self::TooLarge => "too_large",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::InFlight => "in_flight",
            Self::ShopError => "shop_error",
            Self::StateUnavailable => "state_unavailable",
            Self::BodyTimeout => "body_timeout",
            Self::Overloaded => "overloaded",
            Self::Throttled => "throttled",
        }
    }

    fn status_and_title(self) -> (StatusCode, &'static str) {
        match self {
            Self::Forwarded | Self::Duplicate => (StatusCode::OK, "Accepted"),
            Self::BadSignature => (StatusCode::UNAUTHORIZED, "Webhook signature not valid"),
            Self::Stale => (
                StatusCode::UNAUTHORIZED,
                "Webhook signature timestamp outside the tolerance",
            ),
            Self::ForbiddenSource => (StatusCode::FORBIDDEN, "Source address not allowed"),
            Self::Malformed => (StatusCode::BAD_REQUEST, "Webhook body not readable"),
            Self::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "Webhook body too large"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "Only POST is accepted"),
            Self::InFlight => (
                StatusCode::SERVICE_UNAVAILABLE,
                "The same event is being delivered",
            ),
            Self::ShopError => (StatusCode::BAD_GATEWAY, "The shop did not accept the event"),
            Self::StateUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "The event's delivery state is unavailable",
            ),
            Self::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "Webhook body too slow"),
            Self::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "Proxy overloaded"),
            Self::Throttled => (
                StatusCode::TOO_MANY_REQUESTS,
                "Too many refused events from this address",
            ),
        }
    }
}

type ShopClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The webhook runtime: dedupe state per webhook name, the client to the shop, metrics and audit.
pub struct Webhooks {
    stores: Mutex<HashMap<Arc<str>, Arc<WebhookStore>>>,
    state: Arc<crate::state::Stores>,
    /// Refusals per source address, across this process's webhooks.
    refusals: refusals::Refusals,
    client: ShopClient,
    metrics: Metrics,
    audit: Audit,
    /// Told of verified events that name an unknown operation.
    resolver: Option<Arc<crate::resolver::Resolver>>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks").finish_non_exhaustive()
    }
}

/// Where a webhook request came from and what it is known by.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The connection's peer address.
    pub peer: Option<IpAddr>,
    /// The request id.
    pub request_id: String,
    /// The listener that read the request: its body deadline and the buffer budget.
    pub listener: Option<crate::budget::ListenerCtx>,
}

impl Webhooks {
    /// A runtime counting into `metrics`, recording into `audit`, keeping event ids in `state`.
    pub fn new(
        metrics: Metrics,
        audit: Audit,
        state: Arc<crate::state::Stores>,
        resolver: Option<Arc<crate::resolver::Resolver>>,
    ) -> Self {
        Self {
            stores: Mutex::new(HashMap::new()),
            state,
            refusals: refusals::Refusals::default(),
            client: shop_client(),
            metrics,
            audit,
            resolver,
        }
    }

    /// The dedupe store of webhook `name` (created on first use, kept across reloads); a delivery
    /// holds its event while it may take `lease` (the shop's timeout, and a margin).
    pub fn store(&self, name: &Arc<str>, lease: std::time::Duration) -> Arc<WebhookStore> {
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            stores
                .entry(Arc::clone(name))
                .or_insert_with(|| Arc::new(self.state.events(name, lease))),
        )
    }

    /// Handles one request to `hook`'s path.
    pub async fn handle<B>(
        self: Arc<Self>,
        hook: Arc<Webhook>,
        req: Request<B>,
        origin: Origin,
    ) -> Response<ProxyBody>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        let mut record = WebhookRecord {
            timestamp: self.audit.now(),
            request_id: origin.request_id.clone(),
            webhook: Arc::clone(&hook.name),
            scheme: hook.verify.scheme.as_str(),
            result: "",
            verified: false,
            event_id: None,
            dedupe: None,
            shop_status: None,
            latency: Duration::ZERO,
            body: None,
            body_digest: None,
        };
        let (resp, result) = self.run(&hook, req, &origin, &mut record).await;
        if let (Some(peer), true) = (origin.peer, result.is_refusal()) {
            self.refusals
                .count(peer.to_canonical(), std::time::Instant::now());
        }
        record.result = result.as_str();
        record.latency = started.elapsed();
        self.metrics
            .webhooks_total
            .with_label_values(&[&*hook.name, result.as_str()])
            .inc();
        tracing::info!(
            target: "switchyard::webhook",
            request_id = %mask_pans(&origin.request_id),
            webhook = %hook.name,
            result = result.as_str(),
            event_id = %mask_pans(record.event_id.as_deref().unwrap_or("")),
            status = resp.status().as_u16(),
            "webhook"
        );
        self.audit.record(record);
        resp
    }

    async fn run<B>(
        &self,
        hook: &Arc<Webhook>,
        req: Request<B>,
        origin: &Origin,
        record: &mut WebhookRecord,
    ) -> (Response<ProxyBody>, WebhookResult)
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let reject = |result: WebhookResult, detail: &str| (problem(result, detail), result);
        if req.method() != Method::POST {
            let (mut resp, r) = reject(WebhookResult::MethodNotAllowed, "send events with POST");
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return (resp, r);
        }
        if let Some(nets) = &hook.allow_from {
            let allowed = origin
                .peer
                .map(|ip| ip.to_canonical())
                .is_some_and(|ip| nets.iter().any(|n| n.contains(&ip)));
            if !allowed {
                return reject(
                    WebhookResult::ForbiddenSource,
                    "this address may not post to this webhook",
                );
            }
        }
        // Before the body is read: a source that keeps failing verification, and an event whose
        // headers already show it cannot verify, are turned away unread (and the connection closed,
        // so the unread body is never drained).
        let unread = |result: WebhookResult, detail: &str| {
            let (mut resp, r) = reject(result, detail);
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            (resp, r)
        };
        if origin.peer.is_some_and(|ip| {
            self.refusals
                .over(ip.to_canonical(), std::time::Instant::now())
        }) {
            let (mut resp, r) = unread(
                WebhookResult::Throttled,
                "too many refused events; retry later",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return (resp, r);
        }
        if let Err(rejection) = verify::precheck(&hook.verify, req.headers(), SystemTime::now()) {
            return match rejection {
                Rejection::BadSignature(why) => unread(WebhookResult::BadSignature, why),
                Rejection::Stale => unread(
                    WebhookResult::Stale,
                    "the signature's timestamp is outside the tolerance",
                ),
                Rejection::Malformed(why) => unread(WebhookResult::Malformed, why),
            };
        }
        let (parts, body) = req.into_parts();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let listener = origin.listener.as_ref();
        // `_reserved` holds the body's share of the buffer budget until the event is dealt with.
        let (body, _reserved) = match read_body(body, hook.max_body, declared, listener).await {
            Ok(read) => read,
            Err(ReadError::TooLarge { .. }) => {
                return reject(
                    WebhookResult::TooLarge,
                    "the body is over the webhook's max_body",
                )
            }
            Err(ReadError::Timeout { .. }) => {
                let (mut resp, r) = reject(
                    WebhookResult::BodyTimeout,
                    "the body did not arrive within the listener's body_read_timeout",
                );
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return (resp, r);
            }
            Err(ReadError::Overloaded(_)) => {
                let (mut resp, r) = reject(WebhookResult::Overloaded, "retry shortly");
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return (resp, r);
            }
            Err(ReadError::Failed(_)) => {
                return reject(WebhookResult::Malformed, "the body could not be read")
            }
        };
        let verified = match verify::verify(&hook.verify, &parts.headers, &body, SystemTime::now())
        {
            Ok(v) => v,
            // A refused webhook is anyone's traffic: the audit keeps what it was, never what it said.
            Err(rejection) => {
                record.body_digest = Some(BodyDigest::of(&body));
                return match rejection {
                    Rejection::BadSignature(why) => reject(WebhookResult::BadSignature, why),
                    Rejection::Stale => reject(
                        WebhookResult::Stale,
                        "the signature's timestamp is outside the tolerance",
                    ),
                    Rejection::Malformed(why) => reject(WebhookResult::Malformed, why),
                };
            }
        };
        if self.audit.keeps_bodies() {
            record.body = Some(RecordedBody::new(&parts.headers, body.clone()));
        }
        record.verified = true;
        record.event_id = Some(verified.event_id.clone());
        if let Some(resolver) = &self.resolver {
            // An event that names the key (or reference) of an operation whose outcome is unknown
            // has it resolved now: the kept request is sent again and the provider answers it from
            // its store. The event's own word is never taken for the answer.
            let keys = resolve::event_keys(&hook.verify.scheme, &body);
            if !keys.is_empty() {
                let resolver = Arc::clone(resolver);
                tokio::spawn(async move {
                    for key in &keys {
                        resolver.resolve_matching(None, key).await;
                    }
                });
            }
        }

        let store = self.store(&hook.name, hook.timeout + std::time::Duration::from_secs(2));
        // A batch (Adyen) is deduplicated item by item: the shop gets only the items it lacks.
        let mut keys: Vec<String> = Vec::new();
        if verified.item_ids.len() > 1 {
            for id in &verified.item_ids {
                if !keys.contains(id) {
                    keys.push(id.clone());
                }
            }
        } else {
            keys.push(verified.event_id.clone());
        }
        let wait_until = Instant::now() + hook.timeout + Duration::from_secs(1);
        let mut waited = false;
        let (claims, known) = loop {
            let mut claims = Vec::new();
            let mut known = Vec::new();
            let mut busy = None;
            for key in &keys {
                let begun = match dedupe::begin(&store, key).await {
                    Ok(b) => b,
                    Err(e) => {
                        // Neither forwarded nor marked (claims made so far are given back on drop):
                        // the provider redelivers it later.
                        tracing::warn!(webhook = %hook.name, error = %e, "webhook dedupe state unavailable");
                        record.dedupe = Some("state_unavailable");
                        let (mut resp, r) = reject(
                            WebhookResult::StateUnavailable,
                            "the event's delivery state cannot be read now; retry later",
                        );
                        let secs = e.retry_after().as_secs().max(1);
                        resp.headers_mut()
                            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                        return (resp, r);
                    }
                };
                match begun {
                    Begin::Deliver(claim) => claims.push(claim),
                    Begin::Duplicate => known.push(key.clone()),
                    Begin::Wait(rx) => {
                        busy = Some(rx);
                        break;
                    }
                }
            }
            let Some(mut rx) = busy else {
                break (claims, known);
            };
            // Another copy holds an item: give back what this one claimed, wait, and begin again.
            drop(claims);
            waited = true;
            let left = wait_until.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, rx.changed()).await.is_err() {
                record.dedupe = Some("in_flight");
                let (mut resp, r) = reject(
                    WebhookResult::InFlight,
                    "the same event is being delivered; retry later",
                );
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                return (resp, r);
            }
        };
        if claims.is_empty() {
            record.dedupe = Some("duplicate");
            return (
                duplicate_answer(&hook.verify.scheme),
                WebhookResult::Duplicate,
            );
        }
        let partial = !known.is_empty();
        record.dedupe = Some(match (partial, waited) {
            (true, _) => "partial",
            (false, true) => "waited",
            (false, false) => "new",
        });
        let body = if partial {
            match without_items(&body, &known) {
                Some(b) => b,
                None => return reject(WebhookResult::Malformed, "the batch could not be split"),
            }
        } else {
            body
        };

        let out = shop_request(hook, &parts.headers, &body, &record.request_id);
        let client = self.client.clone();
        let settings = hook.dedupe;
        let timeout = hook.timeout;
        // Its own task: the delivery and its bookkeeping finish even if the provider hangs up.
        let delivery = tokio::spawn(async move {
            let outcome = deliver(&client, out, timeout).await;
            let accepted = matches!(&outcome, Ok((status, ..)) if status.is_success());
            for claim in claims {
                if let Err(e) = claim.finish(accepted, settings).await {
                    // Not marked delivered: a redelivery is passed on again, which the shop must accept.
                    tracing::warn!(error = %e, "a webhook delivery could not be recorded");
                }
            }
            outcome
        });
        match delivery.await {
            Ok(Ok((status, headers, answer))) => {
                record.shop_status = Some(status.as_u16());
                if partial && status.is_success() {
                    // The shop answered for part of the batch; the provider wants the batch's answer.
                    return (
                        duplicate_answer(&hook.verify.scheme),
                        WebhookResult::Forwarded,
                    );
                }
                let mut resp = Response::new(full(answer));
                *resp.status_mut() = status;
                if let Some(ct) = headers.get(header::CONTENT_TYPE) {
                    resp.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
                }
                let result = if status.is_success() {
                    WebhookResult::Forwarded
                } else {
                    WebhookResult::ShopError
                };
                (resp, result)
            }
            Ok(Err(ShopFailure::Timeout)) => (
                problem_with_status(
                    WebhookResult::ShopError,
                    StatusCode::GATEWAY_TIMEOUT,
                    "the shop did not answer in time; the event was not marked delivered",
                ),
                WebhookResult::ShopError,
            ),
            Ok(Err(ShopFailure::Unreachable)) | Err(_) => reject(
                WebhookResult::ShopError,
                "the shop could not be reached; the event was not marked delivered",
            ),
        }
    }
}

enum ShopFailure {
    Unreachable,
    Timeout,
}

async fn deliver(
    client: &ShopClient,
    req: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<(StatusCode, HeaderMap, Bytes), ShopFailure> {
    let exchange = async {
        let resp = client
            .request(req)
            .await
            .map_err(|_| ShopFailure::Unreachable)?;
        let (parts, body) = resp.into_parts();
        // Only the start of the shop's answer is passed back; a body that fails midway is cut.
        let answer = match Limited::new(body, MAX_SHOP_ANSWER).collect().await {
            Ok(c) => c.to_bytes(),
            Err(_) => Bytes::new(),
        };
        Ok((parts.status, parts.headers, answer))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(ShopFailure::Timeout))
}

/// The request to the shop: the provider's end-to-end headers (its signature included, so the shop may
/// verify it too; its `Authorization` unless `forward_authorization: false`), the request id, the webhook's name, and `sign_for_shop`'s signature.
fn shop_request(
    hook: &Webhook,
    headers: &HeaderMap,
    body: &Bytes,
    request_id: &str,
) -> Request<Full<Bytes>> {
    let mut out = Request::new(Full::new(body.clone()));
    *out.method_mut() = Method::POST;
    *out.uri_mut() = hook.forward_to.clone();
    let h = out.headers_mut();
    *h = headers.clone();
    remove_hop_by_hop(h);
    h.remove(header::HOST);
    h.remove(header::CONTENT_LENGTH);
    if !hook.forward_authorization {
        h.remove(header::AUTHORIZATION);
    }
    h.remove(header::COOKIE);
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(HeaderName::from_static("x-request-id"), v);
    }
    if let Ok(v) = HeaderValue::from_str(&hook.name) {
        h.insert(X_SWITCHYARD_WEBHOOK, v);
    }
    if let Some(sign) = &hook.sign_for_shop {
        let value = verify::shop_signature(&sign.key, body, SystemTime::now());
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(sign.header.clone(), v);
        }
    }
    out
}

/// The answer to a copy of an event the shop already accepted. Adyen expects `[accepted]`.
fn duplicate_answer(scheme: &SignatureScheme) -> Response<ProxyBody> {
    let (body, ct) = match scheme {
        SignatureScheme::Adyen => ("[accepted]", "text/plain"),
        _ => (r#"{"received":true,"duplicate":true}"#, "application/json"),
    };
    let mut resp = Response::new(full(body));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    resp
}

/// The body of an Adyen batch without the items whose id is in `known` (each item is signed on its
/// own, so the rest still verifies at the shop). `None` when the body is not a batch.
fn without_items(body: &[u8], known: &[String]) -> Option<Bytes> {
    let mut doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    let items = doc.get_mut("notificationItems")?.as_array_mut()?;
    items.retain(|wrapper| {
        wrapper
            .get("NotificationRequestItem")
            .map(|item| !known.contains(&verify::adyen_item(item).event_id))
            .unwrap_or(true)
    });
    serde_json::to_vec(&doc).ok().map(Bytes::from)
}

/// A problem+json answer for `result`.
fn problem(result: WebhookResult, detail: &str) -> Response<ProxyBody> {
    let (status, _) = result.status_and_title();
    problem_with_status(result, status, detail)
}

/// A problem+json answer for `result` with `status` (the body's `status` is always the status line's).
fn problem_with_status(
    result: WebhookResult,
    status: StatusCode,
    detail: &str,
) -> Response<ProxyBody> {
    let (_, title) = result.status_and_title();
    let body = serde_json::json!({
        "type": format!("urn:switchyard:webhook:{}", result.as_str()),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp.headers_mut().insert(
        X_SWITCHYARD_ERROR,
        HeaderValue::from_static(result.as_str()),
    );
    resp
}

/// A client to the shop: plain HTTP (loopback, checked by config) or HTTPS with the webpki roots, TLS 1.2+.
fn shop_client() -> ShopClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap_or_else(|e| {
            // Only a provider without TLS 1.2/1.3 can fail here; ring has both: a bug caught by every test.
            panic!("the ring provider supports TLS 1.2 and 1.3: {e}")
        })
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.enable_early_data = false;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}
