//! The innermost service: one payment operation, from the idempotency record to the last attempt.
//!
//! - **Idempotency.** A POST/PATCH carries a key (the shop's, or a UUIDv4 made here and returned). The
//!   route's store answers first: a key in flight gets 409 and nothing is sent; a reuse with another
//!   payload 422; a settled answer is replayed byte for byte (`Idempotent-Replayed: true`); a key whose
//!   outcome is unknown resumes at the pinned provider only. Each provider gets the key in its own
//!   header, hashed when longer than it accepts.
//! - **Attempts** follow the route's plan (`health::plan`). Every attempt is classified (`outcome`):
//!   *not sent* and *not processed* may move to the next target at once (the backup channel); *unknown*
//!   pins the operation to that provider, which is retried only with a key (or an idempotent method),
//!   after backoff, never another provider; *processed* ends it (a decline is never retried).
//! - **Pinning.** Once an attempt may have reached provider A, every later attempt of the operation goes
//!   to A only, even with A's breaker open (then 503 `pinned_provider_unavailable`). Follow-ups that name
//!   a payment object A returned (capture, refund) go to A too.
//! - **Budget.** Retries at the same provider take from the route's retry budget; backoff is exponential
//!   with full jitter, `Retry-After` is honoured up to a cap, everything within the route's timeout.
//! - **Detached.** A keyed operation runs in a task of its own: if the shop hangs up mid-payment, the
//!   provider call still completes and its answer is stored for the shop's retry.

use std::borrow::Cow;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Method, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use prometheus::IntGauge;
use tower::Service;

use super::rescue::{X_SWITCHYARD_ATTEMPTS, X_SWITCHYARD_PROVIDER};
use super::BoxFuture;
use crate::audit::{provider_request_id, AttemptReason, AttemptRecord, Audit, RecordedBody};
use crate::body::{full, ProxyBody};
use crate::config::{IdempotencyMode, Provider, Route};
use crate::ctx::{RequestId, RequestInfo, RouteCtx};
use crate::error::ProxyError;
use crate::generation::Generation;
use crate::health::breaker::Admission;
use crate::health::{self, Outcome, ProviderState};
use crate::idempotency::{self, Begin, Finish, MemoryStore, RecordKey, Store, StoredAnswer};
use crate::metrics::Metrics;
use crate::outcome::{classify, BreakerEffect, Classified, Observed, OutcomeClass, RetryHint};
use crate::retry::backoff;
use crate::routing::path_has_prefix;
use crate::upstream::{headers, SendError, SendFailure};

/// The header on a replayed answer.
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// Largest provider answer kept for replay; a larger one is passed on but its outcome stays pinned.
const MAX_STORED_ANSWER: usize = 4 << 20;

/// Sends requests to providers.
#[derive(Clone)]
pub struct Forward {
    metrics: Metrics,
}

impl Forward {
    /// A forwarder recording in `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl Service<Request<Bytes>> for Forward {
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = BoxFuture<Result<Response<ProxyBody>, ProxyError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let op = match Operation::new(req, self.metrics.clone()) {
            Ok(op) => op,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        if op.key.is_some() {
            // The operation ends (and its record is settled) even if the shop hangs up.
            Box::pin(Detachable::new(Box::pin(op.run())))
        } else {
            Box::pin(op.run())
        }
    }
}

/// A keyed operation, run inside the shop's request while the shop waits, and moved to a task of its
/// own if the shop goes away first: the operation still ends and settles its record, and the common
/// case pays for no task and no wake-up between tasks.
struct Detachable<T: Send + 'static> {
    op: Option<BoxFuture<T>>,
}

impl<T: Send + 'static> Detachable<T> {
    fn new(op: BoxFuture<T>) -> Self {
        Self { op: Some(op) }
    }
}

impl<T: Send + 'static> std::future::Future for Detachable<T> {
    type Output = T;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let Some(op) = self.op.as_mut() else {
            panic!("Detachable polled after it finished");
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(out)) => {
                self.op = None;
                Poll::Ready(out)
            }
            // A panicked operation is not resumed anywhere: the shop's request reports it.
            Err(panic) => {
                self.op = None;
                std::panic::resume_unwind(panic)
            }
        }
    }
}

impl<T: Send + 'static> Drop for Detachable<T> {
    fn drop(&mut self) {
        if let Some(op) = self.op.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(op);
            }
        }
    }
}

/// The idempotency side of a keyed operation.
struct Keyed {
    store: Arc<MemoryStore>,
    /// The record's identity; its `key` is the shop's key.
    record: RecordKey,
    /// The key as a header value: the shop's own, shared rather than copied for every attempt.
    value: HeaderValue,
    /// The shop's header, and whether the key was made here (then it is returned to the shop).
    header: HeaderName,
    generated: bool,
}

/// Settles the record on every way out; a record never stays "in flight" after its operation.
struct Settle<'a> {
    keyed: &'a Keyed,
    done: bool,
}

impl Settle<'_> {
    fn finish(&mut self, finish: Finish) {
        self.done = true;
        self.keyed
            .store
            .finish(&self.keyed.record, finish, Instant::now());
    }
}

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        if !self.done {
            // Nothing more is known; a pin made on the way is kept by the store.
            self.keyed
                .store
                .finish(&self.keyed.record, Finish::NothingSent, Instant::now());
        }
    }
}

struct Operation {
    metrics: Metrics,
    audit: Audit,
    request_id: String,
    generation: Arc<Generation>,
    route: Arc<Route>,
    info: Option<Arc<RequestInfo>>,
    parts: http::request::Parts,
    body: Bytes,
    started: Instant,
    key: Option<Keyed>,
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

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl Operation {
    fn new(req: Request<Bytes>, metrics: Metrics) -> Result<Self, ProxyError> {
        let ctx = req.extensions().get::<RouteCtx>().cloned().ok_or_else(|| {
            ProxyError::Internal("request reached forwarding without a route".into())
        })?;
        let info = req.extensions().get::<Arc<RequestInfo>>().cloned();
        let audit = req.extensions().get::<Audit>().cloned().unwrap_or_default();
        let request_id = req
            .extensions()
            .get::<RequestId>()
            .and_then(|r| r.0.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let (parts, body) = req.into_parts();
        let key = Self::key(&ctx, &parts)?;
        if let (Some(info), Some(k)) = (&info, &key) {
            info.set_idempotency_key(Arc::from(k.record.key.as_str()));
        }
        Ok(Self {
            metrics,
            audit,
            request_id,
            generation: ctx.generation,
            route: ctx.route,
            info,
            parts,
            body,
            started: Instant::now(),
            key,
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
        let (key, value, generated) = match parts.headers.get(&cfg.header) {
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
        let scope = idempotency::scope(
            cfg.scope_header
                .as_ref()
                .and_then(|h| parts.headers.get(h))
                .and_then(|v| v.to_str().ok()),
            parts
                .headers
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        );
        Ok(Some(Keyed {
            store: Arc::clone(store),
            record: RecordKey::new(scope, key),
            value,
            header: cfg.header.clone(),
            generated,
        }))
    }

    fn count_idempotency(&self, result: &str) {
        self.metrics
            .idempotency_total
            .with_label_values(&[&*self.route.name, result])
            .inc();
    }

    async fn run(self) -> Result<Response<ProxyBody>, ProxyError> {
        let mut pinned = None;
        let mut settle = None;
        if let Some(k) = &self.key {
            let fingerprint = idempotency::fingerprint(
                &self.parts.method,
                &self.route.name,
                self.parts.uri.path(),
                &self.body,
            );
            match k.store.begin(&k.record, fingerprint, Instant::now()) {
                Begin::New => self.count_idempotency("new"),
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
                Begin::Resume { pinned: p } => {
                    self.count_idempotency("resumed");
                    pinned = Some(p);
                }
            }
            settle = Some(Settle {
                keyed: k,
                done: false,
            });
        }
        self.attempts(pinned, settle.as_mut()).await
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

    fn decorate(&self, resp: &mut Response<ProxyBody>, provider: &str, attempts: u32) {
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
        if let Some(k) = self.key.as_ref().filter(|k| k.generated) {
            h.insert(k.header.clone(), k.value.clone());
        }
    }

    /// The providers to try, in order: the pinned one only, or the route's plan.
    fn order(&self, pinned: Option<&Arc<str>>, now: Instant) -> Result<Vec<Arc<str>>, ProxyError> {
        if let Some(p) = pinned {
            return Ok(vec![Arc::clone(p)]);
        }
        let plan = health::plan(&self.route, &self.generation.health, now, rand::random())
            .map_err(|retry_after| ProxyError::NoHealthyProvider { retry_after })?;
        Ok(plan
            .into_iter()
            .map(|i| Arc::clone(&self.route.targets[i].provider))
            .collect())
    }

    async fn attempts(
        &self,
        resumed: Option<Arc<str>>,
        mut settle: Option<&mut Settle<'_>>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let route = &*self.route;
        let g = &*self.generation;
        let deadline = self.started + route.timeout;
        // An operation whose earlier request may have reached a provider stays unsettled until a
        // final answer comes back: failures that send nothing do not settle it.
        let mut unsettled = resumed.is_some();
        if let Some(info) = &self.info {
            info.set_maybe_sent(unsettled);
        }
        let now = Instant::now();
        // Follow-ups (capture, refund) go where the payment object lives.
        let mut pin = resumed.or_else(|| {
            g.pins
                .find(self.parts.uri.path(), &self.body, now)
                .filter(|p| g.upstreams.get(p).is_some())
        });
        let order = self.order(pin.as_ref(), now)?;
        if let Some(b) = g.retry_budgets.get(&route.name) {
            b.lock().unwrap_or_else(|p| p.into_inner()).deposit(now);
        }
        let may_retry_after_reaching = self.key.is_some() || is_idempotent(&self.parts.method);

        let mut cursor = 0;
        let mut sent = 0u32;
        let mut retries = 0u32;
        let mut skipped: Option<ProxyError> = None;
        let mut failover: Option<(Arc<str>, &'static str)> = None;
        let mut previous: Option<OutcomeClass> = None;
        let mut previous_provider: Option<Arc<str>> = None;
        let mut last: Option<LastAttempt> = None;

        loop {
            let provider = match &pin {
                Some(p) => Arc::clone(p),
                None => match order.get(cursor) {
                    Some(p) => Arc::clone(p),
                    None => break,
                },
            };
            let (Some(upstream), Some(state)) =
                (g.upstreams.get(&provider), g.health.get(&provider))
            else {
                if pin.is_some() {
                    return Err(ProxyError::PinnedProviderUnavailable {
                        provider: provider.to_string(),
                        retry_after: Duration::from_secs(1),
                    });
                }
                cursor += 1;
                continue;
            };
            // Local checks first: a refusal here sends nothing, so another target is safe.
            let now = Instant::now();
            let probe = match state.admit(now) {
                Admission::Allowed => false,
                Admission::Probe => true,
                Admission::Rejected { retry_in } => {
                    let retry_after = retry_in.max(Duration::from_millis(100));
                    if pin.is_some() {
                        // No other provider may take it: wait for this one while the route allows
                        // (a breaker opened by a brownout lets probes through soon), so the shop
                        // gets the payment's answer rather than a 503 to retry.
                        let wait_until = deadline.min(self.started + route.retry.pinned_wait);
                        if now + retry_after < wait_until {
                            tokio::time::sleep(retry_after).await;
                            continue;
                        }
                        return Err(ProxyError::PinnedProviderUnavailable {
                            provider: provider.to_string(),
                            retry_after,
                        });
                    }
                    skipped = Some(ProxyError::NoHealthyProvider { retry_after });
                    failover = failover.or(Some((Arc::clone(&provider), "breaker_open")));
                    cursor += 1;
                    continue;
                }
            };
            let admitted = Admitted {
                state,
                probe,
                done: false,
            };
            if let Some(gate) = state.quota() {
                if let Err(wait) = gate.acquire().await {
                    self.metrics
                        .rate_limited_total
                        .with_label_values(&[&*route.name, "provider"])
                        .inc();
                    drop(admitted);
                    let error = ProxyError::ProviderQuotaExhausted {
                        provider: provider.to_string(),
                        retry_after: wait,
                    };
                    if pin.is_some() {
                        return Err(error);
                    }
                    skipped = Some(error);
                    failover = failover.or(Some((Arc::clone(&provider), "quota")));
                    cursor += 1;
                    continue;
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                drop(admitted);
                break;
            }

            // Send.
            let reason = if unsettled || (pin.is_some() && previous_provider.is_none()) {
                AttemptReason::Pinned
            } else {
                match &previous_provider {
                    None => AttemptReason::Primary,
                    Some(p) if *p == provider => AttemptReason::Retry,
                    Some(_) => AttemptReason::Failover,
                }
            };
            let request = self.provider_request(&upstream.config)?;
            let audited = self.audit.is_enabled().then(|| {
                (
                    self.audit.now(),
                    request
                        .uri()
                        .path_and_query()
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                    request
                        .headers()
                        .get(&upstream.config.idempotency_header)
                        .filter(|_| self.key.is_some())
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned),
                )
            });
            if let Some(prev) = previous {
                self.metrics
                    .retries_total
                    .with_label_values(&[&*route.name, prev.as_str()])
                    .inc();
            }
            if let Some((from, reason)) = failover.take() {
                if from != provider {
                    self.metrics
                        .failovers_total
                        .with_label_values(&[&*route.name, &*from, &*provider, reason])
                        .inc();
                }
            }
            if let Some(info) = &self.info {
                info.set_provider(Arc::clone(&provider));
                info.add_attempt();
                info.set_maybe_sent(true);
            }
            sent += 1;
            let in_flight = InFlight::start(
                self.metrics
                    .upstream_requests_in_flight
                    .with_label_values(&[&*provider]),
            );
            let t0 = Instant::now();
            let mut result = upstream
                .send(request, upstream.config.timeout.min(remaining))
                .await;
            drop(in_flight);
            // An attempt cut short by the route's deadline ran out of the route's time, not the
            // provider's: the shop is told so whichever of the two timers fires first.
            if let Err(e) = &mut result {
                if remaining < upstream.config.timeout
                    && matches!(e.error, ProxyError::ProviderTimeout { .. })
                {
                    e.error = ProxyError::DeadlineExceeded {
                        timeout: route.timeout,
                    };
                }
            }
            let c = classify(observed(&result), SystemTime::now());
            let answered_at = Instant::now();
            let latency = answered_at.saturating_duration_since(t0);
            admitted.finish(&c, latency, answered_at);
            self.metrics
                .attempt_duration_seconds
                .with_label_values(&[&*route.name, &*provider])
                .observe(latency.as_secs_f64());
            if let Some((timestamp, path, idempotency_key)) = audited {
                let answered = result.as_ref().ok();
                self.audit.record(AttemptRecord {
                    timestamp,
                    request_id: self.request_id.clone(),
                    route: Arc::clone(&route.name),
                    provider: Arc::clone(&provider),
                    attempt: sent,
                    reason,
                    method: self.parts.method.clone(),
                    path,
                    status: answered.map(|r| r.status().as_u16()),
                    outcome: c.class,
                    latency,
                    idempotency_key,
                    provider_request_id: answered.and_then(|r| provider_request_id(r.headers())),
                    replayed: answered.is_some_and(|r| {
                        r.headers()
                            .get(&IDEMPOTENT_REPLAYED)
                            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
                    }),
                    request_body: self
                        .audit
                        .keeps_bodies()
                        .then(|| RecordedBody::new(&self.parts.headers, self.body.clone())),
                    // The answer's body is in the shop request's record, which sees it stream by.
                    response_body: None,
                });
            }
            previous_provider = Some(Arc::clone(&provider));
            self.metrics
                .attempts_total
                .with_label_values(&[&*route.name, &*provider, c.class.as_str()])
                .inc();
            if c.class.may_have_reached() {
                unsettled = true;
                if pin.is_none() {
                    pin = Some(Arc::clone(&provider));
                }
                if let (Some(k), Some(_)) = (&self.key, &settle) {
                    k.store.pin(&k.record, &provider);
                }
            }
            if let Some(info) = &self.info {
                info.set_maybe_sent(unsettled && c.class != OutcomeClass::Processed);
            }
            if c.class == OutcomeClass::Processed {
                let resp = match result {
                    Ok(resp) => resp,
                    Err(e) => return Err(e.error),
                };
                return self.processed(resp, &provider, sent, settle).await;
            }

            // Not settled: another target, the same provider again, or stop.
            let other_target = pin.is_none()
                && cursor + 1 < order.len()
                && (c.class == OutcomeClass::NotSent
                    || (c.class == OutcomeClass::NotProcessed && route.failover_on_not_processed));
            let retry_allowed = c.hint != RetryHint::DoNotRetry
                && match c.class {
                    OutcomeClass::NotSent | OutcomeClass::NotProcessed => true,
                    OutcomeClass::Unknown => may_retry_after_reaching,
                    OutcomeClass::Processed => false,
                }
                && sent < route.retry.attempts;
            last = Some((Arc::clone(&provider), c.class, result));
            previous = Some(c.class);
            if !retry_allowed {
                break;
            }
            if other_target {
                // Nothing reached this provider: the next target (the backup channel) takes it now.
                failover = Some((Arc::clone(&provider), c.class.as_str()));
                cursor += 1;
                continue;
            }
            // The same provider again, after a pause, if the budget and the deadline allow.
            let budget_ok = g.retry_budgets.get(&route.name).is_none_or(|b| {
                b.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .try_withdraw(answered_at)
            });
            if !budget_ok {
                self.metrics
                    .retry_budget_exhausted_total
                    .with_label_values(&[&*route.name])
                    .inc();
                break;
            }
            retries += 1;
            let pause = match c.hint {
                RetryHint::After(d) => d.min(route.retry.retry_after_cap),
                _ => backoff(
                    retries,
                    route.retry.backoff,
                    route.retry.max_backoff,
                    rand::random(),
                ),
            };
            if answered_at + pause >= deadline {
                break;
            }
            tokio::time::sleep(pause).await;
        }

        // Out of attempts, targets, budget or time, without a final answer.
        let Some((provider, class, result)) = last else {
            let error = skipped.unwrap_or(ProxyError::DeadlineExceeded {
                timeout: route.timeout,
            });
            return Err(error);
        };
        if unsettled {
            // This attempt or an earlier one may have been executed: the shop must not take any of
            // these failures for "nothing happened".
            self.metrics
                .unknown_outcomes_total
                .with_label_values(&[&*route.name, &*provider])
                .inc();
            if let Some(s) = settle.as_mut() {
                s.finish(Finish::Unknown {
                    provider: Arc::clone(&provider),
                });
            }
            return Err(match (class, result) {
                (OutcomeClass::Unknown, Err(e)) => e.error,
                (_, Ok(resp)) => ProxyError::OutcomeUnknown {
                    provider: provider.to_string(),
                    status: Some(resp.status().as_u16()),
                },
                (_, Err(_)) => ProxyError::OutcomeUnknown {
                    provider: provider.to_string(),
                    status: None,
                },
            });
        }
        // Nothing was executed: the record ends (a pin from before stays), the shop gets the provider's
        // own answer (a 429) or the proxy's.
        match result {
            Ok(resp) => {
                let mut resp = respond(resp);
                self.decorate(&mut resp, &provider, sent);
                Ok(resp)
            }
            Err(e) => Err(e.error),
        }
    }

    /// A final answer: passed on, and for a keyed operation kept for replay.
    async fn processed(
        &self,
        resp: Response<Incoming>,
        provider: &Arc<str>,
        attempts: u32,
        settle: Option<&mut Settle<'_>>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let Some(settle) = settle else {
            let mut resp = respond(resp);
            self.decorate(&mut resp, provider, attempts);
            return Ok(resp);
        };
        let (mut parts, body) = resp.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers);
        let body = match Limited::new(body, MAX_STORED_ANSWER).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                // The answer was lost on the way: whatever the provider did stays pinned to it.
                settle.finish(Finish::Unknown {
                    provider: Arc::clone(provider),
                });
                self.metrics
                    .unknown_outcomes_total
                    .with_label_values(&[&*self.route.name, &**provider])
                    .inc();
                return Err(ProxyError::ProviderFailed {
                    provider: provider.to_string(),
                    source: format!("the answer could not be read: {e}").into(),
                });
            }
        };
        if parts.status.is_success() {
            self.generation
                .pins
                .remember_answer(&body, provider, Instant::now());
        }
        settle.finish(Finish::Final(StoredAnswer::new(
            parts.status,
            &parts.headers,
            &body,
            Arc::clone(provider),
        )));
        let mut resp = Response::from_parts(parts, full(body));
        *resp.version_mut() = Version::HTTP_11;
        self.decorate(&mut resp, provider, attempts);
        Ok(resp)
    }

    /// The request for one attempt at `provider`.
    fn provider_request(&self, provider: &Provider) -> Result<Request<Bytes>, ProxyError> {
        let uri = provider_uri(
            provider,
            self.route.strip_prefix.as_deref(),
            &self.parts.uri,
        )?;
        let mut h = self.parts.headers.clone();
        headers::for_provider(&mut h, provider.auth.as_ref().map(|a| &a.header));
        if let Some(auth) = &provider.auth {
            h.insert(auth.header.clone(), auth.value.header_value().clone());
        }
        if let Some(k) = &self.key {
            h.remove(&k.header);
            let value = match idempotency::key_for_provider(
                &k.record.key,
                provider.idempotency_key_max_len,
            ) {
                Cow::Borrowed(_) => k.value.clone(),
                Cow::Owned(derived) => HeaderValue::from_str(&derived).map_err(|_| {
                    ProxyError::Internal("idempotency key not a header value".into())
                })?,
            };
            h.insert(provider.idempotency_header.clone(), value);
        }
        let mut out = Request::new(self.body.clone());
        *out.method_mut() = self.parts.method.clone();
        *out.uri_mut() = uri;
        *out.version_mut() = Version::HTTP_11;
        *out.headers_mut() = h;
        Ok(out)
    }
}

/// The provider, class and result of the last attempt sent.
type LastAttempt = (
    Arc<str>,
    OutcomeClass,
    Result<Response<Incoming>, SendError>,
);

/// What one attempt showed, for the classifier.
fn observed(result: &Result<Response<Incoming>, SendError>) -> Observed<'_> {
    match result {
        Ok(resp) => Observed::Response {
            status: resp.status(),
            headers: resp.headers(),
        },
        Err(e) => match e.failure {
            SendFailure::Connect => Observed::ConnectFailed,
            SendFailure::Tls => Observed::TlsFailed,
            SendFailure::BeforeWrite => Observed::FailedBeforeWrite,
            SendFailure::RefusedStream => Observed::RefusedStream,
            SendFailure::GoAway => Observed::GoAwayUnprocessed,
            SendFailure::TimeoutAfterWrite => Observed::TimeoutAfterWrite,
            SendFailure::AfterWrite => Observed::FailedAfterWrite,
        },
    }
}

/// An attempt the breaker admitted: reports its outcome to the provider's health, or gives back its
/// probe slot if it ends without one.
struct Admitted<'a> {
    state: &'a ProviderState,
    probe: bool,
    done: bool,
}

impl Admitted<'_> {
    fn finish(mut self, c: &Classified, elapsed: Duration, now: Instant) {
        self.done = true;
        let outcome = match c.breaker {
            BreakerEffect::Success => Outcome::Answered,
            BreakerEffect::Failure => Outcome::Failed,
            BreakerEffect::Throttled => Outcome::Throttled(match c.hint {
                RetryHint::After(d) => Some(d),
                _ => None,
            }),
            BreakerEffect::None => {
                if self.probe {
                    self.state.release_probe();
                }
                return;
            }
        };
        self.state.record(now, self.probe, outcome, elapsed);
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if !self.done && self.probe {
            self.state.release_probe();
        }
    }
}

/// A provider's answer, streamed to the shop.
fn respond(resp: Response<Incoming>) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers);
    parts.version = Version::HTTP_11;
    Response::from_parts(
        parts,
        body.map_err(|e| -> crate::body::BoxError { Box::new(e) })
            .boxed_unsync(),
    )
}

/// The provider's URI for a shop request: the provider's scheme and authority, its base path, the shop's
/// path without the route's `strip_prefix`, and the shop's query.
fn provider_uri(
    provider: &Provider,
    strip_prefix: Option<&str>,
    shop: &Uri,
) -> Result<Uri, ProxyError> {
    let mut path = shop.path();
    if let Some(prefix) = strip_prefix.map(|p| p.trim_end_matches('/')) {
        if !prefix.is_empty() && path_has_prefix(path, prefix) {
            path = &path[prefix.len()..];
        }
    }
    let slash = if path.starts_with('/') { "" } else { "/" };
    let unchanged =
        provider.base_path.is_empty() && slash.is_empty() && path.len() == shop.path().len();
    let pq = match shop.path_and_query() {
        // The common case forwards the shop's own path and query: shared, not copied or parsed again.
        Some(pq) if unchanged => pq.clone(),
        _ => provider_path(provider, slash, path, shop.query())?,
    };
    Uri::builder()
        .scheme(provider.scheme.clone())
        .authority(provider.authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|e| ProxyError::Internal(format!("building the provider URI: {e}")))
}

fn provider_path(
    provider: &Provider,
    slash: &str,
    path: &str,
    query: Option<&str>,
) -> Result<PathAndQuery, ProxyError> {
    let pq = match query {
        Some(q) => format!("{}{slash}{path}?{q}", provider.base_path),
        None => format!("{}{slash}{path}", provider.base_path),
    };
    pq.parse().map_err(|_| ProxyError::BadRequest {
        reason: "the request path cannot be forwarded".into(),
    })
}

/// Counts a request as in flight to a provider until dropped, even when the shop goes away first.
struct InFlight(IntGauge);

impl InFlight {
    fn start(gauge: IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {

    #[tokio::test]
    async fn a_detachable_operation_dropped_midway_finishes_in_a_task_of_its_own() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let done = Arc::new(AtomicU32::new(0));
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let d = Arc::clone(&done);
        let mut op = Detachable::new(Box::pin(async move {
            let _ = wait.await;
            d.fetch_add(1, Ordering::SeqCst);
        }));
        // Started inside the request, then the shop goes away.
        assert!(futures_poll_once(&mut op).is_pending());
        drop(op);
        assert_eq!(done.load(Ordering::SeqCst), 0);
        go.send(()).unwrap();
        for _ in 0..100 {
            if done.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            done.load(Ordering::SeqCst),
            1,
            "the rest ran in the background"
        );

        // Run to the end inside the request: nothing is left to detach.
        let d = Arc::clone(&done);
        let out = Detachable::new(Box::pin(async move { d.fetch_add(1, Ordering::SeqCst) })).await;
        assert_eq!(out, 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(done.load(Ordering::SeqCst), 2, "ran exactly once");
    }

    /// Polls `f` once with a waker that does nothing.
    fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        std::pin::Pin::new(f).poll(&mut cx)
    }

    use super::*;
    use crate::config::Tls;
    use std::time::Duration;

    fn provider(url_base: &str) -> Provider {
        Provider {
            name: Arc::from("p"),
            scheme: http::uri::Scheme::HTTPS,
            authority: "api.example:443".parse().unwrap(),
            base_path: url_base.to_owned(),
            auth: None,
            tls: Tls::default(),
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            pool_idle_timeout: Duration::from_secs(1),
            pool_max_idle: 1,
            breaker: Default::default(),
            health_check: None,
            quota: None,
            slow_start: Duration::ZERO,
            max_throttle: Duration::from_secs(60),
            idempotency_header: http::HeaderName::from_static("idempotency-key"),
            idempotency_key_max_len: 255,
        }
    }

    #[test]
    fn uri_keeps_path_and_query_and_applies_base_and_strip() {
        let shop: Uri = "/stripe/v1/charges?expand[]=x&limit=3".parse().unwrap();
        let u = provider_uri(&provider(""), Some("/stripe"), &shop).unwrap();
        assert_eq!(
            u.to_string(),
            "https://api.example:443/v1/charges?expand[]=x&limit=3"
        );
        let u = provider_uri(&provider("/base"), None, &shop).unwrap();
        assert_eq!(u.path(), "/base/stripe/v1/charges");
        assert_eq!(u.query(), Some("expand[]=x&limit=3"));
        // Neither base path nor prefix: the shop's path and query as they came.
        let u = provider_uri(&provider(""), None, &shop).unwrap();
        assert_eq!(
            u.to_string(),
            "https://api.example:443/stripe/v1/charges?expand[]=x&limit=3"
        );
        let u = provider_uri(&provider(""), Some("/other"), &shop).unwrap();
        assert_eq!(u.path(), "/stripe/v1/charges");
        // A prefix only strips on a segment boundary.
        let shop: Uri = "/stripev1/charges".parse().unwrap();
        let u = provider_uri(&provider(""), Some("/stripe"), &shop).unwrap();
        assert_eq!(u.path(), "/stripev1/charges");
        let shop: Uri = "/stripe".parse().unwrap();
        let u = provider_uri(&provider(""), Some("/stripe/"), &shop).unwrap();
        assert_eq!(u.path(), "/");
    }
}
