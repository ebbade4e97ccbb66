//! Reads the request body in full, up to the route's `max_body`, so that it can be sent again.
//!
//! A `Content-Length` over the limit is refused before a byte is read; a body that grows past it while
//! being read is refused as soon as it does. Either way the shop gets 413 and nothing reaches a provider.
//!
//! The bytes are reserved from the process-wide buffer budget ([`crate::budget`]) as they arrive and
//! stay reserved until the request ends: a body the budget has no room for is answered 503
//! `overloaded`, one that does not arrive by the listener's body deadline (or within the route's
//! `timeout`, whichever comes first) 408 `body_timeout`.

use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, Request};
use http_body::Body;
use tower::{Layer, Service};

use super::BoxFuture;
use crate::body::BoxError;
use crate::budget::{read_body, ReadError, REASON_BUFFERED_BYTES};
use crate::ctx::RequestCtx;
use crate::error::ProxyError;

/// Buffers request bodies.
#[derive(Debug, Clone, Copy, Default)]
pub struct BufferBodyLayer;

impl<S> Layer<S> for BufferBodyLayer {
    type Service = BufferBody<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BufferBody { inner }
    }
}

/// See [`BufferBodyLayer`].
#[derive(Debug, Clone)]
pub struct BufferBody<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for BufferBody<S>
where
    S: Service<Request<Bytes>, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = BoxFuture<Result<S::Response, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The ready clone is the one we call later; the fresh clone stays behind (tower's idiom).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let (limit, deadline, timeout) = RequestCtx::of(req.extensions())
                .and_then(|c| c.route.as_ref())
                .map(|c| (c.route.max_body, c.deadline, c.route.timeout))
                .ok_or_else(|| ProxyError::Internal("body read before routing".into()))?;
            let declared = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let (parts, body) = req.into_parts();
            let listener = RequestCtx::of(&parts.extensions).and_then(|c| c.listener.as_ref());
            // The route's time bounds the body too: a body still arriving when it runs out (a slow
            // upload that never idles long enough for the listener's deadline) is the shop's 408,
            // not a 504 (nothing was sent to a provider).
            let read = read_body(body, limit, declared, listener);
            let read = tokio::time::timeout_at(deadline, read)
                .await
                .unwrap_or(Err(ReadError::Timeout { timeout }));
            let (bytes, _reserved) = match read {
                Ok(read) => read,
                Err(ReadError::TooLarge { limit }) => {
                    return Err(ProxyError::BodyTooLarge { limit })
                }
                Err(ReadError::Timeout { timeout }) => {
                    return Err(ProxyError::BodyTimeout { timeout })
                }
                Err(ReadError::Overloaded(_)) => {
                    return Err(ProxyError::Overloaded {
                        reason: REASON_BUFFERED_BYTES,
                    })
                }
                Err(ReadError::Failed(_)) => {
                    return Err(ProxyError::BadRequest {
                        reason: "the request body could not be read to its end".into(),
                    })
                }
            };
            // `_reserved` holds the bytes' share of the budget until the request has its answer.
            inner.call(Request::from_parts(parts, bytes)).await
        })
    }
}
