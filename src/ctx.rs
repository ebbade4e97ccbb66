//! What the layers share about one request: its [`RequestCtx`], carried beside the request in a
//! [`Req`], not in `http::Extensions`.
//!
//! The server puts a [`RequestCtx`] with the connection's peer and listener beside every request it
//! reads, and each layer fills its field in place as the request goes down the stack. It is not an
//! `http::Extensions` value: the first insert into a request's extensions costs three allocations
//! (the map's box, its table and the value's box), and every read hashes a `TypeId` (issue 16).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{HeaderValue, Request};

use crate::audit::Audit;
use crate::budget::ListenerCtx;
use crate::config::Route;
use crate::error::ErrorKind;
use crate::generation::Generation;
use crate::meters::RouteMeter;

/// What the layers know about one request: carried beside it in a [`Req`], filled in place as the
/// request goes down the stack. Each field is `None` until the layer that knows it sets it.
#[derive(Clone, Default)]
pub struct RequestCtx {
    /// The shop connection's peer address (the server).
    pub client: Option<SocketAddr>,
    /// The listener that accepted the request: its body deadline, the buffer budget, the drain's
    /// cutoff (the server).
    pub listener: Option<ListenerCtx>,
    /// The request id, as accepted from the shop or generated (`RequestId`).
    pub request_id: Option<HeaderValue>,
    /// What the access log and metrics read once the answer is ready (`Observe`).
    pub info: Option<Arc<RequestInfo>>,
    /// The config generation the request runs on, loaded once where it enters the stack
    /// (`Webhooks`): every layer after it sees the same generation even when a reload lands
    /// meanwhile. The router takes it out and keeps it in [`RouteCtx`].
    pub entered: Option<Arc<Generation>>,
    /// The audit trail handle, for the layers below that write attempt records (`Audit`).
    pub audit: Option<Audit>,
    /// The matched route (`Route`).
    pub route: Option<RouteCtx>,
}

/// A request on its way down the stack, with its context beside it.
#[derive(Debug)]
pub struct Req<B> {
    /// The shop's request.
    pub http: Request<B>,
    /// What the layers know about it.
    pub ctx: RequestCtx,
}

impl<B> Req<B> {
    /// `http` with an empty context (a request that no server read: tests, the resolver).
    pub fn new(http: Request<B>) -> Self {
        Self {
            http,
            ctx: RequestCtx::default(),
        }
    }
}

impl std::fmt::Debug for RequestCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestCtx")
            .field("client", &self.client)
            .field("listener", &self.listener)
            .field("request_id", &self.request_id)
            .field("info", &self.info)
            .field("entered", &self.entered.as_ref().map(|g| g.number))
            .field("audit", &self.audit.as_ref().map(Audit::is_enabled))
            .field("route", &self.route)
            .finish()
    }
}

/// What is learned about a request as it goes through the stack, read by the access log and metrics
/// once the response is ready. Shared (`Arc`) so that an inner layer can fill it even when it answers
/// with an error.
#[derive(Debug, Default)]
pub struct RequestInfo {
    inner: Mutex<InfoFields>,
}

#[derive(Debug, Default, Clone)]
struct InfoFields {
    route: Option<Arc<str>>,
    meter: Option<Arc<RouteMeter>>,
    provider: Option<Arc<str>>,
    error: Option<ErrorKind>,
    attempts: u32,
    maybe_sent: bool,
    idempotency_key: Option<Arc<str>>,
    state_degraded: bool,
}

impl RequestInfo {
    fn with<R>(&self, f: impl FnOnce(&mut InfoFields) -> R) -> R {
        // A poisoned lock only means a panic elsewhere mid-update; the fields stay usable.
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Records the name the request is counted under when it matched no route (a webhook's).
    pub fn set_route(&self, route: Arc<str>) {
        self.with(|f| {
            f.route = Some(route);
            f.meter = None;
        });
    }

    /// Records the matched route, by its meter (which holds its name).
    pub fn set_route_meter(&self, meter: Arc<RouteMeter>) {
        self.with(|f| {
            f.route = Some(Arc::clone(meter.name()));
            f.meter = Some(meter);
        });
    }

    /// The route, its meter and the provider, read together.
    pub fn labels(&self) -> Labels {
        self.with(|f| Labels {
            route: f.route.clone(),
            meter: f.meter.clone(),
            provider: f.provider.clone(),
        })
    }

    /// Records the provider that answered (or was last tried).
    pub fn set_provider(&self, provider: Arc<str>) {
        self.with(|f| f.provider = Some(provider));
    }

    /// Records that the proxy answered with an error of this kind.
    pub fn set_error(&self, kind: ErrorKind) {
        self.with(|f| f.error = Some(kind));
    }

    /// Counts an attempt sent to a provider.
    pub fn add_attempt(&self) {
        self.with(|f| f.attempts += 1);
    }

    /// Notes that the store of payment state was degraded for this keyed request: it went to the
    /// first-priority provider only, and its answer, the proxy's own included, says so.
    pub fn set_state_degraded(&self) {
        self.with(|f| f.state_degraded = true);
    }

    /// Whether the store of payment state was degraded for this request (its answer says so).
    pub fn state_degraded(&self) -> bool {
        self.with(|f| f.state_degraded)
    }

    /// Notes whether an attempt may have reached a provider without a settled outcome: the attempt
    /// loop's answer, for the deadline layer when it cuts the loop short (the loop's own errors carry
    /// it, see [`crate::error::ProxyError::reached`]).
    pub fn set_maybe_sent(&self, maybe: bool) {
        self.with(|f| f.maybe_sent = maybe);
    }

    /// Records the operation's idempotency key (the shop's, or the one the proxy made), for the
    /// audit's shop-request record (set only when the audit is enabled).
    pub fn set_idempotency_key(&self, key: Arc<str>) {
        self.with(|f| f.idempotency_key = Some(key));
    }

    /// The operation's idempotency key, when it has one.
    pub fn idempotency_key(&self) -> Option<Arc<str>> {
        self.with(|f| f.idempotency_key.clone())
    }

    /// Attempts sent so far.
    pub fn attempts(&self) -> u32 {
        self.with(|f| f.attempts)
    }

    /// Whether an attempt may have reached a provider without a settled outcome.
    pub fn maybe_sent(&self) -> bool {
        self.with(|f| f.maybe_sent)
    }

    /// The matched route.
    pub fn route(&self) -> Option<Arc<str>> {
        self.with(|f| f.route.clone())
    }

    /// The provider.
    pub fn provider(&self) -> Option<Arc<str>> {
        self.with(|f| f.provider.clone())
    }

    /// The error kind, when the proxy answered itself.
    pub fn error(&self) -> Option<ErrorKind> {
        self.with(|f| f.error)
    }
}

/// What a request is counted under: see [`RequestInfo::labels`].
#[derive(Debug, Clone)]
pub struct Labels {
    /// The route (or webhook) name.
    pub route: Option<Arc<str>>,
    /// The route's meter, when the request matched a route of the config.
    pub meter: Option<Arc<RouteMeter>>,
    /// The provider that answered (or was last tried).
    pub provider: Option<Arc<str>>,
}

/// The route a request matched, with the generation it matched in.
#[derive(Debug, Clone)]
pub struct RouteCtx {
    /// The route's metric handles in that generation.
    pub meter: Arc<RouteMeter>,
    /// The generation the request runs on, start to end.
    pub generation: Arc<Generation>,
    /// The matched route.
    pub route: Arc<Route>,
    /// When the route's `timeout` runs out: computed once where the route is picked, and the one
    /// instant both the deadline layer and the attempt loop bound the request by.
    pub deadline: tokio::time::Instant,
}

impl RouteCtx {
    /// `route` of `generation`, bounded by `deadline`, with the route's meter.
    pub fn new(
        generation: Arc<Generation>,
        route: Arc<Route>,
        deadline: tokio::time::Instant,
    ) -> Self {
        Self {
            meter: generation.meters.route(&route),
            generation,
            route,
            deadline,
        }
    }
}
