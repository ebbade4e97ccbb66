//! The one place where proxy errors become answers to the shop.
//!
//! Every [`ProxyError`] becomes an `application/problem+json` response (RFC 9457), or the route's
//! provider dialect (`errors: stripe | adyen`, see [`dialect`]), with the header
//! `x-switchyard-error: <kind>`, so the shop can always tell an answer the proxy made from one a provider
//! made. `Retry-After` and the `x-switchyard-*` headers are the same in every dialect. Panics below this layer become a 500 `internal` answer too. The match over [`ErrorKind`] is exhaustive: a new kind cannot be added without its answer.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_util::future::CatchUnwind;
use futures_util::FutureExt;
use http::{header, HeaderName, HeaderValue, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

pub mod dialect;

use crate::body::{full, ProxyBody};
use crate::config::ErrorDialect;
use crate::ctx::{Req, RequestInfo};
use crate::error::{ErrorKind, Origin, ProxyError};
use crate::generation::Generation;
use crate::metrics::{Metrics, NONE};
use crate::redact::redact_text;

/// The header naming the kind of an answer the proxy made itself.
pub const X_SWITCHYARD_ERROR: HeaderName = HeaderName::from_static("x-switchyard-error");
/// On an answer given while the store of payment state was degraded (keyed payments held to their
/// first-priority provider): `degraded`.
pub const X_SWITCHYARD_STATE: HeaderName = HeaderName::from_static("x-switchyard-state");
/// The header naming the provider that answered (or was tried).
pub const X_SWITCHYARD_PROVIDER: HeaderName = HeaderName::from_static("x-switchyard-provider");
/// The header saying a payment's outcome is unknown (`unknown`): retry with the same key, or reconcile.
pub const X_SWITCHYARD_OUTCOME: HeaderName = HeaderName::from_static("x-switchyard-outcome");
/// The header counting the attempts sent to providers for this answer.
pub const X_SWITCHYARD_ATTEMPTS: HeaderName = HeaderName::from_static("x-switchyard-attempts");
/// Stripe's retry hint, read by its SDKs.
pub const STRIPE_SHOULD_RETRY: HeaderName = HeaderName::from_static("stripe-should-retry");
/// Stripe's request id header, which its SDKs show on every error.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");
const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

/// The status and title of each error kind.
pub fn status_and_title(kind: ErrorKind) -> (StatusCode, &'static str) {
    match kind {
        ErrorKind::NoRoute => (StatusCode::NOT_FOUND, "No route matches this request"),
        ErrorKind::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "Request body too large"),
        ErrorKind::BadRequest => (StatusCode::BAD_REQUEST, "Bad request"),
        ErrorKind::ProviderUnreachable => (StatusCode::BAD_GATEWAY, "Provider unreachable"),
        ErrorKind::ProviderTls => (StatusCode::BAD_GATEWAY, "TLS to the provider failed"),
        ErrorKind::ProviderTimeout => (StatusCode::GATEWAY_TIMEOUT, "Provider timed out"),
        ErrorKind::ProviderFailed => (StatusCode::BAD_GATEWAY, "Provider exchange failed"),
        ErrorKind::ProviderRefused => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Provider refused the request unprocessed",
        ),
        ErrorKind::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "Route timeout exceeded"),
        ErrorKind::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "Rate limit exceeded"),
        ErrorKind::NoHealthyProvider => (
            StatusCode::SERVICE_UNAVAILABLE,
            "No healthy provider for this route",
        ),
        ErrorKind::ProviderQuotaExhausted => {
            (StatusCode::TOO_MANY_REQUESTS, "Provider quota exhausted")
        }
        ErrorKind::IdempotencyKeyRequired => (StatusCode::BAD_REQUEST, "Idempotency key required"),
        ErrorKind::IdempotencyConflict => (
            StatusCode::CONFLICT,
            "A request with this idempotency key is in flight",
        ),
        ErrorKind::IdempotencyMismatch => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "Idempotency key reused with another payload",
        ),
        ErrorKind::PinnedProviderUnavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "The provider holding this payment is unavailable",
        ),
        ErrorKind::OutcomeUnknown => (StatusCode::BAD_GATEWAY, "Payment outcome unknown"),
        ErrorKind::StateUnavailable => {
            (StatusCode::SERVICE_UNAVAILABLE, "Payment state unavailable")
        }
        ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "Internal proxy error"),
        ErrorKind::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "Request body too slow"),
        ErrorKind::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "Proxy overloaded"),
        ErrorKind::NotImplemented => (StatusCode::NOT_IMPLEMENTED, "Not implemented by the proxy"),
        ErrorKind::ShuttingDown => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Proxy shut down before the request ended",
        ),
    }
}

/// A problem+json answer of `kind` with `detail`.
pub fn problem(
    kind: ErrorKind,
    detail: &str,
    request_id: Option<&HeaderValue>,
) -> Response<ProxyBody> {
    let (status, title) = status_and_title(kind);
    let mut body = serde_json::json!({
        "type": format!("urn:switchyard:error:{}", kind.as_str()),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    if let Some(id) = request_id.and_then(|v| v.to_str().ok()) {
        body["request_id"] = id.into();
    }
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, PROBLEM_JSON);
    resp.headers_mut()
        .insert(X_SWITCHYARD_ERROR, HeaderValue::from_static(kind.as_str()));
    resp
}

/// An answer of `kind` with `detail` in `dialect`.
pub fn answer(
    dialect: ErrorDialect,
    kind: ErrorKind,
    detail: &str,
    request_id: Option<&HeaderValue>,
) -> Response<ProxyBody> {
    let (status, _) = status_and_title(kind);
    let id = request_id.and_then(|v| v.to_str().ok());
    let Some((status, body, should_retry)) = dialect::render(dialect, kind, status, detail, id)
    else {
        return problem(kind, detail, request_id);
    };
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(X_SWITCHYARD_ERROR, HeaderValue::from_static(kind.as_str()));
    if dialect == ErrorDialect::Stripe {
        if let Some(retry) = should_retry {
            h.insert(
                STRIPE_SHOULD_RETRY,
                HeaderValue::from_static(if retry { "true" } else { "false" }),
            );
        }
        if let Some(id) = request_id {
            h.insert(REQUEST_ID, id.clone());
        }
    }
    resp
}

/// The answer to a panic below this layer: a 500, the panic itself is logged, not shown.
pub fn panic_response(err: Box<dyn Any + Send + 'static>) -> Response<ProxyBody> {
    let what = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic = what, "request handler panicked");
    problem(
        ErrorKind::Internal,
        "the proxy failed to handle this request",
        None,
    )
}

/// Turns errors into answers.
#[derive(Clone)]
pub struct RescueLayer {
    metrics: Metrics,
}

impl RescueLayer {
    /// A layer counting the answers it makes in `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Rescue {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`RescueLayer`].
#[derive(Clone)]
pub struct Rescue<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B> Service<Req<B>> for Rescue<S>
where
    S: Service<Req<B>, Response = Response<ProxyBody>, Error = ProxyError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The inner services are always ready (they hold no capacity of their own).
        match self.inner.poll_ready(cx) {
            Poll::Ready(_) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Req<B>) -> Self::Future {
        let ctx = &req.ctx;
        let seen = Seen {
            info: ctx.info.clone(),
            request_id: ctx.request_id.clone(),
            generation: ctx.entered.clone(),
            metrics: self.metrics.clone(),
        };
        // A panic below (a bug) becomes a 500 here instead of a dropped connection.
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
            Ok(fut) => ResponseFuture {
                state: State::Running {
                    inner: AssertUnwindSafe(fut).catch_unwind(),
                    seen: Some(seen),
                },
            },
            Err(panic) => ResponseFuture {
                state: State::Answered {
                    answer: Some(panic_response(panic)),
                },
            },
        }
    }
}

pin_project! {
    /// The future of [`Rescue`]: the answer below, or the answer made of its error or panic.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = Proj]
    enum State<F> {
        // The request is below this layer; `seen` is `None` once the answer is returned.
        Running {
            #[pin]
            inner: CatchUnwind<AssertUnwindSafe<F>>,
            seen: Option<Seen>,
        },
        // Answered already (a panic in the inner `call`); `None` once returned.
        Answered {
            answer: Option<Response<ProxyBody>>,
        },
    }
}

/// What [`Rescue`] needs to make an answer of an error.
struct Seen {
    info: Option<Arc<RequestInfo>>,
    request_id: Option<HeaderValue>,
    generation: Option<Arc<Generation>>,
    metrics: Metrics,
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, ProxyError>>,
{
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            Proj::Running { inner, seen } => {
                let out = ready!(inner.poll(cx));
                let Some(seen) = seen.take() else {
                    return Poll::Pending; // polled again after its answer
                };
                Poll::Ready(Ok(match out {
                    Ok(Ok(resp)) => resp,
                    Ok(Err(err)) => seen.answer(err),
                    Err(panic) => {
                        if let Some(info) = &seen.info {
                            info.set_error(ErrorKind::Internal);
                        }
                        panic_response(panic)
                    }
                }))
            }
            Proj::Answered { answer } => match answer.take() {
                Some(resp) => Poll::Ready(Ok(resp)),
                None => Poll::Pending,
            },
        }
    }
}

impl Seen {
    /// The answer to `err`, counted and logged.
    fn answer(self, err: ProxyError) -> Response<ProxyBody> {
        let Seen {
            info,
            request_id,
            generation,
            metrics,
        } = self;
        let kind = err.kind();
        let route = info.as_ref().and_then(|i| i.route());
        metrics
            .proxy_errors_total
            .with_label_values(&[route.as_deref().unwrap_or(NONE), kind.as_str()])
            .inc();
        let request_id_text = request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        match kind.origin() {
            Origin::Shop => {
                tracing::debug!(request_id = %redact_text(request_id_text), error = %redact_text(&err.to_string()), "rejected")
            }
            Origin::Proxy | Origin::Provider => {
                tracing::warn!(request_id = %redact_text(request_id_text), error = %redact_text(&err.to_string()), "request failed")
            }
        }
        let detail = match kind {
            ErrorKind::Internal => "the proxy failed to handle this request".to_owned(),
            _ => redact_text(&err.to_string()).into_owned(),
        };
        let dialect = route
            .as_ref()
            .zip(generation.as_ref())
            .and_then(|(name, g)| g.snapshot.routes.iter().find(|r| r.name == *name))
            .map(|r| r.errors)
            .unwrap_or_default();
        let mut resp = answer(dialect, kind, &detail, request_id.as_ref());
        if let Some(wait) = err.retry_after() {
            // Whole seconds, rounded up, never 0: a client must not retry at once in a loop.
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(crate::error::RetryIn(wait).secs()),
            );
        }
        if let Some(info) = &info {
            info.set_error(kind);
            if let Some(p) = info.provider().and_then(|p| HeaderValue::from_str(&p).ok()) {
                resp.headers_mut().insert(X_SWITCHYARD_PROVIDER, p);
            }
            resp.headers_mut()
                .insert(X_SWITCHYARD_ATTEMPTS, HeaderValue::from(info.attempts()));
            if info.state_degraded() {
                resp.headers_mut()
                    .insert(X_SWITCHYARD_STATE, HeaderValue::from_static("degraded"));
            }
        }
        // An answer that may hide a charge says so: the shop must retry with the same key or
        // reconcile, never re-send the payment under a new key.
        let unknown = err.reached() == crate::error::Reached::Maybe;
        if unknown {
            resp.headers_mut()
                .insert(X_SWITCHYARD_OUTCOME, HeaderValue::from_static("unknown"));
        }
        if matches!(kind, ErrorKind::BodyTimeout | ErrorKind::ShuttingDown) {
            // The rest of a slow body is not worth waiting for, and a drained server ends here.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}
