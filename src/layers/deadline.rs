//! Bounds the whole request (body read and every attempt) by the route's `timeout`: by the one
//! deadline instant the router put in [`RouteCtx`], which the attempt loop reads too, so both stop at
//! the same instant and agree that the route's time ran out. It also bounds it by the end of a
//! shutdown's drain: a request still in flight when the drain timeout runs out is answered here
//! (`shutting_down`), above the layers that log and audit it, instead of being cut with its connection.

use std::task::{Context, Poll};

use http::Request;
use tower::{Layer, Service};

use super::BoxFuture;
use crate::ctx::{RequestCtx, RequestInfo};
use crate::error::{ProxyError, Reached};

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
        let ctx = RequestCtx::of(req.extensions());
        let deadline = ctx
            .and_then(|c| c.route.as_ref())
            .map(|c| (c.deadline, c.route.timeout));
        // What the attempt loop knew when the deadline (or the drain) cut it short (it may go on in a
        // task of its own): whether an attempt may have reached a provider.
        let info = ctx.and_then(|c| c.info.clone());
        let cutoff = ctx
            .and_then(|c| c.listener.as_ref())
            .map(|l| l.cutoff.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let reached = |info: &Option<std::sync::Arc<RequestInfo>>| {
                Reached::maybe(info.as_ref().is_some_and(|i| i.maybe_sent()))
            };
            let info_cut = info.clone();
            let bounded = async move {
                match deadline {
                    None => fut.await,
                    Some((deadline, timeout)) => {
                        match tokio::time::timeout_at(deadline, fut).await {
                            Ok(answer) => answer,
                            Err(_) => Err(ProxyError::DeadlineExceeded {
                                timeout,
                                reached: reached(&info),
                            }),
                        }
                    }
                }
            };
            match cutoff {
                None => bounded.await,
                Some(cutoff) => tokio::select! {
                    answer = bounded => answer,
                    () = cutoff.cut() => Err(ProxyError::ShuttingDown {
                        reached: reached(&info_cut),
                    }),
                },
            }
        })
    }
}
