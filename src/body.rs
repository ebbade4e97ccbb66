//! The one response body type every part of the proxy answers with, and helpers to build small bodies.

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};

/// A boxed error, as hyper and tower pass them around.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response the proxy writes: a provider's streamed body or one the proxy made.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `bytes` in full.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> ProxyBody {
    full(Bytes::new())
}
