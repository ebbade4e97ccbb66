//! Connections to providers: one connection pool per provider ([`pool`]), over rustls.
//!
//! [`Upstreams`] holds a pool per provider name. A config reload builds a new set, reusing the pool
//! (and its warm connections) of every provider whose transport settings and TLS files are
//! unchanged; per-provider state that later policies keep is keyed the same way, by name.

mod body;
pub mod headers;
mod pool;
mod request;
mod tls;

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls_pki_types::ServerName;

use crate::config::{Problem, Provider, Snapshot};
use crate::error::ProxyError;

pub use crate::outcome::SendFailure;
pub use body::TrackedBody;
pub use pool::PooledBody;
pub use request::{provider_request, provider_uri, ProviderKey};

use pool::{Pool, PoolError};

/// A failed attempt: what kind of failure, and the error to answer with.
#[derive(Debug)]
pub struct SendError {
    /// The kind.
    pub failure: SendFailure,
    /// The error.
    pub error: ProxyError,
}

/// What one attempt's send came to: the provider's response head, or how the attempt failed.
pub type AttemptResult<B> = Result<Response<B>, SendError>;

/// Sends one attempt to a provider. The proxy's own sender is [`UpstreamClient`] (each provider's
/// connection pool); tests script one, so the attempt loop runs without a network. Generic rather than
/// boxed: choosing the sender costs nothing per request.
pub trait SendAttempt: Send + Sync + 'static {
    /// The body of a provider's answer.
    type Body: http_body::Body<Data = Bytes, Error: Into<crate::body::BoxError>>
        + Send
        + Unpin
        + 'static;

    /// Sends `req` to `upstream` and waits for the response head, within `timeout`.
    fn send(
        &self,
        upstream: &Upstream,
        req: Request<Bytes>,
        timeout: std::time::Duration,
    ) -> impl std::future::Future<Output = AttemptResult<Self::Body>> + Send;
}

/// The proxy's sender: each provider's connection pool ([`Upstream::send`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct UpstreamClient;

impl SendAttempt for UpstreamClient {
    type Body = PooledBody;

    fn send(
        &self,
        upstream: &Upstream,
        req: Request<Bytes>,
        timeout: std::time::Duration,
    ) -> impl std::future::Future<Output = AttemptResult<PooledBody>> + Send {
        upstream.send(req, timeout)
    }
}

/// One provider's endpoint and connection pool.
pub struct Upstream {
    /// The provider's config.
    pub config: Arc<Provider>,
    /// Its name as a header value (for `x-switchyard-provider`), made once per config.
    pub name_value: Option<http::HeaderValue>,
    pool: Pool,
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
    by_name: crate::config::NameMap<Arc<Upstream>>,
}

impl Upstreams {
    /// Builds an upstream for every provider of `snapshot`, reusing those of `previous` whose transport
    /// is unchanged. Errors (an unreadable CA file, a key that does not fit its certificate) name the
    /// provider's YAML path.
    pub fn build(snapshot: &Snapshot, previous: Option<&Upstreams>) -> Result<Self, Vec<Problem>> {
        let mut by_name = crate::config::NameMap::default();
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
                .map(|old| old.pool.clone());
            let pool = match reused {
                Some(p) => p,
                None => match new_pool(provider, built.config) {
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
                    name_value: http::HeaderValue::from_str(name).ok(),
                    pool,
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

/// What a pool is built from: a provider whose key is unchanged by a reload keeps its pool. The pool
/// connects to one scheme and authority, so both are part of it.
fn transport_key(p: &Provider, tls_digest: &[u8; 32]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(tls_digest);
    h.update(
        format!(
            "{:?}|{}|{:?}|{:?}|{}",
            p.scheme, p.authority, p.connect_timeout, p.pool_idle_timeout, p.pool_max_idle
        )
        .as_bytes(),
    );
    h.finalize().into()
}

fn new_pool(p: &Provider, tls: rustls::ClientConfig) -> Result<Pool, String> {
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
    Pool::new(
        connector,
        p.scheme.clone(),
        p.authority.clone(),
        p.connect_timeout,
        p.pool_idle_timeout,
        p.pool_max_idle,
    )
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
        let (body, _) = TrackedBody::new(Bytes::new());
        let mut req = Request::new(body);
        *req.uri_mut() = uri;
        req.headers_mut().insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static("switchyard-health-check"),
        );
        if let Some(auth) = &p.auth {
            req.headers_mut()
                .insert(auth.header.clone(), auth.value.header_value().clone());
        }
        match tokio::time::timeout(timeout, self.pool.send(req)).await {
            Err(_) => Err(format!("no answer within {}", crate::error::Human(timeout))),
            Ok(Err(e)) => Err(root_cause(&e)),
            Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
            Ok(Ok(resp)) => Err(format!("status {}", resp.status().as_u16())),
        }
    }

    /// Sends one attempt and waits for the response head, within `timeout`, telling apart failures
    /// before the request was written from those after.
    pub async fn send(
        &self,
        req: Request<Bytes>,
        timeout: std::time::Duration,
    ) -> Result<Response<PooledBody>, SendError> {
        let provider = &self.config.name;
        let (parts, body) = req.into_parts();
        let had_body = !body.is_empty();
        let (body, written) = TrackedBody::new(body);
        let req = Request::from_parts(parts, body);
        // Without a body there is no read to watch: after connecting, assume it may have been written.
        let may_have_written = || !had_body || written.load(std::sync::atomic::Ordering::Acquire);
        match tokio::time::timeout(timeout, self.pool.send(req)).await {
            Err(_) if may_have_written() => Err(SendError {
                failure: SendFailure::TimeoutAfterWrite,
                error: ProxyError::ProviderTimeout {
                    provider: provider.to_string(),
                    timeout,
                },
            }),
            Err(_) => Err(SendError {
                failure: SendFailure::BeforeWrite,
                error: ProxyError::ProviderUnreachable {
                    provider: provider.to_string(),
                    source: format!(
                        "no connection ready within {}",
                        crate::error::Human(timeout)
                    )
                    .into(),
                },
            }),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                let error = classify(provider, &e);
                let failure = failure_of(
                    error.kind(),
                    h2_refusal(&e),
                    matches!(e, PoolError::Unsent(_)),
                    may_have_written(),
                );
                // Errors before the request was written must not read as "may have been charged".
                let error = match failure {
                    SendFailure::BeforeWrite => ProxyError::ProviderUnreachable {
                        provider: provider.to_string(),
                        source: format!("connection lost before the request was sent: {error}")
                            .into(),
                    },
                    SendFailure::RefusedStream | SendFailure::GoAway => {
                        ProxyError::ProviderRefused {
                            provider: provider.to_string(),
                        }
                    }
                    _ => error,
                };
                Err(SendError { failure, error })
            }
        }
    }
}

/// How far a failed send got: before the request was written (connect, TLS, or a connection that gave
/// the request back, `unsent`, or a body the connection never asked for, `!may_have_written`), refused
/// by HTTP/2 (`refusal`, not processed), or after it may have been written.
fn failure_of(
    kind: crate::error::ErrorKind,
    refusal: Option<SendFailure>,
    unsent: bool,
    may_have_written: bool,
) -> SendFailure {
    match kind {
        crate::error::ErrorKind::ProviderUnreachable => SendFailure::Connect,
        crate::error::ErrorKind::ProviderTls => SendFailure::Tls,
        _ => match refusal {
            Some(f) => f,
            None if unsent || !may_have_written => SendFailure::BeforeWrite,
            None => SendFailure::AfterWrite,
        },
    }
}

/// Maps a pool error to the proxy's error: connect failures and TLS failures are told apart, since
/// neither sent a byte of the request, unlike a failure of an established exchange.
///
/// Under TLS 1.3 a provider that refuses the client certificate says so with an alert after the client
/// finished its handshake, so the error arrives after the request was written; such handshake alerts
/// still mean the request was never processed, and are reported as TLS failures too.
fn classify(provider: &str, e: &PoolError) -> ProxyError {
    let is_connect = matches!(e, PoolError::Connect(_));
    let provider = provider.to_owned();
    let refused_handshake = match tls_error(e) {
        Some(t) => is_connect || is_handshake_refusal(t),
        None => is_handshake_refusal_text(&root_cause(e)),
    };
    if refused_handshake {
        return ProxyError::ProviderTls {
            provider,
            source: root_cause(e).into(),
        };
    }
    if is_connect {
        return ProxyError::ProviderUnreachable {
            provider,
            source: root_cause(e).into(),
        };
    }
    ProxyError::ProviderFailed {
        provider,
        source: root_cause(e).into(),
    }
}

/// An HTTP/2 stream the provider refused (REFUSED_STREAM) or excluded with a GOAWAY: by the protocol,
/// it was not processed (RFC 9113 §8.7).
fn h2_refusal(e: &(dyn std::error::Error + 'static)) -> Option<SendFailure> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return Some(SendFailure::RefusedStream);
            }
            if h2.is_go_away() && h2.is_remote() {
                return Some(SendFailure::GoAway);
            }
        }
        cur = err.source();
    }
    None
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

/// The innermost cause's text: the outer errors ("connect error", "request failed") say little.
fn root_cause(e: &PoolError) -> String {
    let mut last: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_http2_streams_are_not_processed() {
        let refused = h2::Error::from(h2::Reason::REFUSED_STREAM);
        assert_eq!(h2_refusal(&refused), Some(SendFailure::RefusedStream));
        let other = h2::Error::from(h2::Reason::INTERNAL_ERROR);
        assert_eq!(h2_refusal(&other), None);
        let io = std::io::Error::other("reset");
        assert_eq!(h2_refusal(&io), None);
    }

    #[test]
    fn only_a_request_no_connection_kept_is_before_write() {
        use crate::error::ErrorKind::{ProviderFailed, ProviderTls, ProviderUnreachable};
        use SendFailure::*;
        let refused = Some(RefusedStream);
        // (kind, HTTP/2 refusal, given back unsent, body may have been written) -> failure
        let table = [
            (ProviderUnreachable, None, false, true, Connect),
            (ProviderTls, None, false, true, Tls),
            (ProviderTls, None, true, true, Tls),
            (ProviderFailed, refused, false, true, RefusedStream),
            (ProviderFailed, Some(GoAway), false, true, GoAway),
            (ProviderFailed, None, true, true, BeforeWrite),
            (ProviderFailed, None, false, false, BeforeWrite),
            (ProviderFailed, None, false, true, AfterWrite),
        ];
        for (kind, refusal, unsent, written, want) in table {
            assert_eq!(
                failure_of(kind, refusal, unsent, written),
                want,
                "{kind:?} {refusal:?} unsent={unsent} written={written}"
            );
        }
    }

    #[test]
    fn pool_errors_are_classified_by_how_far_the_request_got() {
        let io = |m: &str| Box::new(std::io::Error::other(m.to_owned()));
        let e = classify("psp", &PoolError::Connect(io("connection refused")));
        assert_eq!(e.kind(), crate::error::ErrorKind::ProviderUnreachable);
        assert_eq!(root_cause(&PoolError::Connect(io("refused"))), "refused");
        let tls = Box::new(std::io::Error::other(rustls::Error::AlertReceived(
            rustls::AlertDescription::UnknownCA,
        )));
        let e = classify("psp", &PoolError::Connect(tls));
        assert_eq!(e.kind(), crate::error::ErrorKind::ProviderTls);
    }

    #[test]
    fn handshake_refusals_are_told_from_other_tls_errors() {
        use rustls::AlertDescription as A;
        assert!(is_handshake_refusal(&rustls::Error::AlertReceived(
            A::CertificateRequired
        )));
        assert!(is_handshake_refusal(&rustls::Error::AlertReceived(
            A::UnknownCA
        )));
        assert!(!is_handshake_refusal(&rustls::Error::AlertReceived(
            A::CloseNotify
        )));
        assert!(!is_handshake_refusal(&rustls::Error::DecryptError));
        assert!(is_handshake_refusal_text(
            "received fatal alert: CertificateRequired"
        ));
        assert!(!is_handshake_refusal_text("connection reset by peer"));
    }

    #[test]
    fn no_early_data_ever() {
        let built = tls::client_config(&crate::config::Tls::default()).unwrap();
        assert!(
            !built.config.enable_early_data,
            "a POST must never ride in 0-RTT"
        );
    }
}
