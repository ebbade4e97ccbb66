//! Accepts the shop's `x-request-id` (or the trace id of a W3C `traceparent`), or makes one, and puts it
//! on the request to the provider and on every answer to the shop.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{HeaderMap, HeaderName, HeaderValue, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::ctx::Req;

/// The request id header.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const MAX_LEN: usize = 128;

/// Sets the request id.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = SetRequestId<S>;
    fn layer(&self, inner: S) -> Self::Service {
        SetRequestId { inner }
    }
}

/// See [`RequestIdLayer`].
#[derive(Debug, Clone)]
pub struct SetRequestId<S> {
    inner: S,
}

impl<S, B, RB> Service<Req<B>> for SetRequestId<S>
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
        let id = accepted(req.http.headers()).unwrap_or_else(generate);
        req.http.headers_mut().insert(X_REQUEST_ID, id.clone());
        req.ctx.request_id = Some(id.clone());
        ResponseFuture {
            inner: self.inner.call(req),
            id: Some(id),
        }
    }
}

pin_project! {
    /// The future of [`SetRequestId`]: the answer, with the request id on it.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut resp = ready!(this.inner.poll(cx))?;
        if let Some(id) = this.id.take() {
            resp.headers_mut().insert(X_REQUEST_ID, id);
        }
        Poll::Ready(Ok(resp))
    }
}

/// The shop's id if it is usable: visible ASCII without spaces, at most 128 bytes; else the trace id of
/// a well-formed `traceparent`.
fn accepted(headers: &HeaderMap) -> Option<HeaderValue> {
    if let Some(v) = headers.get(X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= MAX_LEN && b.iter().all(|c| c.is_ascii_graphic()) {
            return Some(v.clone());
        }
    }
    let tp = headers.get(&TRACEPARENT)?.to_str().ok()?;
    let mut parts = tp.split('-');
    let (version, trace_id, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    };
    let ok = hex(version, 2)
        && version != "ff"
        && hex(trace_id, 32)
        && trace_id.bytes().any(|c| c != b'0')
        && hex(parent, 16)
        && hex(flags, 2);
    ok.then(|| HeaderValue::from_str(trace_id).ok()).flatten()
}

/// A new UUIDv4 id. Its bytes are shared from the start (one allocation): the copies that go on the
/// provider's request, the answer and the request context only count references, where a value made
/// from a `&str` would allocate again on its first copy.
fn generate() -> HeaderValue {
    let id = uuid::Uuid::new_v4();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    id.hyphenated().encode_lower(&mut buf);
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn shop_id_is_kept_when_usable() {
        assert_eq!(
            accepted(&headers(&[("x-request-id", "abc-123")])).unwrap(),
            "abc-123"
        );
        assert!(accepted(&headers(&[("x-request-id", "has space")])).is_none());
        assert!(accepted(&headers(&[("x-request-id", &"a".repeat(129))])).is_none());
    }

    #[test]
    fn traceparent_gives_its_trace_id() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            accepted(&headers(&[("traceparent", tp)])).unwrap(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let zero = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        assert!(accepted(&headers(&[("traceparent", zero)])).is_none());
        assert!(accepted(&headers(&[("traceparent", "garbage")])).is_none());
    }

    #[test]
    fn generated_ids_are_uuids_and_differ() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert!(uuid::Uuid::parse_str(a.to_str().unwrap()).is_ok());
    }
}
