//! One access log line and the request metrics for every answer to the shop, errors included.
//!
//! The log line names the route, provider, status, duration, request id and the proxy's error kind if it
//! answered itself; it never holds a path, a query, a body or a header value other than the request id.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use tower::{Layer, Service};

use super::BoxFuture;
use crate::ctx::{RequestCtx, RequestInfo};
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

impl<S, B, RB> Service<Request<B>> for Observe<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<RB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let start = Instant::now();
        let info = Arc::new(RequestInfo::default());
        let ctx = RequestCtx::of_mut(req.extensions_mut());
        ctx.info = Some(Arc::clone(&info));
        let request_id = ctx.request_id.clone();
        let method = req.method().clone();
        let metrics = self.metrics.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            let elapsed = start.elapsed();
            let crate::ctx::Labels {
                route,
                meter,
                provider,
            } = info.labels();
            let route_label = route.as_deref().unwrap_or(NONE);
            let provider_label = provider.as_deref().unwrap_or(NONE);
            let status = result
                .as_ref()
                .map(|r| r.status())
                .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
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
            result
        })
    }
}
