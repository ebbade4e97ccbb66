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
//! - **Detached.** A keyed operation runs inside the shop's request, and moves to a task of its own if
//!   the shop hangs up mid-payment: the provider call still completes and its answer is stored for the
//!   shop's retry.
//!
//! One concern per file: `operation` (the keyed operation: claim, settle, replay, the answer),
//! `attempts` (the attempt loop), `decide` (what comes after an attempt: a pure function of the
//! operation's state, the attempt and `now`), `handover` (moving an operation to a task).

mod attempts;
mod decide;
mod handover;
mod operation;

use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use tower::Service;

use super::BoxFuture;
use crate::body::ProxyBody;
use crate::ctx::Req;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::upstream::{SendAttempt, UpstreamClient};

use handover::Detachable;
use operation::Operation;

/// Sends requests to providers, each attempt through `S`.
#[derive(Clone)]
pub struct Forward<S = UpstreamClient> {
    metrics: Metrics,
    sender: S,
}

impl Forward {
    /// A forwarder over the providers' own clients, recording in `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self::with_sender(metrics, UpstreamClient)
    }
}

impl<S: SendAttempt + Clone> Forward<S> {
    /// A forwarder sending every attempt through `sender`.
    pub fn with_sender(metrics: Metrics, sender: S) -> Self {
        Self { metrics, sender }
    }
}

/// The resolver's resend of an operation whose outcome is unknown (`crate::resolver`): the kept
/// request, run as a shop's retry of its key would be (claimed, pinned, one attempt, settled), through
/// the providers' own clients.
pub async fn resend(
    ctx: crate::ctx::RouteCtx,
    kept: &crate::idempotency::KeptRequest,
    credential: Option<http::HeaderValue>,
    metrics: Metrics,
    audit: crate::audit::Audit,
    request_id: String,
) -> Result<Response<ProxyBody>, ProxyError> {
    Operation::resend(
        ctx,
        kept,
        credential,
        metrics,
        audit,
        UpstreamClient,
        request_id,
    )?
    .run()
    .await
}

impl<S: SendAttempt + Clone> Service<Req<Bytes>> for Forward<S> {
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req<Bytes>) -> Self::Future {
        let op = match Operation::new(req, self.metrics.clone(), self.sender.clone()) {
            Ok(op) => op,
            Err(e) => return ResponseFuture(Inner::Refused(Some(e))),
        };
        if op.is_keyed() {
            // The operation ends (and its record is settled) even if the shop hangs up.
            ResponseFuture(Inner::Keyed(Detachable::new(Box::pin(op.run()))))
        } else {
            ResponseFuture(Inner::Unkeyed(Box::pin(op.run())))
        }
    }
}

/// The future of [`Forward`]: named rather than boxed, so that a keyed operation (already boxed, to
/// be movable to a task of its own) costs one allocation, not two.
pub struct ResponseFuture(Inner);

enum Inner {
    /// A keyed operation, detached if the shop hangs up.
    Keyed(Detachable<Result<Response<ProxyBody>, ProxyError>>),
    /// An operation without a key.
    Unkeyed(BoxFuture<Result<Response<ProxyBody>, ProxyError>>),
    /// The request was refused before any operation began; `None` once returned.
    Refused(Option<ProxyError>),
}

impl std::future::Future for ResponseFuture {
    type Output = Result<Response<ProxyBody>, ProxyError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Every variant is `Unpin` (the operations are boxed).
        match &mut self.get_mut().0 {
            Inner::Keyed(op) => std::pin::Pin::new(op).poll(cx),
            Inner::Unkeyed(op) => op.as_mut().poll(cx),
            Inner::Refused(e) => match e.take() {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }
}
