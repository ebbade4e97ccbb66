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

#[cfg(test)]
mod tests {
    use crate::config::tests::*;

    #[test]
    fn duplicate_route_names_are_rejected() {
        let text = config("", "", "").replace(
            "routes:\n",
            "routes:\n  - name: pay\n    match: {}\n    targets: [{ provider: psp }]\n",
        );
        let p = only_problem(&text);
        assert_eq!(p.path, "routes[1].name");
        assert_eq!(p.line, Some(8));
        assert!(p.message.contains("duplicate route name \"pay\""), "{p:?}");
    }

    #[test]
    fn a_route_naming_an_unknown_provider_is_reported_at_the_target() {
        let text = "\
providers:
  psp-primary:
    url: https://api.primary.example
  psp-backup:
    url: https://api.backup.example
routes:
  - name: payments
    match: { path_prefix: /v1/ }
    targets:
      - { provider: psp-primary, priority: 0 }
      - { provider: psp-bakup, priority: 1 }
";
        let e = match load_with(text, &Secrets::default()) {
            Err(ConfigError::Invalid(problems)) => {
                assert_eq!(problems.len(), 1, "{problems:#?}");
                let p = &problems[0];
                assert_eq!(p.path, "routes[0].targets[1].provider");
                assert_eq!(p.line, Some(11));
                assert!(
                    p.message.contains("unknown provider \"psp-bakup\""),
                    "{p:?}"
                );
                // The message helps to spot the typo.
                assert!(p.message.contains("psp-backup, psp-primary"), "{p:?}");
                ConfigError::Invalid(problems).to_string()
            }
            other => panic!("expected a problem, got {other:?}"),
        };
        assert!(
            e.contains("routes[0].targets[1].provider (line 11): unknown provider \"psp-bakup\""),
            "{e}"
        );

        // In block style the line is the one of the `provider` key, not of the list item.
        let text = text.replace(
            "      - { provider: psp-bakup, priority: 1 }\n",
            "      - priority: 1\n        provider: psp-bakup\n",
        );
        let p = only_problem(&text);
        assert_eq!(p.path, "routes[0].targets[1].provider");
        assert_eq!(p.line, Some(12));
    }

    #[test]
    fn route_checks() {
        let cases = [
            // (text, path, needle for the line, phrase)
            (
                config("", "", "")
                    .replace("    targets:\n      - provider: psp\n", "    targets: []\n"),
                "routes[0].targets",
                "targets:",
                "at least one target",
            ),
            (
                config("", "        weight: 0\n", ""),
                "routes[0].targets[0].weight",
                "weight",
                "between 1 and 10000",
            ),
            (
                config("", "        weight: 10001\n", ""),
                "routes[0].targets[0].weight",
                "weight",
                "between 1 and 10000",
            ),
            (
                config("", "      - { provider: psp, priority: 1 }\n", ""),
                "routes[0].targets[1].provider",
                "priority: 1",
                "provider \"psp\" is already a target of this route",
            ),
            (
                config("", "", "").replace("match: {}", "match: { methods: [GET, post] }"),
                "routes[0].match.methods[1]",
                "match:",
                "\"post\" is not an HTTP method",
            ),
            (
                config("", "", "").replace("match: {}", "match:\n      path_prefix: v1/"),
                "routes[0].match.path_prefix",
                "path_prefix",
                "must start with '/'",
            ),
            (
                config("", "    strip_prefix: psp\n", ""),
                "routes[0].strip_prefix",
                "strip_prefix",
                "must start with '/'",
            ),
            (
                config("", "", "").replace(
                    "match: {}",
                    "match:\n      headers:\n        x-tenant: eu\n        \"x tenant\": eu",
                ),
                "routes[0].match.headers.x tenant",
                "\"x tenant\"",
                "\"x tenant\" is not a header name",
            ),
            (
                config("", "", "").replace("name: pay", "name: card payments"),
                "routes[0].name",
                "name:",
                "route names use letters",
            ),
            (
                config("", "", "")
                    .replace("  psp:", "  psp one:")
                    .replace("provider: psp", "provider: psp one"),
                "providers.psp one",
                "psp one:",
                "provider names use letters",
            ),
        ];
        for (text, path, needle, phrase) in cases {
            assert_problem(&only_problem(&text), path, &text, needle, phrase);
        }
    }

    #[test]
    fn a_config_needs_a_route() {
        let text = "providers:\n  psp:\n    url: https://api.psp.example\nroutes: []\n";
        let p = only_problem(text);
        assert_eq!(p.path, "routes");
        assert_eq!(p.line, Some(4));
        assert!(p.message.contains("at least one route"), "{p:?}");

        let p = only_problem("listen: 127.0.0.1:8080\n");
        assert_eq!(p.path, "routes");
        assert_eq!(p.line, None);
    }

    #[test]
    fn match_values_are_kept_as_configured() {
        let text = config("", "", "").replace(
        "match: {}",
        "match:\n      path_prefix: /v1\n      methods: [POST, PATCH]\n      host: Shop.Example\n      headers: { x-tenant: eu }",
    );
        let s = valid(&text);
        let m = &s.routes[0].matcher;
        assert_eq!(m.path_prefix, "/v1");
        assert_eq!(m.methods, Some(vec![Method::POST, Method::PATCH]));
        assert_eq!(m.host.as_deref(), Some("shop.example"));
        assert_eq!(
            m.headers,
            [(
                HeaderName::from_static("x-tenant"),
                HeaderValue::from_static("eu")
            )]
        );
        let mut headers = HeaderMap::new();
        headers.append("x-tenant", HeaderValue::from_static("eu"));
        assert!(m.matches(&Method::POST, "/v1/charges", Some("SHOP.example"), &headers));
        assert!(!m.matches(&Method::GET, "/v1/charges", Some("shop.example"), &headers));
    }

    #[test]
    fn a_route_without_match_takes_every_request() {
        let text = "providers:\n  psp:\n    url: https://api.psp.example\nroutes:\n  - name: pay\n    targets:\n      - provider: psp\n";
        let s = valid(text);
        let m = &s.routes[0].matcher;
        assert_eq!(m.path_prefix, "/");
        assert!(m.methods.is_none());
        assert!(m.host.is_none());
        assert!(m.headers.is_empty());
        assert!(m.matches(
            &Method::DELETE,
            "/any/path",
            Some("x.example"),
            &HeaderMap::new()
        ));
    }
}
