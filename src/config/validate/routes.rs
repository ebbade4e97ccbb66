//! `routes:` — each route's matcher, targets, timeout and body limit. Its retry, idempotency and rate
//! limit settings are checked in their own files.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method};

use super::{unknown_provider, valid_name, Validator};
use crate::config::model::{
    Match, Provider, Route, Target, DEFAULT_MAX_BODY, DEFAULT_OVERPROVISIONING,
    DEFAULT_ROUTE_TIMEOUT, DEFAULT_WEIGHT,
};
use crate::config::schema;

impl Validator<'_> {
    /// Every route, in file order, and the set of their names. Route names are unique.
    pub(super) fn routes(
        &mut self,
        raw: Vec<schema::RawRoute>,
        providers: &BTreeMap<Arc<str>, Arc<Provider>>,
        defined: &BTreeSet<String>,
    ) -> (Vec<Arc<Route>>, HashSet<String>) {
        if raw.is_empty() {
            self.problem("routes", "at least one route is needed");
        }
        let mut route_names = HashSet::new();
        let mut routes = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let path = format!("routes[{i}]");
            if !route_names.insert(r.name.clone()) {
                self.problem(
                    format!("{path}.name"),
                    format!("duplicate route name \"{}\"", r.name),
                );
            }
            routes.push(Arc::new(self.route(&path, r, providers, defined)));
        }
        (routes, route_names)
    }

    fn route(
        &mut self,
        path: &str,
        r: schema::RawRoute,
        providers: &BTreeMap<Arc<str>, Arc<Provider>>,
        defined: &BTreeSet<String>,
    ) -> Route {
        if !valid_name(&r.name) {
            self.problem(
                format!("{path}.name"),
                "route names use letters, digits, '-', '_' and '.' only",
            );
        }
        let matcher = self.matcher(&format!("{path}.match"), r.matcher);
        let strip_prefix = r.strip_prefix.filter(|s| {
            let ok = s.starts_with('/');
            if !ok {
                self.problem(format!("{path}.strip_prefix"), "must start with '/'");
            }
            ok
        });
        if r.targets.is_empty() {
            self.problem(
                format!("{path}.targets"),
                "a route needs at least one target",
            );
        }
        let mut seen = HashSet::new();
        let mut targets = Vec::new();
        for (j, t) in r.targets.into_iter().enumerate() {
            let tpath = format!("{path}.targets[{j}]");
            let Some((name, _)) = providers.get_key_value(t.provider.as_str()) else {
                if !defined.contains(&t.provider) {
                    self.problem(
                        format!("{tpath}.provider"),
                        unknown_provider(&t.provider, defined),
                    );
                }
                continue;
            };
            if !seen.insert(Arc::clone(name)) {
                self.problem(
                    format!("{tpath}.provider"),
                    format!("provider \"{name}\" is already a target of this route"),
                );
            }
            let weight = t.weight.unwrap_or(DEFAULT_WEIGHT);
            if weight == 0 || weight > 10_000 {
                self.problem(format!("{tpath}.weight"), "must be between 1 and 10000");
            }
            targets.push(Target {
                provider: Arc::clone(name),
                priority: t.priority.unwrap_or(0),
                weight,
            });
        }
        let timeout = self.duration(
            &format!("{path}.timeout"),
            r.timeout.as_deref(),
            DEFAULT_ROUTE_TIMEOUT,
        );
        let max_body = self.size(
            &format!("{path}.max_body"),
            r.max_body.as_deref(),
            DEFAULT_MAX_BODY,
            0,
            64 << 20,
        );
        let rate_limit = r
            .rate_limit
            .map(|l| self.rate_limit(&format!("{path}.rate_limit"), l));
        let retry = self.retry(&format!("{path}.retry"), r.retry);
        let idempotency = self.idempotency(&format!("{path}.idempotency"), r.idempotency);
        let failover_on_not_processed = r.failover.and_then(|f| f.on_not_processed).unwrap_or(true);
        let overprovisioning = r.overprovisioning.unwrap_or(DEFAULT_OVERPROVISIONING);
        if !(1.0..=10.0).contains(&overprovisioning) {
            self.problem(
                format!("{path}.overprovisioning"),
                "must be between 1.0 and 10.0",
            );
        }
        Route {
            name: Arc::from(r.name.as_str()),
            matcher,
            strip_prefix,
            targets,
            timeout,
            max_body,
            rate_limit,
            overprovisioning,
            retry,
            idempotency,
            failover_on_not_processed,
        }
    }

    fn matcher(&mut self, path: &str, m: schema::RawMatch) -> Match {
        let path_prefix = m.path_prefix.unwrap_or_else(|| "/".to_owned());
        if !path_prefix.starts_with('/') {
            self.problem(format!("{path}.path_prefix"), "must start with '/'");
        }
        let methods = m.methods.map(|ms| {
            ms.iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    let upper = s.to_ascii_uppercase();
                    match Method::from_bytes(upper.as_bytes()) {
                        Ok(method) if upper == *s => Some(method),
                        _ => {
                            self.problem(
                                format!("{path}.methods[{i}]"),
                                format!("\"{s}\" is not an HTTP method (write it in capitals, e.g. POST)"),
                            );
                            None
                        }
                    }
                })
                .collect()
        });
        let host = m.host.map(|h| h.to_ascii_lowercase());
        let mut headers = Vec::new();
        for (name, value) in m.headers {
            let hpath = format!("{path}.headers.{name}");
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                (Ok(n), Ok(v)) => headers.push((n, v)),
                (Err(_), _) => self.problem(hpath, format!("\"{name}\" is not a header name")),
                (_, Err(_)) => self.problem(hpath, "not a valid header value"),
            }
        }
        Match {
            path_prefix,
            methods,
            host,
            headers,
        }
    }
}
