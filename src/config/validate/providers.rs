//! `providers:` — each provider's URL, credential, TLS files and timeouts. Its breaker, health checks
//! and quota are checked in their own files.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::uri::{Authority, Scheme};
use http::{HeaderName, Uri};

use super::{is_loopback_host, valid_name, Validator};
use crate::config::model::{
    Auth, Provider, Tls, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_THROTTLE, DEFAULT_POOL_IDLE_TIMEOUT,
    DEFAULT_POOL_MAX_IDLE, DEFAULT_PROVIDER_TIMEOUT, DEFAULT_SLOW_START,
};
use crate::config::schema;

impl Validator<'_> {
    /// Every provider, by name. Names that are not plain are reported; the provider is still checked.
    pub(super) fn providers(
        &mut self,
        raw: BTreeMap<String, schema::RawProvider>,
    ) -> BTreeMap<Arc<str>, Arc<Provider>> {
        let mut providers = BTreeMap::new();
        for (name, p) in raw {
            let path = format!("providers.{name}");
            if !valid_name(&name) {
                self.problem(
                    &path,
                    "provider names use letters, digits, '-', '_' and '.' only",
                );
            }
            if let Some(p) = self.provider(&path, &name, p) {
                providers.insert(Arc::clone(&p.name), Arc::new(p));
            }
        }
        providers
    }

    fn provider(&mut self, path: &str, name: &str, p: schema::RawProvider) -> Option<Provider> {
        let idempotency_header = match p.idempotency_header.as_deref() {
            None => HeaderName::from_static("idempotency-key"),
            Some(h) => self
                .header_name(&format!("{path}.idempotency_header"), h)
                .unwrap_or(HeaderName::from_static("idempotency-key")),
        };
        let idempotency_key_max_len = p.idempotency_key_max_len.unwrap_or(255);
        if !(16..=4096).contains(&idempotency_key_max_len) {
            self.problem(
                format!("{path}.idempotency_key_max_len"),
                "must be between 16 and 4096",
            );
        }
        let breaker = self.breaker(&format!("{path}.breaker"), p.breaker);
        let health_check = p
            .health_check
            .map(|h| self.health_check(&format!("{path}.health_check"), h));
        let quota = p.quota.map(|q| self.quota(&format!("{path}.quota"), q));
        let slow_start = self.duration_or_zero(
            &format!("{path}.slow_start"),
            p.slow_start.as_deref(),
            DEFAULT_SLOW_START,
        );
        let max_throttle = self.duration(
            &format!("{path}.max_throttle"),
            p.max_throttle.as_deref(),
            DEFAULT_MAX_THROTTLE,
        );

        let url_path = format!("{path}.url");
        let url = self.url(&url_path, &p.url);
        let connect_timeout = self.duration(
            &format!("{path}.connect_timeout"),
            p.connect_timeout.as_deref(),
            DEFAULT_CONNECT_TIMEOUT,
        );
        let timeout = self.duration(
            &format!("{path}.timeout"),
            p.timeout.as_deref(),
            DEFAULT_PROVIDER_TIMEOUT,
        );
        let pool_idle_timeout = self.duration(
            &format!("{path}.pool_idle_timeout"),
            p.pool_idle_timeout.as_deref(),
            DEFAULT_POOL_IDLE_TIMEOUT,
        );
        let auth = p.auth.and_then(|a| {
            let apath = format!("{path}.auth");
            let header = a.header.as_deref().unwrap_or("Authorization");
            let header = self.header_name(&format!("{apath}.header"), header)?;
            let value = self.required_secret(
                &apath,
                "value",
                a.value_env.as_deref(),
                a.value_file.as_deref(),
                "the credential",
            )?;
            Some(Auth { header, value })
        });
        let tls = p.tls.map(|t| {
            let tpath = format!("{path}.tls");
            let client_cert = match (t.client_cert_file, t.client_key_file) {
                (Some(c), Some(k)) => Some((self.file(&c), self.file(&k))),
                (None, None) => None,
                _ => {
                    self.problem(
                        &tpath,
                        "client_cert_file and client_key_file go together: set both or neither",
                    );
                    None
                }
            };
            Tls {
                ca_file: t.ca_file.map(|f| self.file(&f)),
                client_cert,
                server_name: t.server_name,
            }
        });
        let (scheme, authority, base_path) = url?;
        if tls.is_some() && scheme == Scheme::HTTP {
            self.problem(
                format!("{path}.tls"),
                "tls is set but the url is http://; use https://",
            );
        }
        Some(Provider {
            name: Arc::from(name),
            scheme,
            authority,
            base_path,
            auth,
            tls: tls.unwrap_or_default(),
            connect_timeout,
            timeout,
            pool_idle_timeout,
            pool_max_idle: p.pool_max_idle.unwrap_or(DEFAULT_POOL_MAX_IDLE),
            breaker,
            health_check,
            quota,
            slow_start,
            max_throttle,
            idempotency_header,
            idempotency_key_max_len,
        })
    }

    fn url(&mut self, path: &str, text: &str) -> Option<(Scheme, Authority, String)> {
        let uri: Uri = match text.parse() {
            Ok(u) => u,
            Err(e) => {
                self.problem(path, format!("\"{text}\" is not a URL: {e}"));
                return None;
            }
        };
        let scheme = match uri.scheme_str() {
            Some("https") => Scheme::HTTPS,
            Some("http") => Scheme::HTTP,
            _ => {
                self.problem(
                    path,
                    format!(
                        "\"{text}\" must start with https:// (or http:// for a loopback address)"
                    ),
                );
                return None;
            }
        };
        let Some(authority) = uri.authority().cloned() else {
            self.problem(path, format!("\"{text}\" has no host"));
            return None;
        };
        if authority.as_str().contains('@') {
            self.problem(
                path,
                "credentials in the URL are not allowed; use auth.value_env",
            );
            return None;
        }
        if uri.query().is_some() {
            self.problem(path, "a provider URL may carry a base path but no query");
            return None;
        }
        if scheme == Scheme::HTTP && !is_loopback_host(authority.host()) {
            self.problem(
                path,
                "plain http:// is only allowed to a loopback address (sandbox, tests); provider traffic uses https://",
            );
            return None;
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        Some((scheme, authority, base_path))
    }
}
