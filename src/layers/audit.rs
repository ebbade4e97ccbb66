//! Puts the [`Audit`] handle on every shop request (for the layers below that write attempt records)
//! and writes one [`ShopRequestRecord`] per shop request: route, provider, status, latency, idempotency
//! key, provider request id, replay flag and, with `bodies: redacted`, both bodies.
//!
//! Bodies are copied as they stream through (never buffered for the audit's sake); the record is queued
//! when the answer's body has ended (or, without bodies, at the response head). Errors are answers here:
//! this layer sits above `Rescue`, so the shop's problem+json answers are recorded too.

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::future::Either;
use http::{HeaderMap, Request, Response};
use tower::{Layer, Service};

use super::BoxFuture;
use crate::audit::{
    content_type, provider_request_id, Audit, Capture, Captured, RecordedBody, ShopRequestRecord,
};
use crate::body::ProxyBody;
use crate::ctx::Req;

/// The header a shop (or the proxy) names the idempotency key with, unless a route says otherwise.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// Records shop requests.
#[derive(Clone)]
pub struct AuditLayer {
    audit: Audit,
}

impl AuditLayer {
    /// A layer recording into `audit` (which may be disabled).
    pub fn new(audit: Audit) -> Self {
        Self { audit }
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = AuditShop<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuditShop {
            inner,
            audit: self.audit.clone(),
        }
    }
}

/// See [`AuditLayer`].
#[derive(Clone)]
pub struct AuditShop<S> {
    inner: S,
    audit: Audit,
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

impl<S, B> Service<Req<B>> for AuditShop<S>
where
    S: Service<Req<Capture<B>>, Response = Response<ProxyBody>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    /// The answer as it is when the audit is off (no allocation); with its record when it is on
    /// (boxed).
    type Future = Either<S::Future, BoxFuture<Result<Response<ProxyBody>, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req<B>) -> Self::Future {
        let audit = self.audit.clone();
        let Req { http, mut ctx } = req;
        ctx.audit = Some(audit.clone());
        let (parts, body) = http.into_parts();
        if !audit.is_enabled() {
            return Either::Left(self.inner.call(Req {
                http: Request::from_parts(parts, Capture::plain(body)),
                ctx,
            }));
        }
        let started = Instant::now();
        let timestamp = audit.now();
        let request_slot = audit
            .keeps_bodies()
            .then(|| Captured::slot(content_type(&parts.headers), audit.max_body()));
        let info = ctx.info.clone();
        let request_id = ctx
            .request_id
            .as_ref()
            .and_then(|r| r.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let method = parts.method.clone();
        let path = parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
        let key = header_text(&parts.headers, IDEMPOTENCY_KEY);
        let body = Capture::new(body, request_slot.clone(), None);
        let fut = self.inner.call(Req {
            http: Request::from_parts(parts, body),
            ctx,
        });
        let recorded = Box::pin(async move {
            let Ok(resp) = fut.await;
            let latency = started.elapsed();
            let (route, provider, error, operation_key) = match &info {
                Some(i) => (
                    i.route(),
                    i.provider(),
                    i.error().map(|k| k.as_str()),
                    i.idempotency_key(),
                ),
                None => (None, None, None, None),
            };
            let headers = resp.headers();
            let record = ShopRequestRecord {
                timestamp,
                request_id,
                route,
                provider,
                method,
                path,
                status: resp.status().as_u16(),
                error,
                latency,
                // The operation's key (in the route's own header, or made by the proxy); else the
                // shop's `Idempotency-Key` on a request that kept no record.
                idempotency_key: operation_key.map(|k| k.to_string()).or(key),
                provider_request_id: provider_request_id(headers),
                replayed: headers
                    .get(IDEMPOTENT_REPLAYED)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true")),
                request_body: None,
                response_body: None,
            };
            let response_type = content_type(headers);
            let (parts, body) = resp.into_parts();
            let body = audit.record_when_body_ends(body, response_type, move |response_body| {
                let request_body: Option<RecordedBody> = request_slot.as_ref().map(Captured::take);
                ShopRequestRecord {
                    request_body,
                    response_body,
                    ..record
                }
                .into()
            });
            Ok(Response::from_parts(parts, body))
        });
        Either::Right(recorded)
    }
}
