//! Connections to providers: one pooled hyper-util client per provider, over rustls.
//!
//! [`Upstreams`] holds a client per provider name. A config reload builds a new set, reusing the
//! client (and its warm connection pool) of every provider whose transport settings and TLS files are
//! unchanged; per-provider state that later policies keep is keyed the same way, by name.

pub mod headers;
mod tls;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::ServerName;

use crate::config::validate::{Problem, Provider, Snapshot};
use crate::error::ProxyError;

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One provider's endpoint and client.
pub struct Upstream {
    /// The provider's config.
    pub config: Arc<Provider>,
    client: HttpsClient,
    transport_key: [u8; 32],
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("provider", &self.config.name)
            .finish_non_exhaustive()
    }
}

/// Every provider's upstream, by name.
#[derive(Debug, Default)]
pub struct Upstreams {
    by_name: HashMap<Arc<str>, Arc<Upstream>>,
}

impl Upstreams {
    /// Builds an upstream for every provider of `snapshot`, reusing those of `previous` whose transport
    /// is unchanged. Errors (an unreadable CA file, a key that does not fit its certificate) name the
    /// provider's YAML path.
    pub fn build(snapshot: &Snapshot, previous: Option<&Upstreams>) -> Result<Self, Vec<Problem>> {
        let mut by_name = HashMap::new();
        let mut problems = Vec::new();
        for (name, provider) in &snapshot.providers {
            let built = match tls::client_config(&provider.tls) {
                Ok(b) => b,
                Err(message) => {
                    problems.push(Problem {
                        path: format!("providers.{name}.tls"),
                        line: None,
                        message,
                    });
                    continue;
                }
            };
            let key = transport_key(provider, &built.digest);
            let reused = previous
                .and_then(|p| p.by_name.get(name))
                .filter(|old| old.transport_key == key)
                .map(|old| old.client.clone());
            let client = match reused {
                Some(c) => c,
                None => match new_client(provider, built.config) {
                    Ok(c) => c,
                    Err(message) => {
                        problems.push(Problem {
                            path: format!("providers.{name}.tls.server_name"),
                            line: None,
                            message,
                        });
                        continue;
                    }
                },
            };
            by_name.insert(
                Arc::clone(name),
                Arc::new(Upstream {
                    config: Arc::clone(provider),
                    client,
                    transport_key: key,
                }),
            );
        }
        if problems.is_empty() {
            Ok(Self { by_name })
        } else {
            Err(problems)
        }
    }

    /// The upstream of provider `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.by_name.get(name)
    }
}

fn transport_key(p: &Provider, tls_digest: &[u8; 32]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(tls_digest);
    h.update(
        format!(
            "{:?}|{:?}|{:?}|{}",
            p.scheme, p.connect_timeout, p.pool_idle_timeout, p.pool_max_idle
        )
        .as_bytes(),
    );
    h.finalize().into()
}

fn new_client(p: &Provider, tls: rustls::ClientConfig) -> Result<HttpsClient, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(p.connect_timeout));
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let builder = match &p.tls.server_name {
        Some(name) => {
            let name = ServerName::try_from(name.clone())
                .map_err(|e| format!("\"{name}\" is not a server name: {e}"))?;
            builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    let connector = builder.enable_all_versions().wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(p.pool_idle_timeout)
        .pool_max_idle_per_host(p.pool_max_idle)
        .build(connector))
}

impl Upstream {
    /// One active health check: GET `path` below the provider's base path; a 2xx passes.
    pub async fn check(&self, path: &str, timeout: std::time::Duration) -> Result<(), String> {
        let p = &self.config;
        let uri = http::Uri::builder()
            .scheme(p.scheme.clone())
            .authority(p.authority.clone())
            .path_and_query(format!("{}{path}", p.base_path))
            .build()
            .map_err(|e| format!("bad check URI: {e}"))?;
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = uri;
        req.headers_mut().insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static("switchyard-health-check"),
        );
        if let Some(auth) = &p.auth {
            req.headers_mut()
                .insert(auth.header.clone(), auth.value.header_value().clone());
        }
        match tokio::time::timeout(timeout, self.client.request(req)).await {
            Err(_) => Err(format!("no answer within {timeout:?}")),
            Ok(Err(e)) => Err(root_cause(&e)),
            Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
            Ok(Ok(resp)) => Err(format!("status {}", resp.status().as_u16())),
        }
    }

    /// Sends one attempt and waits for the response head, within the provider's `timeout`.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, ProxyError> {
        let provider = &self.config.name;
        match tokio::time::timeout(self.config.timeout, self.client.request(req)).await {
            Err(_) => Err(ProxyError::ProviderTimeout {
                provider: provider.to_string(),
                timeout: self.config.timeout,
            }),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(classify(provider, e)),
        }
    }
}

/// Maps a client error to the proxy's error: connect failures and TLS failures are told apart, since
/// neither sent a byte of the request, unlike a failure of an established exchange.
///
/// Under TLS 1.3 a provider that refuses the client certificate says so with an alert after the client
/// finished its handshake, so the error arrives after the request was written; such handshake alerts
/// still mean the request was never processed, and are reported as TLS failures too.
fn classify(provider: &str, e: hyper_util::client::legacy::Error) -> ProxyError {
    let provider = provider.to_owned();
    let refused_handshake = match tls_error(&e) {
        Some(t) => e.is_connect() || is_handshake_refusal(t),
        None => is_handshake_refusal_text(&root_cause(&e)),
    };
    if refused_handshake {
        return ProxyError::ProviderTls {
            provider,
            source: root_cause(&e).into(),
        };
    }
    if e.is_connect() {
        return ProxyError::ProviderUnreachable {
            provider,
            source: root_cause(&e).into(),
        };
    }
    ProxyError::ProviderFailed {
        provider,
        source: root_cause(&e).into(),
    }
}

/// The rustls error in `e`'s chain. hyper-rustls wraps it in an `io::Error` inside another `io::Error`,
/// and `io::Error::source` skips the error it wraps, so wrapped errors are unwrapped by hand.
fn tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            cur = Some(inner);
            continue;
        }
        cur = err.source();
    }
    None
}

/// Alerts a server only sends while refusing a handshake (certificate checks, mTLS).
const HANDSHAKE_REFUSALS: [rustls::AlertDescription; 12] = {
    use rustls::AlertDescription as A;
    [
        A::HandshakeFailure,
        A::BadCertificate,
        A::UnsupportedCertificate,
        A::CertificateRevoked,
        A::CertificateExpired,
        A::CertificateUnknown,
        A::UnknownCA,
        A::AccessDenied,
        A::CertificateRequired,
        A::ProtocolVersion,
        A::InsufficientSecurity,
        A::NoApplicationProtocol,
    ]
};

fn is_handshake_refusal(e: &rustls::Error) -> bool {
    match e {
        rustls::Error::AlertReceived(alert) => HANDSHAKE_REFUSALS.contains(alert),
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => true,
        _ => false,
    }
}

/// The same check on text: h2 keeps only the message of an I/O error, not the rustls error itself, so
/// over HTTP/2 the alert is recognised by rustls's own wording of it.
fn is_handshake_refusal_text(text: &str) -> bool {
    HANDSHAKE_REFUSALS
        .iter()
        .any(|a| rustls::Error::AlertReceived(*a).to_string() == text)
}

/// The innermost cause's text: hyper-util's outer errors ("client error (Connect)") say little.
fn root_cause(e: &hyper_util::client::legacy::Error) -> String {
    let mut last: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}
