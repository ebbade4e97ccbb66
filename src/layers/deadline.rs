//! Bounds the whole request (body read and every attempt) by the route's `timeout`, and by the end of
//! a shutdown's drain: a request still in flight when the drain timeout runs out is answered here
//! (`shutting_down`), above the layers that log and audit it, instead of being cut with its connection.

use std::task::{Context, Poll};

use http::Request;
use tower::{Layer, Service};

use super::BoxFuture;
use crate::budget::ListenerCtx;
use crate::ctx::RouteCtx;
use crate::error::ProxyError;

/// Applies the route timeout.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Deadline { inner }
    }
}

/// See [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Deadline<S>
where
    S: Service<Request<B>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = BoxFuture<Result<S::Response, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let timeout = req.extensions().get::<RouteCtx>().map(|c| c.route.timeout);
        let cutoff = req
            .extensions()
            .get::<ListenerCtx>()
            .map(|l| l.cutoff.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let bounded = async move {
                match timeout {
                    None => fut.await,
                    Some(timeout) => tokio::time::timeout(timeout, fut)
                        .await
                        .unwrap_or(Err(ProxyError::DeadlineExceeded { timeout })),
                }
            };
            match cutoff {
                None => bounded.await,
                Some(cutoff) => tokio::select! {
                    answer = bounded => answer,
                    () = cutoff.cut() => Err(ProxyError::ShuttingDown),
                },
            }
        })
    }
}
