//! Reads the request body in full, up to the route's `max_body`, so that it can be sent again.
//!
//! A `Content-Length` over the limit is refused before a byte is read; a body that grows past it while
//! being read is refused as soon as it does. Either way the shop gets 413 and nothing reaches a provider.
//!
//! The bytes are reserved from the process-wide buffer budget ([`crate::budget`]) as they arrive and
//! stay reserved until the request ends: a body the budget has no room for is answered 503
//! `overloaded`, one that does not arrive by the listener's body deadline (or within the route's
//! `timeout`, whichever comes first) 408 `body_timeout`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::{Layer, Service};

use crate::body::BoxError;
use crate::budget::{read_body, ReadBody, ReadError, Reservation, REASON_BUFFERED_BYTES};
use crate::ctx::{Req, RequestCtx};
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

impl<S, B> Service<Req<B>> for BufferBody<S>
where
    S: Service<Req<Bytes>, Error = ProxyError> + Clone,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req<B>) -> Self::Future {
        // The ready clone is the one we call later; the fresh clone stays behind (tower's idiom).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let Req { http, ctx } = req;
        let Some((limit, deadline, timeout)) = ctx
            .route
            .as_ref()
            .map(|c| (c.route.max_body, c.deadline, c.route.timeout))
        else {
            let err = ProxyError::Internal("body read before routing".into());
            return ResponseFuture {
                state: State::Refused { err: Some(err) },
            };
        };
        let declared = http
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let (parts, body) = http.into_parts();
        let read = read_body(body, limit, declared, ctx.listener.as_ref());
        ResponseFuture {
            state: State::Reading {
                read,
                // The route's time bounds the body too: a body still arriving when it runs out (a
                // slow upload that never idles long enough for the listener's deadline) is the
                // shop's 408, not a 504 (nothing was sent to a provider).
                deadline: tokio::time::sleep_until(deadline),
                timeout,
                rest: Some((parts, ctx)),
                inner: Some(inner),
            },
        }
    }
}

pin_project! {
    /// The future of [`BufferBody`]: the body read, then the request passed on with it.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Req<Bytes>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Req<Bytes>>,
    {
        // Reading the body, within the route's deadline.
        Reading {
            #[pin]
            read: ReadBody<B>,
            #[pin]
            deadline: Sleep,
            timeout: Duration,
            rest: Option<(http::request::Parts, RequestCtx)>,
            inner: Option<S>,
        },
        // Passed on; `_reserved` holds the bytes' share of the budget until the request has its
        // answer.
        Called {
            #[pin]
            answer: S::Future,
            _reserved: Option<Reservation>,
        },
        // Refused before anything was read; `None` once returned.
        Refused {
            err: Option<ProxyError>,
        },
    }
}

impl<S, B> Future for ResponseFuture<S, B>
where
    S: Service<Req<Bytes>, Error = ProxyError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<S::Response, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let (bytes, reserved, (parts, ctx), mut inner) = match state.as_mut().project() {
                StateProj::Reading {
                    read,
                    deadline,
                    timeout,
                    rest,
                    inner,
                } => {
                    let read = match read.poll(cx) {
                        Poll::Ready(read) => read,
                        Poll::Pending => match deadline.poll(cx) {
                            Poll::Ready(()) => Err(ReadError::Timeout { timeout: *timeout }),
                            Poll::Pending => return Poll::Pending,
                        },
                    };
                    let (bytes, reserved) = match read {
                        Ok(read) => read,
                        Err(e) => return Poll::Ready(Err(refusal(e))),
                    };
                    match (rest.take(), inner.take()) {
                        (Some(rest), Some(inner)) => (bytes, reserved, rest, inner),
                        _ => return Poll::Pending, // polled again after its answer
                    }
                }
                StateProj::Called { answer, .. } => return answer.poll(cx),
                StateProj::Refused { err } => {
                    return match err.take() {
                        Some(err) => Poll::Ready(Err(err)),
                        None => Poll::Pending,
                    }
                }
            };
            let answer = inner.call(Req {
                http: Request::from_parts(parts, bytes),
                ctx,
            });
            state.set(State::Called {
                answer,
                _reserved: reserved,
            });
        }
    }
}

/// The shop's answer to a body that could not be read.
fn refusal(e: ReadError) -> ProxyError {
    match e {
        ReadError::TooLarge { limit } => ProxyError::BodyTooLarge { limit },
        ReadError::Timeout { timeout } => ProxyError::BodyTimeout { timeout },
        ReadError::Overloaded(_) => ProxyError::Overloaded {
            reason: REASON_BUFFERED_BYTES,
        },
        ReadError::Failed(_) => ProxyError::BadRequest {
            reason: "the request body could not be read to its end".into(),
        },
    }
}
