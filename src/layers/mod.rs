//! The request path: one tower layer per policy. This file is the one place their order is written.
//!
//! ```text
//! shop ─▶ (server: Sensitive, context) ─▶ RequestId ─▶ Observe ─▶ Webhooks ─▶ Audit ─▶ Rescue ─▶ Route ─▶ RateLimit ─▶ Deadline ─▶ BufferBody ─▶ Forward ─▶ provider
//! ```
//! - The server (`crate::server`), in front of every listener's service, marks the shop's credentials
//!   sensitive (tower-http's `Sensitive`) so no log or HPACK table ever keeps them, and puts the
//!   request beside its context ([`Req`]: the peer and the listener), which each layer below fills.
//! - `RequestId` accepts or makes the request id first, so every answer (errors included) carries it.
//! - `Observe` writes the access log line and the request metrics for every answer, errors included.
//! - `Webhooks` takes the requests to a webhook's path off the payment path: they are verified,
//!   deduplicated and passed to the shop by [`crate::webhooks`], never routed to a provider.
//! - `Audit` puts the [`Audit`](crate::audit::Audit) handle on the request (layers below write attempt
//!   records with it) and writes one shop-request record per answer, errors included.
//! - `Rescue` turns every [`ProxyError`](crate::error::ProxyError) into a problem+json answer; below it,
//!   layers return errors, above it, only responses; it also turns a panic (a bug) into a 500.
//! - `Route` picks the route on the generation the request will run on to its end.
//! - `RateLimit` refuses requests over the route's limit before anything is read or sent.
//! - `Deadline` bounds the whole request, body read included, by the route's `timeout`.
//! - `BufferBody` reads the body up to the route's `max_body`, so later policies can re-send it.
//! - `Forward` picks the provider by health (breakers, checks, throttles, drains, quotas), sends the
//!   request, feeds the outcome back into the provider's health, and streams the answer back.

mod audit;
mod buffer_body;
mod deadline;
mod forward;
mod observe;
mod rate_limit;
mod request_id;
pub mod rescue;
mod route;
mod webhooks;

use std::convert::Infallible;

use http::Response;
use hyper::body::Incoming;
use tower::{Service, ServiceBuilder};

pub use audit::{AuditLayer, AuditShop};
pub use buffer_body::{BufferBody, BufferBodyLayer};
pub use deadline::{Deadline, DeadlineLayer};
pub use forward::{resend, Forward};
pub use observe::{Observe, ObserveLayer};
pub use rate_limit::{RateLimit, RateLimitLayer};
pub use request_id::{RequestIdLayer, SetRequestId, X_REQUEST_ID};
pub use rescue::{Rescue, RescueLayer};
pub use route::{RouteLayer, Router};
pub use webhooks::{WebhookIngress, WebhookLayer};

use crate::audit::Audit;
use crate::body::ProxyBody;
use crate::ctx::Req;
use crate::generation::Current;
use crate::metrics::Metrics;
use crate::webhooks::Webhooks;

/// Builds the shop-facing service over the generation in use.
pub fn stack(
    current: Current,
    metrics: Metrics,
    audit: Audit,
    webhooks: std::sync::Arc<Webhooks>,
) -> impl Service<
    Req<Incoming>,
    Response = Response<ProxyBody>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
       + Send
       + 'static {
    ServiceBuilder::new()
        .layer(RequestIdLayer)
        .layer(ObserveLayer::new(metrics.clone()))
        .layer(WebhookLayer::new(current.clone(), webhooks, None))
        .layer(AuditLayer::new(audit))
        .layer(RescueLayer::new(metrics.clone()))
        .layer(RouteLayer::new(current))
        .layer(RateLimitLayer::new(metrics.clone()))
        .layer(DeadlineLayer)
        .layer(BufferBodyLayer)
        .service(Forward::new(metrics))
}

/// Builds the service of a webhook listener: the webhooks whose `listen` is `listen`, and 404 for
/// anything else (a webhook listener never routes to a provider).
pub fn webhook_stack(
    current: Current,
    metrics: Metrics,
    webhooks: std::sync::Arc<Webhooks>,
    listen: std::net::SocketAddr,
) -> impl Service<
    Req<Incoming>,
    Response = Response<ProxyBody>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
       + Send
       + 'static {
    ServiceBuilder::new()
        .layer(RequestIdLayer)
        .layer(ObserveLayer::new(metrics))
        .layer(WebhookLayer::new(current, webhooks, Some(listen)))
        .service(tower::service_fn(|req: Req<Incoming>| {
            let id = req.ctx.request_id;
            std::future::ready(Ok::<_, Infallible>(rescue::problem(
                crate::error::ErrorKind::NoRoute,
                "no webhook is served at this path",
                id.as_ref(),
            )))
        }))
}

/// A boxed, sendable future. The layers' own futures are named (one allocation and one dynamic call
/// less per layer and payment); a box is kept where a future must be movable to a task of its own
/// (a keyed operation) or sits off the payment path (a webhook's handling, an audit record, a
/// config reload).
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;
