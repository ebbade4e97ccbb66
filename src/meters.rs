//! The request path's metric handles, resolved once per route and provider per config generation.
//!
//! A keyed payment counts itself in about six series (`requests_total`, `request_duration_seconds`,
//! `upstream_requests_in_flight`, `attempt_duration_seconds`, `attempts_total`, `idempotency_total`).
//! Finding a series by its label values (`with_label_values`) hashes every value and takes the
//! family's lock, each time; here the router finds the route's [`RouteMeter`] once per request, and
//! the layers count through the handles it holds for each of the route's providers, indexed by the
//! closed label values (outcome classes, idempotency results, the common status codes).
//!
//! A handle is resolved on its first use, not when the generation is built: a series appears on
//! `/metrics` when it is first counted, exactly as it did with a lookup per use, and the routes no
//! request uses cost nothing (a config may hold thousands). Handles are never carried over to the
//! next generation: a reload drops the series of the routes and providers it removed
//! ([`Metrics::forget_names_not_in`]), and the new generation resolves its own. Values outside the
//! closed sets (a rare status code, a provider a payment is pinned to that is not one of the route's
//! targets) are looked up by label as before.

use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use http::StatusCode;
use prometheus::{Histogram, IntCounter, IntGauge};

use crate::config::{NameMap, Route};
use crate::metrics::{Metrics, NONE};
use crate::outcome::OutcomeClass;

/// The status codes whose `requests_total` series have a handle; the others are looked up.
const CODES: [u16; 18] = [
    200, 201, 202, 204, 400, 401, 402, 403, 404, 408, 409, 413, 422, 429, 500, 502, 503, 504,
];

/// The `result` label values of `switchyard_idempotency_total` that have a handle.
const IDEMPOTENCY_RESULTS: [&str; 6] = [
    "new",
    "conflict",
    "mismatch",
    "replayed",
    "resumed",
    "not_stored",
];

/// Every outcome class, in the order of their handles.
const CLASSES: [OutcomeClass; 4] = [
    OutcomeClass::NotSent,
    OutcomeClass::NotProcessed,
    OutcomeClass::Unknown,
    OutcomeClass::Processed,
];

/// The meters of one generation's routes, each made on the route's first request.
pub struct Meters {
    metrics: Metrics,
    routes: RwLock<NameMap<Arc<RouteMeter>>>,
}

impl Meters {
    /// No route's meter yet; they will count into `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            metrics: metrics.clone(),
            routes: RwLock::default(),
        }
    }

    /// The meter of `route` (one of this generation's routes).
    pub fn route(&self, route: &Route) -> Arc<RouteMeter> {
        // A poisoned lock only means a panic elsewhere mid-insert; the map stays usable.
        if let Some(m) = self
            .routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&*route.name)
        {
            return Arc::clone(m);
        }
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        let m = routes
            .entry(Arc::clone(&route.name))
            .or_insert_with(|| Arc::new(RouteMeter::new(&self.metrics, route)));
        Arc::clone(m)
    }
}

impl std::fmt::Debug for Meters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let routes = self
            .routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("Meters").field("routes", &routes).finish()
    }
}

/// The handles of one route: for each of its providers, and for no provider (`none`: the proxy
/// answered before any attempt).
pub struct RouteMeter {
    metrics: Metrics,
    name: Arc<str>,
    none: ProviderMeter,
    providers: Box<[ProviderMeter]>,
    idempotency: [OnceLock<IntCounter>; IDEMPOTENCY_RESULTS.len()],
}

/// The handles of one (route, provider) pair.
struct ProviderMeter {
    name: Arc<str>,
    requests: [OnceLock<IntCounter>; CODES.len()],
    request_duration: OnceLock<Histogram>,
    attempts: [OnceLock<IntCounter>; CLASSES.len()],
    attempt_duration: OnceLock<Histogram>,
    in_flight: OnceLock<IntGauge>,
}

impl ProviderMeter {
    fn new(name: Arc<str>) -> Self {
        Self {
            name,
            requests: Default::default(),
            request_duration: OnceLock::new(),
            attempts: Default::default(),
            attempt_duration: OnceLock::new(),
            in_flight: OnceLock::new(),
        }
    }
}

impl RouteMeter {
    fn new(metrics: &Metrics, route: &Route) -> Self {
        let mut providers: Vec<ProviderMeter> = Vec::with_capacity(route.targets.len());
        for t in &route.targets {
            if !providers.iter().any(|p| p.name == t.provider) {
                providers.push(ProviderMeter::new(Arc::clone(&t.provider)));
            }
        }
        Self {
            metrics: metrics.clone(),
            name: Arc::clone(&route.name),
            none: ProviderMeter::new(Arc::from(NONE)),
            providers: providers.into_boxed_slice(),
            idempotency: Default::default(),
        }
    }

    /// The route's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    fn provider(&self, provider: Option<&str>) -> Option<&ProviderMeter> {
        match provider {
            None => Some(&self.none),
            Some(p) => self.providers.iter().find(|m| &*m.name == p),
        }
    }

    /// Counts a request answered `status` after `elapsed`, by `provider` (`None`: the proxy answered
    /// before any attempt): `switchyard_requests_total` and `switchyard_request_duration_seconds`.
    pub fn request(&self, provider: Option<&str>, status: StatusCode, elapsed: Duration) {
        let f = &self.metrics;
        let Some(p) = self.provider(provider) else {
            let labels = [&*self.name, provider.unwrap_or(NONE)];
            f.requests_total
                .with_label_values(&[labels[0], labels[1], status.as_str()])
                .inc();
            f.request_duration_seconds
                .with_label_values(&labels)
                .observe(elapsed.as_secs_f64());
            return;
        };
        let count = || {
            f.requests_total
                .with_label_values(&[&*self.name, &*p.name, status.as_str()])
        };
        match CODES.iter().position(|&c| c == status.as_u16()) {
            Some(i) => p.requests[i].get_or_init(count).inc(),
            None => count().inc(),
        }
        p.request_duration
            .get_or_init(|| {
                f.request_duration_seconds
                    .with_label_values(&[&*self.name, &*p.name])
            })
            .observe(elapsed.as_secs_f64());
    }

    /// `provider`'s gauge of requests in flight (`switchyard_upstream_requests_in_flight`, labelled
    /// by provider only).
    pub fn in_flight(&self, provider: &str) -> IntGauge {
        let f = &self.metrics;
        match self.provider(Some(provider)) {
            Some(p) => p
                .in_flight
                .get_or_init(|| f.upstream_requests_in_flight.with_label_values(&[provider]))
                .clone(),
            None => f.upstream_requests_in_flight.with_label_values(&[provider]),
        }
    }

    /// Counts an attempt at `provider` that ended in `class` after `latency`:
    /// `switchyard_attempt_duration_seconds` and `switchyard_attempts_total`.
    pub fn attempt(&self, provider: &str, class: OutcomeClass, latency: Duration) {
        let f = &self.metrics;
        let Some(p) = self.provider(Some(provider)) else {
            f.attempt_duration_seconds
                .with_label_values(&[&*self.name, provider])
                .observe(latency.as_secs_f64());
            f.attempts_total
                .with_label_values(&[&*self.name, provider, class.as_str()])
                .inc();
            return;
        };
        p.attempt_duration
            .get_or_init(|| {
                f.attempt_duration_seconds
                    .with_label_values(&[&*self.name, provider])
            })
            .observe(latency.as_secs_f64());
        let i = CLASSES.iter().position(|&c| c == class).unwrap_or(0);
        p.attempts[i]
            .get_or_init(|| {
                f.attempts_total
                    .with_label_values(&[&*self.name, provider, class.as_str()])
            })
            .inc();
    }

    /// Counts a keyed request's `result` in `switchyard_idempotency_total`.
    pub fn idempotency(&self, result: &str) {
        let f = &self.metrics;
        let count = || {
            f.idempotency_total
                .with_label_values(&[&*self.name, result])
        };
        match IDEMPOTENCY_RESULTS.iter().position(|&r| r == result) {
            Some(i) => self.idempotency[i].get_or_init(count).inc(),
            None => count().inc(),
        }
    }
}

impl std::fmt::Debug for RouteMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMeter")
            .field("route", &self.name)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PlaceholderSecrets;

    /// A config whose one route, `payments`, has `providers` as targets.
    fn snapshot(providers: &[&str]) -> crate::config::Snapshot {
        let mut yaml =
            String::from("listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nproviders:\n");
        for p in providers {
            yaml.push_str(&format!("  {p}:\n    url: http://127.0.0.1:9\n"));
        }
        yaml.push_str("routes:\n  - name: payments\n    match: { path_prefix: / }\n    targets:\n");
        for p in providers {
            yaml.push_str(&format!("      - {{ provider: {p} }}\n"));
        }
        crate::config::load(&yaml, std::path::Path::new("/"), &PlaceholderSecrets)
            .unwrap_or_else(|e| panic!("{e}\n{yaml}"))
    }

    fn text(m: &Metrics) -> String {
        String::from_utf8(m.encode()).unwrap_or_default()
    }

    #[test]
    fn series_appear_when_first_counted_as_with_a_lookup() {
        let metrics = Metrics::new();
        let meters = Meters::new(&metrics);
        let config = snapshot(&["a", "b"]);
        let m = meters.route(&config.routes[0]);
        assert!(
            Arc::ptr_eq(&m, &meters.route(&config.routes[0])),
            "one meter per route"
        );
        assert!(!text(&metrics).contains("switchyard_attempts_total{"));

        m.attempt("a", OutcomeClass::Processed, Duration::from_millis(5));
        m.attempt("a", OutcomeClass::Processed, Duration::from_millis(5));
        m.request(Some("a"), StatusCode::OK, Duration::from_millis(6));
        m.request(None, StatusCode::from_u16(418).unwrap(), Duration::ZERO);
        m.idempotency("new");
        let _gauge = m.in_flight("a");
        let t = text(&metrics);
        for line in [
            "switchyard_attempts_total{outcome=\"processed\",provider=\"a\",route=\"payments\"} 2",
            "switchyard_requests_total{code=\"200\",provider=\"a\",route=\"payments\"} 1",
            "switchyard_requests_total{code=\"418\",provider=\"none\",route=\"payments\"} 1",
            "switchyard_idempotency_total{result=\"new\",route=\"payments\"} 1",
            "switchyard_upstream_requests_in_flight{provider=\"a\"} 0",
            "switchyard_attempt_duration_seconds_count{provider=\"a\",route=\"payments\"} 2",
        ] {
            assert!(t.contains(line), "{line} missing from\n{t}");
        }
        // Nothing for the provider and classes no request counted.
        assert!(!t.contains("provider=\"b\""), "{t}");
        assert!(!t.contains("outcome=\"unknown\""), "{t}");
    }

    #[test]
    fn a_provider_outside_the_route_is_counted_by_label() {
        let metrics = Metrics::new();
        let m = Meters::new(&metrics).route(&snapshot(&["a"]).routes[0]);
        m.attempt("elsewhere", OutcomeClass::Unknown, Duration::ZERO);
        m.request(Some("elsewhere"), StatusCode::BAD_GATEWAY, Duration::ZERO);
        let t = text(&metrics);
        assert!(t.contains(
            "switchyard_attempts_total{outcome=\"unknown\",provider=\"elsewhere\",route=\"payments\"} 1"
        ));
        assert!(t.contains(
            "switchyard_requests_total{code=\"502\",provider=\"elsewhere\",route=\"payments\"} 1"
        ));
    }
}
