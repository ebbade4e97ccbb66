//! `providers:` — each provider's URL, credential, TLS files and timeouts. Its breaker, health checks
//! and quota are checked in their own files.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::uri::{Authority, Scheme};
use http::{HeaderName, Uri};

use super::{is_loopback_host, valid_name, Validator};
use crate::config::model::{
    Auth, Provider, Tls, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDEMPOTENCY_RETENTION,
    DEFAULT_MAX_THROTTLE, DEFAULT_POOL_IDLE_TIMEOUT, DEFAULT_POOL_MAX_IDLE,
    DEFAULT_PROVIDER_TIMEOUT, DEFAULT_SLOW_START,
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
        let retention_path = format!("{path}.idempotency_retention");
        let idempotency_retention = self.duration(
            &retention_path,
            p.idempotency_retention.as_deref(),
            DEFAULT_IDEMPOTENCY_RETENTION,
        );
        if idempotency_retention < std::time::Duration::from_secs(600) {
            self.problem(
                &retention_path,
                "must be at least 10m: the resolver keeps 5 minutes of margin before it",
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
            idempotency_retention,
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

#[cfg(test)]
mod tests {
    use crate::config::tests::*;

    /// A config whose provider `psp` has `url` (quoted).
    fn with_url(url: &str) -> String {
        config("", "", "").replace("url: https://api.psp.example", &format!("url: \"{url}\""))
    }

    #[test]
    fn bad_provider_urls_are_rejected_at_the_url() {
        let cases = [
            ("not a url", "is not a URL"),
            ("ftp://files.psp.example", "must start with https://"),
            ("api.psp.example", "must start with https://"),
            ("https://", "\"https://\""),
            ("https:///v1", "\"https:///v1\""),
            ("https://api.psp.example/v1?mode=test", "no query"),
            (
                "https://user:pass@api.psp.example",
                "credentials in the URL",
            ),
            (
                "http://api.psp.example",
                "only allowed to a loopback address",
            ),
            (
                "http://localhost.psp.example",
                "only allowed to a loopback address",
            ),
            ("http://10.0.0.1:8080", "only allowed to a loopback address"),
        ];
        for (url, phrase) in cases {
            let text = with_url(url);
            let p = only_problem(&text);
            assert_problem(&p, "providers.psp.url", &text, "url:", phrase);
            // The credentials never reach the log.
            assert!(!p.message.contains("pass"), "{p:?}");
        }
    }

    #[test]
    fn plain_http_is_allowed_to_loopback_only() {
        for (url, authority) in [
            ("http://127.0.0.1:9101", "127.0.0.1:9101"),
            ("http://localhost:9101", "localhost:9101"),
            ("http://[::1]:9101", "[::1]:9101"),
        ] {
            let s = valid(&with_url(url));
            let p = &s.providers["psp"];
            assert_eq!(p.scheme, http::uri::Scheme::HTTP, "{url}");
            assert_eq!(p.authority.as_str(), authority, "{url}");
        }
    }

    #[test]
    fn an_https_url_keeps_its_base_path_without_the_trailing_slash() {
        let s = valid(&with_url("https://api.psp.example:8443/v2/"));
        let p = &s.providers["psp"];
        assert_eq!(p.scheme, http::uri::Scheme::HTTPS);
        assert_eq!(p.authority.as_str(), "api.psp.example:8443");
        assert_eq!(p.base_path, "/v2");

        let s = valid(&with_url("https://api.psp.example/a/b"));
        assert_eq!(s.providers["psp"].base_path, "/a/b");
    }

    #[test]
    fn provider_auth_reads_its_value_from_the_environment() {
        let text = config(
            "    auth: { header: X-Api-Key, value_env: PSP_API_KEY }\n",
            "",
            "",
        );
        let s = valid_with(&text, &Secrets::default().with("PSP_API_KEY", "sk_live_1"));
        let auth = match &s.providers["psp"].auth {
            Some(a) => a,
            None => panic!("no auth"),
        };
        assert_eq!(auth.header, HeaderName::from_static("x-api-key"));
        assert_eq!(auth.value.header_value(), "sk_live_1");
        assert!(auth.value.header_value().is_sensitive());
        assert!(auth.value.matches(b"sk_live_1"));
        assert!(!auth.value.matches(b"sk_live_2"));
        assert!(!auth.value.matches(b"sk_live_12"));

        // `check` lists where each secret comes from.
        assert_eq!(s.secrets.len(), 1);
        assert_eq!(s.secrets[0].path, "providers.psp.auth.value_env");
        assert_eq!(
            s.secrets[0].source,
            SecretRef::Env("PSP_API_KEY".to_owned())
        );

        // Without a header name the credential goes into Authorization.
        let text = config("    auth: { value_env: PSP_API_KEY }\n", "", "");
        let s = valid_with(&text, &Secrets::default().with("PSP_API_KEY", "Bearer x"));
        let header = s.providers["psp"].auth.as_ref().map(|a| a.header.clone());
        assert_eq!(header, Some(http::header::AUTHORIZATION));
    }

    #[test]
    fn an_auth_header_name_must_be_valid() {
        let text = config(
            "    auth: { header: \"Api Key\", value_env: PSP_API_KEY }\n",
            "",
            "",
        );
        let secrets = Secrets::default().with("PSP_API_KEY", "k");
        assert_problem(
            &only_problem_with(&text, &secrets),
            "providers.psp.auth.header",
            &text,
            "auth:",
            "\"Api Key\" is not a header name",
        );
    }

    #[test]
    fn tls_client_cert_and_key_go_together() {
        let text = config("    tls:\n      client_cert_file: client.pem\n", "", "");
        assert_problem(
            &only_problem(&text),
            "providers.psp.tls",
            &text,
            "tls:",
            "client_cert_file and client_key_file go together",
        );

        let text = config("    tls: { client_key_file: client-key.pem }\n", "", "");
        assert_eq!(only_problem(&text).path, "providers.psp.tls");
    }

    #[test]
    fn tls_needs_an_https_url() {
        let text = with_url("http://127.0.0.1:9101")
            .replace("routes:", "    tls: { server_name: psp.example }\nroutes:");
        assert_problem(
            &only_problem(&text),
            "providers.psp.tls",
            &text,
            "tls:",
            "use https://",
        );
    }

    #[test]
    fn tls_files_are_resolved_against_the_config_folder() {
        let text = config(
        "    tls:\n      ca_file: ca.pem\n      client_cert_file: certs/client.pem\n      client_key_file: /keys/client-key.pem\n      server_name: api.psp.example\n",
        "",
        "",
    );
        let s = valid(&text);
        let tls = &s.providers["psp"].tls;
        assert_eq!(tls.ca_file, Some(PathBuf::from("/etc/switchyard/ca.pem")));
        assert_eq!(
            tls.client_cert,
            Some((
                PathBuf::from("/etc/switchyard/certs/client.pem"),
                PathBuf::from("/keys/client-key.pem"),
            ))
        );
        assert_eq!(tls.server_name.as_deref(), Some("api.psp.example"));
    }

    #[test]
    fn a_provider_with_a_bad_url_is_not_also_reported_as_unknown() {
        let text = with_url("ftp://api.psp.example");
        let all = problems(&text);
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!(all[0].path, "providers.psp.url");
    }
}
