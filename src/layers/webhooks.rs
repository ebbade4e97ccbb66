//! Sends requests to a webhook's path to the webhook runtime ([`crate::webhooks`]) instead of the
//! routes. On the shop listener it serves the webhooks without a `listen` of their own; on a webhook
//! listener, only those with that `listen`, and everything else is 404.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::Response;
use http_body::Body;
use tower::{Layer, Service};

use super::BoxFuture;
use crate::body::{BoxError, ProxyBody};
use crate::ctx::Req;
use crate::generation::Current;
use crate::webhooks::{Origin, Webhooks};

/// Serves webhooks on one listener.
#[derive(Clone)]
pub struct WebhookLayer {
    current: Current,
    webhooks: Arc<Webhooks>,
    listener: Option<SocketAddr>,
}

impl WebhookLayer {
    /// Serves the webhooks of `current` whose `listen` is `listener` (`None`: the shop listener).
    pub fn new(current: Current, webhooks: Arc<Webhooks>, listener: Option<SocketAddr>) -> Self {
        Self {
            current,
            webhooks,
            listener,
        }
    }
}

impl<S> Layer<S> for WebhookLayer {
    type Service = WebhookIngress<S>;
    fn layer(&self, inner: S) -> Self::Service {
        WebhookIngress {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`WebhookLayer`].
#[derive(Clone)]
pub struct WebhookIngress<S> {
    inner: S,
    layer: WebhookLayer,
}

impl<S, B> Service<Req<B>> for WebhookIngress<S>
where
    S: Service<Req<B>, Response = Response<ProxyBody>, Error = Infallible>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    /// A request for the routes goes on unboxed; a webhook's handling is boxed (it is off the
    /// payment path).
    type Future = Either<S::Future, BoxFuture<Result<Response<ProxyBody>, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Req<B>) -> Self::Future {
        let generation = self.layer.current.load_full();
        let hook = generation
            .snapshot
            .webhooks
            .iter()
            .find(|w| w.listen == self.layer.listener && w.path == req.http.uri().path())
            .cloned();
        let Some(hook) = hook else {
            req.ctx.entered = Some(generation);
            return Either::Left(self.inner.call(req));
        };
        let Req { http, ctx } = req;
        if let Some(info) = &ctx.info {
            info.set_route(Arc::clone(&hook.name));
        }
        let origin = Origin {
            peer: ctx.client.map(|a| a.ip()),
            request_id: ctx
                .request_id
                .as_ref()
                .and_then(|r| r.to_str().ok())
                .unwrap_or("")
                .to_owned(),
            listener: ctx.listener,
        };
        let webhooks = Arc::clone(&self.layer.webhooks);
        Either::Right(Box::pin(async move {
            Ok(webhooks.handle(hook, http, origin).await)
        }))
    }
}
