//! The route's rate limit on the shop: over the limit, 429 with `Retry-After`, and nothing reaches a
//! provider. Counted by route, by client IP or by a header value (a shop or tenant id), as configured.

use std::task::{Context, Poll};

use tower::{Layer, Service};

use crate::config::RateLimitKey;
use crate::ctx::Req;
use crate::error::ProxyError;
use crate::metrics::Metrics;

/// Applies route rate limits.
#[derive(Clone)]
pub struct RateLimitLayer {
    metrics: Metrics,
}

impl RateLimitLayer {
    /// A layer counting refusals in `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B> Service<Req<B>> for RateLimit<S>
where
    S: Service<Req<B>, Error = ProxyError>,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = futures_util::future::Either<
        S::Future,
        std::future::Ready<Result<S::Response, ProxyError>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req<B>) -> Self::Future {
        use futures_util::future::Either;
        if let Some(ctx) = &req.ctx.route {
            if let Some(limiter) = ctx.generation.route_limits.get(&ctx.route.name) {
                let key = match &limiter.config().by {
                    RateLimitKey::None => String::new(),
                    RateLimitKey::ClientIp => req
                        .ctx
                        .client
                        .map(|a| a.ip().to_string())
                        .unwrap_or_default(),
                    RateLimitKey::Header(name) => req
                        .http
                        .headers()
                        .get(name)
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .unwrap_or_default(),
                };
                if let Err(retry_after) = limiter.check(&key) {
                    self.metrics
                        .rate_limited_total
                        .with_label_values(&[&*ctx.route.name, "route"])
                        .inc();
                    return Either::Right(std::future::ready(Err(ProxyError::RateLimited {
                        retry_after,
                    })));
                }
            }
        }
        Either::Left(self.inner.call(req))
    }
}
