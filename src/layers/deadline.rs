//! Bounds the whole request (body read and every attempt) by the route's `timeout`: by the one
//! deadline instant the router put in [`RouteCtx`], which the attempt loop reads too, so both stop at
//! the same instant and agree that the route's time ran out. It also bounds it by the end of a
//! shutdown's drain: a request still in flight when the drain timeout runs out is answered here
//! (`shutting_down`), above the layers that log and audit it, instead of being cut with its connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tower::{Layer, Service};

use crate::ctx::{Req, RequestInfo};
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

impl<S, B> Service<Req<B>> for Deadline<S>
where
    S: Service<Req<B>, Error = ProxyError>,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req<B>) -> Self::Future {
        let ctx = &req.ctx;
        let (sleep, timeout) = match &ctx.route {
            Some(c) => (Some(tokio::time::sleep_until(c.deadline)), c.route.timeout),
            None => (None, Duration::ZERO),
        };
        // What the attempt loop knew when the deadline (or the drain) cut it short (it may go on in a
        // task of its own): whether an attempt may have reached a provider.
        let info = ctx.info.clone();
        let cutoff = ctx.listener.as_ref().map(|l| l.cutoff.cut());
        ResponseFuture {
            inner: self.inner.call(req),
            sleep,
            cutoff,
            timeout,
            info,
        }
    }
}

pin_project! {
    /// The future of [`Deadline`]: the answer, unless the route's deadline or the drain's cutoff
    /// comes first (polled in that order, so an answer that is ready wins).
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        #[pin]
        cutoff: Option<WaitForCancellationFutureOwned>,
        timeout: Duration,
        info: Option<Arc<RequestInfo>>,
    }
}

impl<F, T> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, ProxyError>>,
{
    type Output = Result<T, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(answer) = this.inner.poll(cx) {
            return Poll::Ready(answer);
        }
        let reached = || Reached::maybe(this.info.as_ref().is_some_and(|i| i.maybe_sent()));
        if let Some(sleep) = this.sleep.as_pin_mut() {
            if sleep.poll(cx).is_ready() {
                return Poll::Ready(Err(ProxyError::DeadlineExceeded {
                    timeout: *this.timeout,
                    reached: reached(),
                }));
            }
        }
        if let Some(cutoff) = this.cutoff.as_pin_mut() {
            ready!(cutoff.poll(cx));
            return Poll::Ready(Err(ProxyError::ShuttingDown { reached: reached() }));
        }
        Poll::Pending
    }
}
