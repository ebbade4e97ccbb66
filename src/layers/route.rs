//! Picks the route for a request, on the config generation the request will run on to its end.

use std::sync::Arc;
use std::task::{Context, Poll};

use std::borrow::Cow;

use http::uri::PathAndQuery;
use http::{header, Request, Uri};
use tower::{Layer, Service};

use crate::ctx::{Req, RouteCtx};
use crate::error::ProxyError;
use crate::generation::Current;
use crate::routing::path;

/// Matches routes.
#[derive(Clone)]
pub struct RouteLayer {
    current: Current,
}

impl RouteLayer {
    /// A layer matching against the generation in `current` at the time of each request.
    pub fn new(current: Current) -> Self {
        Self { current }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Router<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Router {
            inner,
            current: Arc::clone(&self.current),
        }
    }
}

/// See [`RouteLayer`].
#[derive(Clone)]
pub struct Router<S> {
    inner: S,
    current: Current,
}

impl<S, B> Service<Req<B>> for Router<S>
where
    S: Service<Req<B>, Error = ProxyError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = futures_util::future::Either<
        S::Future,
        std::future::Ready<Result<S::Response, ProxyError>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req<B>) -> Self::Future {
        use futures_util::future::Either;
        let Req {
            http: mut req,
            mut ctx,
        } = req;
        let generation = match ctx.entered.take() {
            Some(g) => g,
            None => self.current.load_full(),
        };
        if let Err(e) = crate::routing::admissible(req.method(), req.version(), req.headers()) {
            return Either::Right(std::future::ready(Err(e)));
        }
        // Routes match, and providers get, the path with its dot segments resolved, so `..` never
        // leaves a route's prefix; encoded dots and slashes are refused.
        match normalized_uri(req.uri()) {
            Ok(None) => {}
            Ok(Some(uri)) => *req.uri_mut() = uri,
            Err(reason) => {
                return Either::Right(std::future::ready(Err(ProxyError::BadRequest { reason })))
            }
        }
        // The host is read (and lowercased) only when some route matches on it.
        let host = generation
            .snapshot
            .routes
            .iter()
            .any(|r| r.matcher.host.is_some())
            .then(|| request_host(&req))
            .flatten();
        let found = generation.snapshot.routes.iter().find(|r| {
            r.matcher.matches(
                req.method(),
                req.uri().path(),
                host.as_deref(),
                req.headers(),
            )
        });
        let Some(route) = found.cloned() else {
            return Either::Right(std::future::ready(Err(ProxyError::NoRoute {
                method: req.method().clone(),
                path: req.uri().path().to_owned(),
            })));
        };
        let deadline = tokio::time::Instant::now() + route.timeout;
        let route = RouteCtx::new(generation, route, deadline);
        if let Some(info) = &ctx.info {
            info.set_route_meter(Arc::clone(&route.meter));
        }
        ctx.route = Some(route);
        Either::Left(self.inner.call(Req { http: req, ctx }))
    }
}

/// The request's URI with its path normalised (`routing::path`), `None` when it is already, or why
/// it is refused.
fn normalized_uri(uri: &Uri) -> Result<Option<Uri>, String> {
    let path = match path::normalize(uri.path()) {
        Ok(Cow::Borrowed(_)) => return Ok(None),
        Ok(Cow::Owned(path)) => path,
        Err(e) => return Err(e.to_string()),
    };
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        PathAndQuery::try_from(pq)
            .map_err(|_| "the request path cannot be forwarded".to_owned())?,
    );
    Uri::from_parts(parts)
        .map(Some)
        .map_err(|_| "the request path cannot be forwarded".to_owned())
}

/// The host the shop addressed, lowercase and without port: the URI authority (HTTP/2) or `Host`.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    let raw = match req.uri().host() {
        Some(h) => h.to_owned(),
        None => {
            let h = req.headers().get(header::HOST)?.to_str().ok()?;
            let auth: http::uri::Authority = h.parse().ok()?;
            auth.host().to_owned()
        }
    };
    Some(raw.to_ascii_lowercase())
}
