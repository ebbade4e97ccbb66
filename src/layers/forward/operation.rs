//! The keyed operation: its idempotency key, claiming its record, replaying a settled answer, and
//! settling the record on every way out (a record never stays "in flight" after its operation).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, Version};
use http_body_util::BodyExt;

use crate::audit::Audit;
use crate::body::{full, BoxError, ProxyBody};
use crate::config::{IdempotencyMode, Route};
use crate::ctx::{Req, RequestInfo, RouteCtx};
use crate::error::ProxyError;
use crate::generation::Generation;
use crate::idempotency::{
    self, Begin, Finish, Kept, KeptRequest, Lease, PinStore, RecordKey, RouteStore, Store,
    StoredAnswer,
};
use crate::layers::rescue::{X_SWITCHYARD_ATTEMPTS, X_SWITCHYARD_PROVIDER, X_SWITCHYARD_STATE};
use crate::meters::RouteMeter;
use crate::metrics::Metrics;
use crate::upstream::{headers, ProviderKey, SendAttempt};

/// How much longer than its route's time an operation holds its key's record.
const LEASE_MARGIN: std::time::Duration = std::time::Duration::from_secs(2);

/// The header on a replayed answer.
pub(super) const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// Largest provider answer kept for replay; a larger one is passed on but its outcome stays pinned.
const MAX_STORED_ANSWER: usize = 4 << 20;
/// On an answer too large to keep for replay: `false`.
const X_SWITCHYARD_STORED: HeaderName = HeaderName::from_static("x-switchyard-stored");

/// The idempotency side of a keyed operation.
pub(super) struct Keyed {
    pub(super) store: Arc<RouteStore>,
    /// The record's identity; its `key` is the shop's key.
    pub(super) record: RecordKey,
    /// The key as a header value: the shop's own, shared rather than copied for every attempt.
    pub(super) value: HeaderValue,
    /// The shop's header, and whether the key was made here (then it is returned to the shop).
    pub(super) header: HeaderName,
    pub(super) generated: bool,
}

/// The operation's hold on its record: the lease, the provider an attempt is recorded for, and the
/// provider one may have reached. It settles the record on every way out; a record never stays "in
/// flight" after its operation.
pub(super) struct Settle<'a> {
    keyed: &'a Keyed,
    lease: Lease,
    /// The provider the store has recorded the next attempt for.
    recorded: Option<Arc<str>>,
    /// The provider an attempt of this operation (or of the one it resumed) may have reached: a way
    /// out without a final answer leaves the record unknown there, never dropped.
    reached: Option<Arc<str>>,
    done: bool,
    /// What the record keeps when the operation ends unknown.
    keeping: Keeping<'a>,
}

/// What an operation that ends unknown keeps for the resolver (`crate::resolver`): its request (never
/// a credential, nothing with card data) and the resolver's schedule.
pub(super) struct Keeping<'a> {
    pub(super) parts: &'a http::request::Parts,
    pub(super) body: &'a Bytes,
    pub(super) generation: &'a Generation,
    pub(super) route: &'a Route,
    pub(super) metrics: &'a Metrics,
    /// What the record kept when this operation resumed it.
    pub(super) prior: Option<Arc<Kept>>,
    /// The resolver's own try: an unknown end moves its schedule on.
    pub(super) resolving: bool,
}

impl Keeping<'_> {
    /// The operation ends unknown at `provider`.
    fn unknown(&self, keyed: &Keyed, provider: &Arc<str>) -> Finish {
        let now_ms = idempotency::unix_ms(std::time::SystemTime::now());
        let config = self.generation.snapshot.providers.get(provider);
        let injects = config.is_some_and(|p| p.auth.is_some());
        // A credential the shop sent is held in memory, for the resolver to send as the shop did.
        if !injects && !self.resolving {
            if let Some(credential) = self.parts.headers.get(http::header::AUTHORIZATION) {
                self.generation
                    .idempotency
                    .credentials()
                    .hold(&keyed.record.scope, credential);
            }
        }
        let kept = match &self.prior {
            Some(prior) if self.resolving => {
                let retention = config.map_or(crate::config::DEFAULT_IDEMPOTENCY_RETENTION, |p| {
                    p.idempotency_retention
                });
                Some(Arc::new(prior.tried(now_ms, retention)))
            }
            // A shop's retry of a record that keeps its request leaves the schedule as it was.
            Some(_) => None,
            None => Some(Arc::new(self.first(keyed, provider, injects, now_ms))),
        };
        Finish::Unknown {
            provider: Arc::clone(provider),
            kept,
        }
    }

    fn first(&self, keyed: &Keyed, provider: &Arc<str>, injects: bool, now_ms: u64) -> Kept {
        let mut headers = self.parts.headers.clone();
        headers::for_provider(&mut headers, None);
        let auth = self
            .generation
            .snapshot
            .providers
            .get(provider)
            .and_then(|p| p.auth.as_ref())
            .map(|a| &a.header);
        let mut skip = vec![&keyed.header];
        skip.extend(auth);
        let pq = self
            .parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str());
        let request = KeptRequest::new(
            &keyed.record.scope,
            &keyed.record.key,
            &self.parts.method,
            pq,
            &headers,
            &skip,
            self.body,
        )
        .map(|mut r| {
            r.shop_credential &= !injects;
            Arc::new(r)
        });
        let mut kept = Kept::first(now_ms, request);
        if let Err(why) = &kept.request {
            // Nothing to send again: the shop's retry or a webhook resolves it.
            kept.next_ms = idempotency::GAVE_UP;
            tracing::warn!(route = %self.route.name, provider = %provider, reason = why.as_str(), "an operation whose outcome is unknown is not kept for the resolver");
            self.metrics
                .resolutions_total
                .with_label_values(&[&*self.route.name, provider, "no_request"])
                .inc();
        }
        kept
    }
}

impl Settle<'_> {
    pub(super) async fn finish(&mut self, finish: Finish) {
        self.done = true;
        // The shop gets what the provider said either way; a record left in flight ends with its
        // lease, and then resumes at the recorded provider.
        if let Err(e) = self
            .keyed
            .store
            .finish(&self.keyed.record, self.lease, finish)
            .await
        {
            tracing::warn!(error = %e, "an idempotency record could not be settled");
        }
    }

    /// Records, and has the store confirm, that the next attempt goes to `provider`: nothing is
    /// sent to a provider the store has not recorded.
    pub(super) async fn record_attempt(&mut self, provider: &Arc<str>) -> Result<(), ProxyError> {
        if self.recorded.as_ref() == Some(provider) {
            return Ok(());
        }
        self.keyed
            .store
            .attempt(&self.keyed.record, self.lease, provider)
            .await?;
        self.recorded = Some(Arc::clone(provider));
        Ok(())
    }

    /// An attempt at `provider` may have reached it.
    pub(super) fn may_have_reached(&mut self, provider: &Arc<str>) {
        if self.reached.is_none() {
            self.reached = Some(Arc::clone(provider));
        }
    }

    /// The operation ends unknown at `provider`, keeping its request for the resolver.
    pub(super) fn unknown(&self, provider: &Arc<str>) -> Finish {
        self.keeping.unknown(self.keyed, provider)
    }

    /// How the operation ends when it stops without a final answer.
    fn unsettled(&self) -> Finish {
        match &self.reached {
            Some(p) => self.unknown(p),
            None => Finish::NothingSent,
        }
    }
}

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let finish = self.unsettled();
        let Err(finish) = self
            .keyed
            .store
            .finish_now(&self.keyed.record, self.lease, finish)
        else {
            return;
        };
        // A store that must be waited for is told in a task that owns what it needs.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let store = Arc::clone(&self.keyed.store);
            let record = self.keyed.record.clone();
            let lease = self.lease;
            runtime.spawn(async move {
                if let Err(e) = store.finish(&record, lease, finish).await {
                    tracing::warn!(error = %e, "an idempotency record could not be settled");
                }
            });
        }
    }
}

/// One operation of the shop's: its request, the route and generation it runs on, and its key.
pub(super) struct Operation<S> {
    pub(super) metrics: Metrics,
    pub(super) audit: Audit,
    /// The request id, for the audit's attempt records (shared, not copied: most payments are not
    /// audited).
    pub(super) request_id: HeaderValue,
    pub(super) generation: Arc<Generation>,
    pub(super) route: Arc<Route>,
    /// The route's metric handles.
    pub(super) meter: Arc<RouteMeter>,
    pub(super) info: Option<Arc<RequestInfo>>,
    pub(super) parts: http::request::Parts,
    pub(super) body: Bytes,
    /// When the operation began (a pinned operation waits for its provider from then on).
    pub(super) started: tokio::time::Instant,
    /// When the route's timeout runs out.
    pub(super) deadline: tokio::time::Instant,
    pub(super) key: Option<Keyed>,
    /// Sends each attempt.
    pub(super) sender: S,
    /// The resolver's resend of an operation whose outcome is unknown (not a shop's request).
    pub(super) resolving: bool,
}

/// `x-switchyard-attempts` values for the usual counts, made once rather than per answer.
static ATTEMPT_COUNTS: [HeaderValue; 10] = [
    HeaderValue::from_static("0"),
    HeaderValue::from_static("1"),
    HeaderValue::from_static("2"),
    HeaderValue::from_static("3"),
    HeaderValue::from_static("4"),
    HeaderValue::from_static("5"),
    HeaderValue::from_static("6"),
    HeaderValue::from_static("7"),
    HeaderValue::from_static("8"),
    HeaderValue::from_static("9"),
];

pub(super) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl<S: SendAttempt> Operation<S> {
    /// Whether the operation has an idempotency key (its record must settle even if the shop hangs up).
    pub(super) fn is_keyed(&self) -> bool {
        self.key.is_some()
    }

    /// The key as the provider request takes it.
    pub(super) fn provider_key(&self) -> Option<ProviderKey<'_>> {
        self.key.as_ref().map(|k| ProviderKey {
            key: &k.record.key,
            scope: &k.record.scope,
            value: &k.value,
            shop_header: &k.header,
        })
    }

    pub(super) fn new(req: Req<Bytes>, metrics: Metrics, sender: S) -> Result<Self, ProxyError> {
        let Req { http, ctx: request } = req;
        let ctx = request.route.ok_or_else(|| {
            ProxyError::Internal("request reached forwarding without a route".into())
        })?;
        let info = request.info;
        let audit = request.audit.unwrap_or_default();
        let request_id = request.request_id.unwrap_or(HeaderValue::from_static(""));
        let started = tokio::time::Instant::now();
        let deadline = ctx.deadline;
        let (parts, body) = http.into_parts();
        let key = Self::key(&ctx, &parts)?;
        // Only the shop-request audit record reads it back: no copy of the key when there is none.
        if let (Some(info), Some(k), true) = (&info, &key, audit.is_enabled()) {
            info.set_idempotency_key(Arc::from(k.record.key.as_str()));
        }
        Ok(Self {
            metrics,
            audit,
            request_id,
            generation: ctx.generation,
            route: ctx.route,
            meter: ctx.meter,
            info,
            parts,
            body,
            started,
            deadline,
            key,
            sender,
            resolving: false,
        })
    }

    /// The resolver's resend of `kept` on `ctx`'s route: the shop's key and scope as kept (the
    /// record's identity), the shop's `credential` (held in memory) when it sent one.
    pub(crate) fn resend(
        ctx: RouteCtx,
        kept: &KeptRequest,
        credential: Option<HeaderValue>,
        metrics: Metrics,
        audit: Audit,
        sender: S,
        request_id: String,
    ) -> Result<Self, ProxyError> {
        let store = ctx
            .generation
            .idempotency
            .get(&ctx.route.name)
            .cloned()
            .ok_or_else(|| ProxyError::Internal("the route keeps no records".into()))?;
        let value = HeaderValue::from_str(&kept.key)
            .map_err(|_| ProxyError::Internal("a kept key is not a header value".into()))?;
        let mut request = Request::new(());
        *request.method_mut() = kept.method.clone();
        *request.uri_mut() = kept
            .path_and_query
            .parse()
            .map_err(|_| ProxyError::Internal("a kept path is not a URI".into()))?;
        let mut headers = kept.headers();
        if let Some(mut c) = credential {
            c.set_sensitive(true);
            headers.insert(http::header::AUTHORIZATION, c);
        }
        headers.insert(ctx.route.idempotency.header.clone(), value.clone());
        *request.headers_mut() = headers;
        let (parts, ()) = request.into_parts();
        let key = Keyed {
            store,
            record: kept.record_key(),
            value,
            header: ctx.route.idempotency.header.clone(),
            generated: false,
        };
        Ok(Self {
            metrics,
            audit,
            // The resolver's ids are ASCII (`resolver-` and a UUID); no copy is made of the bytes.
            request_id: HeaderValue::try_from(request_id).unwrap_or(HeaderValue::from_static("")),
            deadline: ctx.deadline,
            generation: ctx.generation,
            route: ctx.route,
            meter: ctx.meter,
            info: None,
            parts,
            body: kept.body.clone(),
            started: tokio::time::Instant::now(),
            key: Some(key),
            sender,
            resolving: true,
        })
    }

    /// The operation's idempotency key, for a POST or PATCH on a route that uses keys.
    fn key(ctx: &RouteCtx, parts: &http::request::Parts) -> Result<Option<Keyed>, ProxyError> {
        let cfg = &ctx.route.idempotency;
        let writes = parts.method == Method::POST || parts.method == Method::PATCH;
        if !writes || cfg.mode == IdempotencyMode::Off {
            return Ok(None);
        }
        let Some(store) = ctx.generation.idempotency.get(&ctx.route.name) else {
            return Ok(None);
        };
        let mut sent = parts.headers.get_all(&cfg.header).iter();
        let first = sent.next();
        if sent.next().is_some() {
            // Which one would the provider deduplicate on? Neither guess is safe.
            return Err(ProxyError::BadRequest {
                reason: format!("the {} header must be sent once", cfg.header),
            });
        }
        let (key, value, generated) = match first {
            Some(v) if idempotency::valid_key(v.as_bytes()) => (
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                v.clone(),
                false,
            ),
            Some(_) => {
                return Err(ProxyError::BadRequest {
                    reason: format!(
                        "the {} header must hold 1 to 255 visible ASCII characters",
                        cfg.header
                    ),
                })
            }
            None if cfg.mode == IdempotencyMode::Require => {
                return Err(ProxyError::IdempotencyKeyRequired {
                    header: cfg.header.to_string(),
                })
            }
            None => {
                let key = uuid::Uuid::new_v4().to_string();
                let value = HeaderValue::from_str(&key)
                    .map_err(|_| ProxyError::Internal("a UUID is not a header value".into()))?;
                (key, value, true)
            }
        };
        let credential = parts.headers.get(http::header::AUTHORIZATION);
        let scope = idempotency::scope(
            cfg.scope_header
                .as_ref()
                .and_then(|h| parts.headers.get(h))
                .and_then(|v| v.to_str().ok()),
            credential.map(|v| v.as_bytes()),
        );
        if let Some(credential) = credential {
            // After a restart, an unknown operation of this scope may wait for its credential.
            ctx.generation
                .idempotency
                .credentials()
                .offer(&scope, credential);
        }
        Ok(Some(Keyed {
            store: Arc::clone(store),
            record: RecordKey::new(scope, key),
            value,
            header: cfg.header.clone(),
            generated,
        }))
    }

    fn count_idempotency(&self, result: &str) {
        self.meter.idempotency(result);
    }

    pub(super) async fn run(self) -> Result<Response<ProxyBody>, ProxyError> {
        // The route's plan, made once: its first provider is recorded with the claim (one step with
        // the store, not two), and the attempt loop follows it.
        let plan = self.order(None, tokio::time::Instant::now());
        let mut pinned = None;
        let mut settle = None;
        let mut prepaid = None;
        if let Some(k) = &self.key {
            let fingerprint = idempotency::fingerprint(
                &self.parts.method,
                &self.route.name,
                self.parts.uri.path(),
                &self.body,
            );
            // Held while this operation may run, and a little longer: a holder that died frees its
            // key after this, to the recorded provider only.
            let lease = self
                .deadline
                .saturating_duration_since(tokio::time::Instant::now())
                + LEASE_MARGIN;
            let first = plan.as_ref().ok().and_then(|p| p.first());
            // A fleet-wide quota slot at the first provider is taken while the claim is made: one
            // wait on the shared store for both.
            let shared_quota = first
                .and_then(|p| self.generation.health.get(p))
                .and_then(|h| h.quota())
                .filter(|g| g.is_shared());
            let claim = k.store.begin(&k.record, fingerprint, lease, first);
            let begun = match (&shared_quota, first) {
                (Some(gate), Some(p)) => {
                    let (begun, slot) = tokio::join!(claim, gate.acquire());
                    prepaid = Some((Arc::clone(p), slot));
                    begun
                }
                _ => claim.await,
            };
            let mut prior = None;
            let (lease, resumed) = match begun? {
                Begin::New(lease) if self.resolving => {
                    // The record is gone: a resend now would be a new payment. Nothing is sent.
                    let _ = k.store.finish(&k.record, lease, Finish::NothingSent).await;
                    return Err(ProxyError::NothingToResolve);
                }
                Begin::New(lease) => {
                    self.count_idempotency("new");
                    (lease, None)
                }
                Begin::InFlight => {
                    self.count_idempotency("conflict");
                    return Err(ProxyError::IdempotencyConflict);
                }
                Begin::Mismatch => {
                    self.count_idempotency("mismatch");
                    return Err(ProxyError::IdempotencyMismatch);
                }
                Begin::Replay(answer) => {
                    self.count_idempotency("replayed");
                    return Ok(self.replay(&answer));
                }
                Begin::Resume {
                    pinned: p,
                    lease,
                    kept,
                } => {
                    self.count_idempotency("resumed");
                    prior = kept;
                    pinned = Some(Arc::clone(&p));
                    (lease, Some(p))
                }
            };
            settle = Some(Settle {
                keyed: k,
                lease,
                recorded: resumed.clone().or_else(|| first.cloned()),
                reached: resumed,
                done: false,
                keeping: Keeping {
                    parts: &self.parts,
                    body: &self.body,
                    generation: &self.generation,
                    route: &self.route,
                    metrics: &self.metrics,
                    prior,
                    resolving: self.resolving,
                },
            });
        }
        self.attempts(pinned, plan, prepaid, settle.as_mut()).await
    }

    /// The stored answer, as the shop gets it again.
    fn replay(&self, answer: &StoredAnswer) -> Response<ProxyBody> {
        let mut resp = Response::new(full(answer.body()));
        *resp.status_mut() = answer.status();
        *resp.headers_mut() = answer.headers();
        resp.headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
        if let Some(info) = &self.info {
            info.set_provider(Arc::clone(answer.provider()));
        }
        self.decorate(&mut resp, answer.provider(), 0);
        resp
    }

    pub(super) fn decorate(&self, resp: &mut Response<ProxyBody>, provider: &str, attempts: u32) {
        let h = resp.headers_mut();
        let name = match self.generation.upstreams.get(provider) {
            Some(u) => u.name_value.clone(),
            None => HeaderValue::from_str(provider).ok(),
        };
        if let Some(name) = name {
            h.insert(X_SWITCHYARD_PROVIDER, name);
        }
        let attempts = match ATTEMPT_COUNTS.get(attempts as usize) {
            Some(v) => v.clone(),
            None => HeaderValue::from(attempts),
        };
        h.insert(X_SWITCHYARD_ATTEMPTS, attempts);
        if let Some(k) = &self.key {
            if k.generated {
                h.insert(k.header.clone(), k.value.clone());
            }
            if k.store.degraded() {
                h.insert(X_SWITCHYARD_STATE, HeaderValue::from_static("degraded"));
            }
        }
    }

    /// A final answer: passed on, and for a keyed operation kept for replay.
    pub(super) async fn processed(
        &self,
        resp: Response<S::Body>,
        provider: &Arc<str>,
        attempts: u32,
        settle: Option<&mut Settle<'_>>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let Some(settle) = settle else {
            let mut resp = respond(resp);
            self.decorate(&mut resp, provider, attempts);
            return Ok(resp);
        };
        if self.resolving && is_credential_refusal(resp.status()) {
            // The resolver's resend was refused for its credential (rotated, or not the shop's):
            // not the provider's word on the payment, so the outcome stays unknown.
            settle.finish(settle.unknown(provider)).await;
            return Err(ProxyError::OutcomeUnknown {
                provider: provider.to_string(),
                status: Some(resp.status().as_u16()),
                retry_after: std::time::Duration::from_secs(1),
            });
        }
        let (mut parts, body) = resp.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers);
        let (body, rest) = match read_up_to(body, MAX_STORED_ANSWER).await {
            Ok(read) => read,
            Err(e) => {
                // The answer was lost on the way: whatever the provider did stays pinned to it.
                settle.finish(settle.unknown(provider)).await;
                self.count_unknown(true, provider);
                return Err(ProxyError::ProviderFailed {
                    provider: provider.to_string(),
                    source: format!("the answer could not be read: {e}").into(),
                });
            }
        };
        if let Some(rest) = rest {
            // Too large to keep: passed on as it comes, marked unstored. The record stays pinned to
            // the provider (not replayed), so the shop's retry goes there with the same key and the
            // provider answers it from its own store.
            settle.finish(settle.unknown(provider)).await;
            self.count_idempotency("not_stored");
            let head = futures_util::stream::once(std::future::ready(Ok::<_, BoxError>(
                http_body::Frame::data(body),
            )));
            let rest = http_body_util::BodyStream::new(rest.map_err(|e| -> BoxError { e.into() }));
            let streamed =
                http_body_util::StreamBody::new(futures_util::StreamExt::chain(head, rest));
            let mut resp = Response::from_parts(parts, streamed.boxed_unsync());
            *resp.version_mut() = Version::HTTP_11;
            resp.headers_mut()
                .insert(X_SWITCHYARD_STORED, HeaderValue::from_static("false"));
            self.decorate(&mut resp, provider, attempts);
            return Ok(resp);
        }
        let answer = StoredAnswer::new(parts.status, &parts.headers, &body, Arc::clone(provider));
        // The object pin and the record are written together (one wait on a shared store, not two).
        let pin = async {
            if parts.status.is_success() {
                // The answer is the provider's word: it goes to the shop even if the pin is not kept.
                if let Err(e) = self.generation.pins.remember_answer(&body, provider).await {
                    tracing::warn!(error = %e, "a payment object could not be pinned");
                }
            }
        };
        tokio::join!(pin, settle.finish(Finish::Final(answer)));
        let mut resp = Response::from_parts(parts, full(body));
        *resp.version_mut() = Version::HTTP_11;
        self.decorate(&mut resp, provider, attempts);
        Ok(resp)
    }
}

/// 401, 403 or 407: the provider refused the request's credential before looking at its key.
fn is_credential_refusal(status: http::StatusCode) -> bool {
    matches!(status.as_u16(), 401 | 403 | 407)
}

/// Reads `body` whole when it is at most `limit` bytes: `(bytes, None)`. A larger one is read just
/// past the limit: `(what was read, Some(the rest))`, for the caller to pass on as it comes.
async fn read_up_to<B>(mut body: B, limit: usize) -> Result<(Bytes, Option<B>), BoxError>
where
    B: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Unpin,
{
    let mut kept = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Into::into)?;
        if let Ok(data) = frame.into_data() {
            kept.extend_from_slice(&data);
            if kept.len() > limit {
                return Ok((kept.freeze(), Some(body)));
            }
        }
    }
    Ok((kept.freeze(), None))
}

/// A provider's answer, streamed to the shop.
pub(super) fn respond<B>(resp: Response<B>) -> Response<ProxyBody>
where
    B: http_body::Body<Data = Bytes, Error: Into<crate::body::BoxError>> + Send + 'static,
{
    let (mut parts, body) = resp.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers);
    parts.version = Version::HTTP_11;
    Response::from_parts(
        parts,
        body.map_err(|e| -> crate::body::BoxError { e.into() })
            .boxed_unsync(),
    )
}
