//! One provider's connections: idle HTTP/1.1 connections and at most one shared HTTP/2 connection,
//! built on hyper's `client::conn` over the provider's connector (TCP with the connect timeout, rustls).
//!
//! Why its own pool: a generic client keys its pool by scheme and authority and hashes that key on
//! every request; here there is one pool per provider already, so a checkout is a lock and a `pop`.
//!
//! What it guarantees, for the outcome classes of `PAYMENT_RULES.md` §1:
//! - A request is only ever handed to one connection at a time, with hyper's `try_send_request`. When a
//!   connection gives the request back (it closed before writing it), that is hyper's proof that
//!   nothing was written: the request is tried again on another connection if the one that gave it back
//!   was a pooled one (an idle connection the provider closed), and otherwise reported as
//!   [`PoolError::Unsent`].
//! - A failure of a connection that kept the request is [`PoolError::Exchange`]: it may have been written.
//! - A connect or handshake failure ([`PoolError::Connect`]) happens before any request is handed over.
//! - An HTTP/1.1 connection goes back to the idle list only once its response body ended; one whose
//!   response was dropped unfinished, or that errored, is closed. Idle connections are kept at most
//!   `pool_idle_timeout` and at most `pool_max_idle` of them (zero: no reuse at all, HTTP/2 included).

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Parts, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::ServiceExt;

use super::body::TrackedBody;

/// The connector every provider connection is made with: TCP (with the connect timeout), then TLS.
pub(crate) type Connector = HttpsConnector<HttpConnector>;

/// Why a send through the pool failed, and so how far the request got.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PoolError {
    /// Connecting (TCP, TLS) or the HTTP handshake failed: no request was handed to a connection.
    #[error("connect error")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A fresh connection gave the request back: hyper proves it was not written.
    #[error("connection closed before the request was sent")]
    Unsent(#[source] hyper::Error),
    /// The connection failed after taking the request: it may have been written.
    #[error("request failed")]
    Exchange(#[source] hyper::Error),
}

/// A provider's pool (cheap to clone: shared).
#[derive(Clone)]
pub(crate) struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    connector: Connector,
    /// The whole of a new connection, TCP and TLS handshake: a provider that accepts and then never
    /// finishes the handshake costs this long, not the route's whole timeout.
    connect_timeout: Duration,
    scheme: Scheme,
    authority: Authority,
    /// The `Host` header of HTTP/1.1 requests (host, and the port unless the scheme's default).
    host: HeaderValue,
    idle_timeout: Duration,
    max_idle: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Idle HTTP/1.1 connections, the most recently used last.
    idle: Vec<Idle>,
    /// The shared HTTP/2 connection, and when it was last checked out.
    h2: Option<(http2::SendRequest<TrackedBody>, Instant)>,
    /// Whether a task is closing expired idle connections.
    reaping: bool,
}

struct Idle {
    tx: http1::SendRequest<TrackedBody>,
    since: Instant,
}

enum Conn {
    H1(http1::SendRequest<TrackedBody>),
    H2(http2::SendRequest<TrackedBody>),
}

impl Pool {
    /// A pool for the provider at `scheme://authority`.
    pub(crate) fn new(
        connector: Connector,
        scheme: Scheme,
        authority: Authority,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Result<Self, String> {
        let host = host_header(&scheme, &authority)?;
        Ok(Self {
            shared: Arc::new(Shared {
                connector,
                scheme,
                authority,
                host,
                connect_timeout,
                idle_timeout,
                max_idle,
                state: Mutex::new(State::default()),
            }),
        })
    }

    /// Sends `req` (its URI's path and query are used; scheme and authority are the provider's) and
    /// waits for the response head.
    pub(crate) async fn send(
        &self,
        req: Request<TrackedBody>,
    ) -> Result<Response<PooledBody>, PoolError> {
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut body = body;
        loop {
            let (conn, reused) = match self.shared.checkout().await {
                Some(conn) => (conn, true),
                // Boxed: the TCP, TLS and HTTP handshakes' futures are kilobytes, and inline they would
                // be moved with every attempt's future, new connection or not.
                None => (Box::pin(self.shared.connect()).await?, false),
            };
            let mut err = match conn {
                Conn::H1(mut tx) => {
                    parts.uri = Uri::from(path.clone());
                    parts
                        .headers
                        .entry(http::header::HOST)
                        .or_insert_with(|| self.shared.host.clone());
                    match tx.try_send_request(Request::from_parts(parts, body)).await {
                        Ok(resp) => return Ok(self.shared.body(resp, Some(tx))),
                        Err(e) => e,
                    }
                }
                Conn::H2(mut tx) => {
                    parts.uri = self.shared.absolute(&path);
                    match tx.try_send_request(Request::from_parts(parts, body)).await {
                        Ok(resp) => return Ok(self.shared.body(resp, None)),
                        Err(e) => e,
                    }
                }
            };
            match err.take_message() {
                // Given back by a connection that was idle in the pool (the provider closed it):
                // nothing was written, so another connection may carry it.
                Some(back) if reused => (parts, body) = back.into_parts(),
                Some(_) => return Err(PoolError::Unsent(err.into_error())),
                None => return Err(PoolError::Exchange(err.into_error())),
            }
        }
    }

    /// How many HTTP/1.1 connections are idle (tests).
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.shared.lock().idle.len()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock guards plain data that no panic leaves half-written.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn absolute(&self, path: &PathAndQuery) -> Uri {
        let mut parts = Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path.clone());
        // Scheme, authority and path are each valid already: the parts always form a URI.
        Uri::from_parts(parts).unwrap_or_default()
    }

    /// A ready pooled connection: the shared HTTP/2 one, else the most recently used idle HTTP/1.1
    /// one that is still open and not expired. `None`: connect a new one.
    async fn checkout(&self) -> Option<Conn> {
        if self.max_idle == 0 {
            return None;
        }
        loop {
            let mut tx = {
                let now = Instant::now();
                let mut state = self.lock();
                if let Some((tx, used)) = &mut state.h2 {
                    if !tx.is_closed() && now.saturating_duration_since(*used) < self.idle_timeout {
                        *used = now;
                        return Some(Conn::H2(tx.clone()));
                    }
                    state.h2 = None;
                }
                loop {
                    let idle = state.idle.pop()?;
                    if !idle.tx.is_closed()
                        && now.saturating_duration_since(idle.since) < self.idle_timeout
                    {
                        break idle.tx;
                    }
                }
            };
            // Ready once the connection has finished with its previous exchange; an error means it
            // closed while idle. Either way no request has been handed to it yet.
            if tx.ready().await.is_ok() {
                return Some(Conn::H1(tx));
            }
        }
    }

    /// A new connection: HTTP/2 when the provider chose it in the TLS handshake (ALPN), else HTTP/1.1.
    async fn connect(self: &Arc<Self>) -> Result<Conn, PoolError> {
        let mut parts = Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
        let uri = Uri::from_parts(parts).map_err(|e| PoolError::Connect(e.into()))?;
        let io = tokio::time::timeout(self.connect_timeout, self.connector.clone().oneshot(uri))
            .await
            .map_err(|_| {
                PoolError::Connect(
                    format!(
                        "TCP and TLS connect did not finish within connect_timeout ({:?})",
                        self.connect_timeout
                    )
                    .into(),
                )
            })?
            .map_err(PoolError::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(|e| PoolError::Connect(e.into()))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "provider HTTP/2 connection ended");
                }
            });
            if self.max_idle > 0 {
                let mut state = self.lock();
                let keep = state.h2.as_ref().is_none_or(|(old, _)| old.is_closed());
                if keep {
                    state.h2 = Some((tx.clone(), Instant::now()));
                    self.reap_later(&mut state);
                }
            }
            Ok(Conn::H2(tx))
        } else {
            let (tx, conn) = http1::handshake(io)
                .await
                .map_err(|e| PoolError::Connect(e.into()))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "provider HTTP/1.1 connection ended");
                }
            });
            Ok(Conn::H1(tx))
        }
    }

    /// The response body, which gives an HTTP/1.1 connection back when it ends.
    fn body(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        tx: Option<http1::SendRequest<TrackedBody>>,
    ) -> Response<PooledBody> {
        let mut body = PooledBody {
            inner: None,
            back: tx.map(|tx| (Arc::clone(self), tx)),
        };
        resp.map(|inner| {
            if inner.is_end_stream() {
                body.release();
            }
            body.inner = Some(inner);
            body
        })
    }

    /// Keeps `tx` as an idle connection, unless it closed or the pool is full.
    fn put_idle(self: &Arc<Self>, tx: http1::SendRequest<TrackedBody>) {
        if tx.is_closed() || self.max_idle == 0 {
            return;
        }
        let since = Instant::now();
        let mut state = self.lock();
        if state.idle.len() < self.max_idle {
            state.idle.push(Idle { tx, since });
            self.reap_later(&mut state);
        }
    }

    /// Starts the task that closes expired idle connections, unless it runs already.
    fn reap_later(self: &Arc<Self>, state: &mut State) {
        if state.reaping {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        state.reaping = true;
        runtime.spawn(reap(Arc::downgrade(self), self.idle_timeout));
    }

    /// Drops expired and closed connections; whether any is left to watch.
    fn prune(&self, now: Instant) -> bool {
        let mut state = self.lock();
        let timeout = self.idle_timeout;
        state
            .idle
            .retain(|i| !i.tx.is_closed() && now.saturating_duration_since(i.since) < timeout);
        let h2_expired = state.h2.as_ref().is_some_and(|(tx, used)| {
            tx.is_closed() || now.saturating_duration_since(*used) >= timeout
        });
        if h2_expired {
            state.h2 = None;
        }
        let left = !state.idle.is_empty() || state.h2.is_some();
        if !left {
            state.reaping = false;
        }
        left
    }
}

/// Closes expired idle connections every `idle_timeout` (at most every 100 ms), until none is left or
/// the pool is gone.
async fn reap(pool: Weak<Shared>, idle_timeout: Duration) {
    let period = idle_timeout.max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(period).await;
        let Some(shared) = pool.upgrade() else { return };
        if !shared.prune(Instant::now()) {
            return;
        }
    }
}

/// `Host` for HTTP/1.1: the host, with the port unless it is the scheme's default.
fn host_header(scheme: &Scheme, authority: &Authority) -> Result<HeaderValue, String> {
    let default = if *scheme == Scheme::HTTPS { 443 } else { 80 };
    let value = match authority.port_u16() {
        Some(port) if port != default => format!("{}:{port}", authority.host()),
        _ => authority.host().to_owned(),
    };
    HeaderValue::try_from(value).map_err(|e| format!("\"{authority}\" is not a Host header: {e}"))
}

/// A provider's response body. For HTTP/1.1 it holds the connection, and gives it back to the pool
/// when the body ends; dropped before its end, the connection is closed instead.
pub struct PooledBody {
    inner: Option<Incoming>,
    back: Option<(Arc<Shared>, http1::SendRequest<TrackedBody>)>,
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody").finish_non_exhaustive()
    }
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((pool, tx)) = self.back.take() {
            pool.put_idle(tx);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = std::pin::Pin::new(inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.as_ref().is_some_and(Body::is_end_stream) => {
                self.release()
            }
            // An error: the connection is not given back.
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Full};
    use tokio::net::TcpListener;

    use super::*;

    /// An HTTP/1.1 provider on 127.0.0.1 answering "ok" after `delay`; counts accepted connections.
    async fn provider(delay: Duration) -> (Authority, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(move |_req| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("ok"))))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service),
                );
            }
        });
        (addr.to_string().parse().unwrap(), accepted)
    }

    fn pool(authority: Authority, max_idle: usize) -> Pool {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let tls = super::super::tls::client_config(&crate::config::Tls::default())
            .unwrap()
            .config;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        Pool::new(
            connector,
            Scheme::HTTP,
            authority,
            Duration::from_secs(1),
            Duration::from_secs(60),
            max_idle,
        )
        .unwrap()
    }

    async fn get(pool: &Pool) -> String {
        let (body, _) = TrackedBody::new(Bytes::new());
        let mut req = Request::new(body);
        *req.uri_mut() = Uri::from_static("/v1/ping");
        let resp = pool.send(req).await.unwrap();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_connection_whose_body_ended_is_reused() {
        let (authority, accepted) = provider(Duration::ZERO).await;
        let pool = pool(authority, 4);
        for _ in 0..5 {
            assert_eq!(get(&pool).await, "ok");
            assert_eq!(pool.idle_count(), 1, "given back when its body ended");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_closes_the_connection() {
        let (authority, accepted) = provider(Duration::ZERO).await;
        let pool = pool(authority, 4);
        let (body, _) = TrackedBody::new(Bytes::new());
        let mut req = Request::new(body);
        *req.uri_mut() = Uri::from_static("/");
        drop(pool.send(req).await.unwrap());
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(get(&pool).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn at_most_max_idle_connections_are_kept() {
        let (authority, accepted) = provider(Duration::from_millis(50)).await;
        let pool = pool(authority, 2);
        let all = futures_util::future::join_all((0..4).map(|_| get(&pool))).await;
        assert!(all.iter().all(|b| b == "ok"));
        assert_eq!(accepted.load(Ordering::SeqCst), 4, "one connection each");
        assert_eq!(pool.idle_count(), 2);
    }

    #[tokio::test]
    async fn no_connection_is_kept_when_max_idle_is_zero() {
        let (authority, accepted) = provider(Duration::ZERO).await;
        let pool = pool(authority, 0);
        get(&pool).await;
        get(&pool).await;
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn expired_idle_connections_are_closed() {
        let (authority, accepted) = provider(Duration::ZERO).await;
        let pool = pool(authority, 4);
        get(&pool).await;
        assert_eq!(pool.idle_count(), 1);
        let later = Instant::now() + Duration::from_secs(61);
        assert!(!pool.shared.prune(later), "nothing left to watch");
        assert_eq!(pool.idle_count(), 0);
        get(&pool).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn host_header_leaves_out_the_default_port() {
        let host = |s: Scheme, a: &str| host_header(&s, &a.parse().unwrap()).unwrap();
        assert_eq!(host(Scheme::HTTPS, "api.stripe.com:443"), "api.stripe.com");
        assert_eq!(host(Scheme::HTTPS, "api.stripe.com"), "api.stripe.com");
        assert_eq!(host(Scheme::HTTP, "127.0.0.1:8080"), "127.0.0.1:8080");
        assert_eq!(host(Scheme::HTTP, "localhost:80"), "localhost");
    }
}
