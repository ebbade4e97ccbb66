//! Small request-context types that layers share through request extensions.

use std::sync::{Arc, Mutex};

use http::HeaderValue;

use crate::config::Route;
use crate::error::ErrorKind;
use crate::generation::Generation;

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

    /// Records the matched route.
    pub fn set_route(&self, route: Arc<str>) {
        self.with(|f| f.route = Some(route));
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

    /// Records the operation's idempotency key (the shop's, or the one the proxy made).
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

/// The request id, as accepted from the shop or generated.
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

/// The config generation a request runs on, loaded once where it enters the stack: one `ArcSwap`
/// load per request, and every layer after it sees the same generation even when a reload lands
/// meanwhile. The router takes it out and keeps it in [`RouteCtx`].
#[derive(Debug, Clone)]
pub struct Entered(pub Arc<Generation>);

/// The route a request matched, with the generation it matched in.
#[derive(Debug, Clone)]
pub struct RouteCtx {
    /// The generation the request runs on, start to end.
    pub generation: Arc<Generation>,
    /// The matched route.
    pub route: Arc<Route>,
    /// When the route's `timeout` runs out: computed once where the route is picked, and the one
    /// instant both the deadline layer and the attempt loop bound the request by.
    pub deadline: tokio::time::Instant,
}

/// The shop connection's peer address.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::SocketAddr);
