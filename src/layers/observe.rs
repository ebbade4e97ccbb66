//! One access log line and the request metrics for every answer to the shop, errors included.
//!
//! The log line names the route, provider, status, duration, request id and the proxy's error kind if it
//! answered itself; it never holds a path, a query, a body or a header value other than the request id.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use http::{HeaderValue, Method, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::ctx::{Req, RequestInfo};
use crate::metrics::{Metrics, NONE};
use crate::redact::redact_text;

/// Records every request.
#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Metrics,
}

impl ObserveLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`ObserveLayer`].
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, RB> Service<Req<B>> for Observe<S>
where
    S: Service<Req<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Req<B>) -> Self::Future {
        let start = Instant::now();
        let info = Arc::new(RequestInfo::default());
        req.ctx.info = Some(Arc::clone(&info));
        let request_id = req.ctx.request_id.clone();
        let method = req.http.method().clone();
        ResponseFuture {
            inner: self.inner.call(req),
            seen: Some(Seen {
                start,
                info,
                request_id,
                method,
                metrics: self.metrics.clone(),
            }),
        }
    }
}

pin_project! {
    /// The future of [`Observe`]: the answer, recorded (metrics, access log) when it is ready.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        seen: Option<Seen>,
    }
}

/// What [`Observe`] knew of the request when it passed it on.
struct Seen {
    start: Instant,
    info: Arc<RequestInfo>,
    request_id: Option<HeaderValue>,
    method: Method,
    metrics: Metrics,
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Some(seen) = this.seen.take() {
            let status = result
                .as_ref()
                .map(|r| r.status())
                .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
            seen.record(status);
        }
        Poll::Ready(result)
    }
}

impl Seen {
    /// The request's metrics and its access log line.
    fn record(self, status: http::StatusCode) {
        let Seen {
            start,
            info,
            request_id,
            method,
            metrics,
        } = self;
        let elapsed = start.elapsed();
        let crate::ctx::Labels {
            route,
            meter,
            provider,
        } = info.labels();
        let route_label = route.as_deref().unwrap_or(NONE);
        let provider_label = provider.as_deref().unwrap_or(NONE);
        match &meter {
            // A route of the config: its handles, resolved once per generation.
            Some(m) => m.request(provider.as_deref(), status, elapsed),
            // No route (404, a webhook): by label.
            None => {
                metrics
                    .requests_total
                    .with_label_values(&[route_label, provider_label, status.as_str()])
                    .inc();
                metrics
                    .request_duration_seconds
                    .with_label_values(&[route_label, provider_label])
                    .observe(elapsed.as_secs_f64());
            }
        }
        let request_id = request_id
            .as_ref()
            .and_then(|r| r.to_str().ok())
            .unwrap_or("");
        tracing::info!(
            target: "switchyard::access",
            request_id = %redact_text(request_id),
            method = %method,
            route = route_label,
            provider = provider_label,
            status = status.as_u16(),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            error = info.error().map(|k| k.as_str()).unwrap_or(""),
            "request"
        );
    }
}
