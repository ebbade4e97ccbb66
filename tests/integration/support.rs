//! Test support: mock providers on 127.0.0.1 port 0 that record what they receive and answer as
//! scripted, the real proxy started in-process on a config file in a temporary folder, and a client.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use switchyard::app::{App, Options};
pub use switchyard::config::{EnvAndFiles, SecretSource};

/// A request as a mock provider received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    /// Path and query.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

/// How a mock provider answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub delay: Duration,
    /// Never answer (the connection stays open).
    pub hang: bool,
    /// Read the whole request, then reset the connection (TCP RST) instead of answering.
    pub reset: bool,
    /// Whether the request is recorded as received (the provider took it, and may have charged it)
    /// before the answer; `false` only makes sense with `reset` (the provider lost it).
    pub record: bool,
}

impl Reply {
    pub fn ok(body: &str) -> Self {
        Self::status(200, body)
    }
    pub fn status(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from(body.to_owned()),
            delay: Duration::ZERO,
            hang: false,
            reset: false,
            record: true,
        }
    }
    pub fn hang() -> Self {
        Self {
            hang: true,
            ..Self::ok("")
        }
    }
    /// Reads the whole request, records it (the provider may have charged it), then resets the
    /// connection without answering.
    pub fn reset() -> Self {
        Self {
            reset: true,
            ..Self::ok("")
        }
    }
    /// Reads the whole request and resets the connection without recording it: the provider lost it.
    pub fn reset_unrecorded() -> Self {
        Self {
            record: false,
            ..Self::reset()
        }
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

type Handler = Arc<dyn Fn(&Received) -> Reply + Send + Sync>;

/// A scripted provider.
pub struct MockProvider {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
    /// Set to `true` to stop listening and close every open connection.
    down: tokio::sync::watch::Sender<bool>,
    /// Connections accepted and not yet closed, and whether the listener is still open.
    open: Arc<AtomicUsize>,
    listening: Arc<AtomicBool>,
}

impl Drop for MockProvider {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.down.send(true);
    }
}

/// A second handle on an accepted socket, so that the mock can reset or half-close a connection that
/// hyper owns: both handles share one socket, which closes when the last of them is dropped.
fn dup_socket(stream: TcpStream) -> std::io::Result<(TcpStream, TcpStream)> {
    let std = stream.into_std()?;
    let dup = std.try_clone()?;
    Ok((TcpStream::from_std(std)?, TcpStream::from_std(dup)?))
}

/// Closes a connection the way a provider closing an idle keep-alive connection does: FIN, then wait
/// (bounded) until the client closed its side too, so the client has seen the close.
async fn close_and_wait(socket: TcpStream) {
    let mut socket = socket;
    if socket.shutdown().await.is_err() {
        return;
    }
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

impl MockProvider {
    /// Starts a plain-HTTP mock answering with `handler`.
    pub async fn start(handler: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> Self {
        Self::start_with(None, handler).await
    }

    /// Starts a mock; with `tls`, it speaks TLS (ALPN as configured in the acceptor).
    pub async fn start_with(
        tls: Option<tokio_rustls::TlsAcceptor>,
        handler: impl Fn(&Received) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let rec = Arc::clone(&received);
        let (down, down_rx) = tokio::sync::watch::channel(false);
        let open = Arc::new(AtomicUsize::new(0));
        let listening = Arc::new(AtomicBool::new(true));
        let (open_c, listening_c) = (Arc::clone(&open), Arc::clone(&listening));
        let task = tokio::spawn(async move {
            let mut stop = down_rx.clone();
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    _ = stop.wait_for(|down| *down) => break,
                };
                let Ok((stream, dup)) = dup_socket(stream) else {
                    continue;
                };
                open_c.fetch_add(1, Ordering::SeqCst);
                let dup = Arc::new(dup);
                let (rec, handler, tls) = (Arc::clone(&rec), Arc::clone(&handler), tls.clone());
                let (open, mut down) = (Arc::clone(&open_c), down_rx.clone());
                tokio::spawn(async move {
                    let socket = Arc::clone(&dup);
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (rec, handler, socket) =
                            (Arc::clone(&rec), Arc::clone(&handler), Arc::clone(&socket));
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let r = Received {
                                method: parts.method,
                                uri: parts
                                    .uri
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default(),
                                headers: parts.headers,
                                body,
                                version: parts.version,
                            };
                            let reply = handler(&r);
                            if reply.record {
                                rec.lock().unwrap().push(r);
                            }
                            if reply.reset {
                                // Closing with a zero linger sends RST instead of FIN; the error
                                // makes hyper drop the connection without answering.
                                socket.set_zero_linger()?;
                                return Err(std::io::Error::other("scripted reset"));
                            }
                            if reply.hang {
                                std::future::pending::<()>().await;
                            }
                            tokio::time::sleep(reply.delay).await;
                            let mut resp = Response::new(Full::new(reply.body));
                            *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap();
                            for (k, v) in reply.headers {
                                resp.headers_mut().append(
                                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                                    http::HeaderValue::from_str(&v).unwrap(),
                                );
                            }
                            Ok::<_, std::io::Error>(resp)
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let serve = async {
                        match tls {
                            None => {
                                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                            }
                            Some(acceptor) => {
                                if let Ok(tls_stream) = acceptor.accept(stream).await {
                                    let _ = builder
                                        .serve_connection(TokioIo::new(tls_stream), svc)
                                        .await;
                                }
                            }
                        }
                    };
                    let closed_by_us = tokio::select! {
                        _ = serve => false,
                        _ = down.wait_for(|down| *down) => true,
                    };
                    // hyper's handle is gone; the socket lives on in `dup` alone.
                    if closed_by_us {
                        if let Ok(socket) = Arc::try_unwrap(dup) {
                            close_and_wait(socket).await;
                        }
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
            listening_c.store(false, Ordering::SeqCst);
        });
        Self {
            addr,
            received,
            task,
            down,
            open,
            listening,
        }
    }

    /// The provider goes down: it stops listening (new connections are refused) and closes every
    /// open connection, idle keep-alive ones included, each with a FIN. Returns once the listener is
    /// closed and every client has closed its side of those connections (so a client's pool has seen
    /// them die), or after 2 s; returns whether that happened.
    pub async fn go_down(&self) -> bool {
        let _ = self.down.send(true);
        eventually(Duration::from_secs(2), || async {
            !self.listening.load(Ordering::SeqCst) && self.open.load(Ordering::SeqCst) == 0
        })
        .await
    }

    /// Connections accepted and still open.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

/// An address nothing listens on (bound, then closed).
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// The proxy, running in-process on a config file in its own temporary folder.
pub struct TestProxy {
    pub app: Option<App>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl TestProxy {
    /// Starts on `yaml` without a file watch.
    pub async fn start(yaml: &str) -> Self {
        Self::start_opts(yaml, false).await
    }

    /// Starts on `yaml`; `watch` turns the file watch on.
    pub async fn start_opts(yaml: &str, watch: bool) -> Self {
        Self::try_start(yaml, watch).await.unwrap()
    }

    pub async fn try_start(yaml: &str, watch: bool) -> Result<Self, switchyard::app::StartError> {
        // Secret files are per-test temporary files; the environment is read, never changed, by tests.
        Self::try_start_with_secrets(yaml, watch, EnvAndFiles).await
    }

    /// Starts on `yaml` without a file watch, reading the secrets it names from `secrets` (never from
    /// the process environment, which tests running in parallel share).
    pub async fn start_with_secrets(yaml: &str, secrets: impl SecretSource + 'static) -> Self {
        Self::try_start_with_secrets(yaml, false, secrets)
            .await
            .unwrap()
    }

    pub async fn try_start_with_secrets(
        yaml: &str,
        watch: bool,
        secrets: impl SecretSource + 'static,
    ) -> Result<Self, switchyard::app::StartError> {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("routes.yaml");
        std::fs::write(&config_path, yaml).unwrap();
        let mut options = Options::new(config_path.clone()).with_secrets(secrets);
        options.watch = watch;
        options.sighup = false;
        let app = App::start(options).await?;
        Ok(Self {
            app: Some(app),
            dir,
            config_path,
        })
    }

    pub fn app(&self) -> &App {
        self.app.as_ref().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.app().shop_addr(), path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.app().admin_addr(), path)
    }

    /// Replaces the config file the way deploy tools do: write a new file, rename it over the old.
    pub fn write_config(&self, yaml: &str) {
        let tmp = self.dir.path().join(".routes.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    pub async fn shutdown(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
    }
}

/// A config with the proxy and admin on port 0 and one route `payments` (prefix `/`) to `providers`,
/// in priority order; `extra_provider` and `extra_route` are appended to each provider and the route.
pub fn config(providers: &[(&str, &str)], extra_provider: &str, extra_route: &str) -> String {
    let mut y = String::from("listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nproviders:\n");
    for (name, url) in providers {
        y.push_str(&format!("  {name}:\n    url: {url}\n"));
        for line in extra_provider.lines().filter(|l| !l.trim().is_empty()) {
            y.push_str(&format!("    {line}\n"));
        }
    }
    y.push_str("routes:\n  - name: payments\n    match: { path_prefix: / }\n    targets:\n");
    for (i, (name, _)) in providers.iter().enumerate() {
        y.push_str(&format!("      - {{ provider: {name}, priority: {i} }}\n"));
    }
    for line in extra_route.lines().filter(|l| !l.trim().is_empty()) {
        y.push_str(&format!("    {line}\n"));
    }
    y
}

/// A response as the shop sees it.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

/// An HTTP/1.1 client.
pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 prior-knowledge (h2c) client.
pub fn h2c_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Sends a request and reads the whole answer.
pub async fn send_with(client: &TestClient, req: Request<Full<Bytes>>) -> Answer {
    let resp = client
        .request(req)
        .await
        .expect("request failed at the transport");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn send(req: Request<Full<Bytes>>) -> Answer {
    send_with(&client(), req).await
}

pub async fn get(url: &str) -> Answer {
    send(Request::get(url).body(Full::default()).unwrap()).await
}

pub async fn post(url: &str, body: &str) -> Answer {
    send(
        Request::post(url)
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap(),
    )
    .await
}

pub async fn post_with_key(url: &str, key: &str, body: &str) -> Answer {
    send(
        Request::post(url)
            .header("idempotency-key", key)
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap(),
    )
    .await
}

/// Fetches `/metrics` and returns the value of the series whose line starts with `series` (name and
/// labels as written, e.g. `switchyard_requests_total{code="200"`), summed over matching lines.
pub async fn metric(proxy: &TestProxy, series: &str) -> f64 {
    let text = get(&proxy.admin_url("/metrics")).await.text();
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `check` every 20 ms until it is true or `limit` passes; returns whether it became true.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A private CA and a server certificate for 127.0.0.1 signed by it, with the CA in a PEM file the
/// proxy is told to trust.
pub struct TestTls {
    /// The CA certificate file.
    pub ca_file: PathBuf,
    /// The server's certificate and key, PEM files (for servers other than the mocks).
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    _dir: tempfile::TempDir,
    cert: rustls_pki_types::CertificateDer<'static>,
    key: Vec<u8>,
}

impl TestTls {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "switchyard outcomes CA");
        let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, issuer.pem()).unwrap();
        let cert_file = dir.path().join("server.pem");
        std::fs::write(&cert_file, cert.pem()).unwrap();
        let key_file = dir.path().join("server.key");
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        Self {
            ca_file,
            cert_file,
            key_file,
            _dir: dir,
            cert: cert.der().clone(),
            key: key.serialize_der(),
        }
    }

    /// A TLS acceptor offering `alpn`.
    pub fn acceptor(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(
            rustls_pki_types::PrivatePkcs8KeyDer::from(self.key.clone()),
        );
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![self.cert.clone()], key)
        .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    /// The provider settings (one per line) that make the proxy trust this CA.
    pub fn provider_yaml(&self) -> String {
        format!(
            "tls: {{ ca_file: \"{}\" }}",
            self.ca_file.to_str().expect("a UTF-8 temporary path")
        )
    }
}

/// What an HTTP/2 mock does with the next stream (or, for [`H2Action::GoAwayUnprocessed`], the next
/// connection).
#[derive(Debug, Clone)]
pub enum H2Action {
    /// Reads the request, records it, answers.
    Answer(Reply),
    /// Records the request's head and resets the stream with REFUSED_STREAM, body unread.
    RefuseStream,
    /// On a new connection: waits until the client's first HEADERS frame has arrived, then, without
    /// processing it, sends GOAWAY with last-stream-id 0 (below the client's stream) and closes.
    GoAwayUnprocessed,
    /// Reads the whole request and records it (the provider may have charged it), then sends GOAWAY
    /// with last-stream-id at this stream and closes the connection without answering.
    GoAwayAfterRead,
}

/// A provider speaking HTTP/2 over TLS (ALPN h2 only) through the `h2` crate's server, so the test
/// controls stream resets and GOAWAY frames. Actions are taken from a script, then `fallback`.
pub struct H2Provider {
    pub addr: SocketAddr,
    pub tls: TestTls,
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<std::collections::VecDeque<H2Action>>>,
    goaways: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for H2Provider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl H2Provider {
    /// Starts a mock taking `script` in order, then `fallback` for ever.
    pub async fn start(script: Vec<H2Action>, fallback: H2Action) -> Self {
        let tls = TestTls::new();
        let acceptor = tls.acceptor(&[b"h2"]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script.into_iter().collect()));
        let goaways = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let state = H2State {
            received: Arc::clone(&received),
            script: Arc::clone(&script),
            fallback,
            goaways: Arc::clone(&goaways),
        };
        let conns = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let (acceptor, state) = (acceptor.clone(), state.clone());
                tasks.spawn(async move {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        state.serve(tls).await;
                    }
                });
            }
        });
        Self {
            addr,
            tls,
            received,
            script,
            goaways,
            connections,
            task,
        }
    }

    /// The provider's URL (https; the proxy must trust [`TestTls::provider_yaml`]).
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// Every request whose head reached the provider's application, refused ones included.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// GOAWAY frames sent with a last-stream-id below the client's stream.
    pub fn unprocessed_goaways(&self) -> usize {
        self.goaways.load(Ordering::SeqCst)
    }

    /// Connections accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Appends `action` to the script.
    pub fn then(&self, action: H2Action) {
        self.script.lock().unwrap().push_back(action);
    }
}

#[derive(Clone)]
struct H2State {
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<std::collections::VecDeque<H2Action>>>,
    fallback: H2Action,
    goaways: Arc<AtomicUsize>,
}

impl H2State {
    fn next(&self) -> H2Action {
        self.script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| self.fallback.clone())
    }

    async fn serve(self, tls: tokio_rustls::server::TlsStream<TcpStream>) {
        let unprocessed = {
            let mut script = self.script.lock().unwrap();
            let next = script
                .front()
                .cloned()
                .unwrap_or_else(|| self.fallback.clone());
            if matches!(next, H2Action::GoAwayUnprocessed) {
                script.pop_front();
                true
            } else {
                false
            }
        };
        if unprocessed {
            self.go_away_unprocessed(tls).await;
            return;
        }
        let Ok(mut conn) = h2::server::handshake(tls).await else {
            return;
        };
        let (close_tx, mut close_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        loop {
            let accepted = tokio::select! {
                a = conn.accept() => a,
                _ = close_rx.recv() => {
                    // GOAWAY names the last stream the server took (ours), then the connection ends.
                    conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                    let _ = std::future::poll_fn(|cx| conn.poll_closed(cx)).await;
                    return;
                }
            };
            let Some(Ok((req, mut respond))) = accepted else {
                return;
            };
            let state = self.clone();
            let close = close_tx.clone();
            let action = state.next();
            tokio::spawn(async move {
                let (parts, mut body) = req.into_parts();
                let mut r = Received {
                    method: parts.method,
                    uri: parts
                        .uri
                        .path_and_query()
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                    headers: parts.headers,
                    body: Bytes::new(),
                    version: parts.version,
                };
                if matches!(action, H2Action::RefuseStream) {
                    state.received.lock().unwrap().push(r);
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                    return;
                }
                let mut data = Vec::new();
                while let Some(chunk) = body.data().await {
                    let Ok(chunk) = chunk else { return };
                    let _ = body.flow_control().release_capacity(chunk.len());
                    data.extend_from_slice(&chunk);
                }
                r.body = Bytes::from(data);
                state.received.lock().unwrap().push(r);
                match action {
                    H2Action::Answer(reply) => {
                        tokio::time::sleep(reply.delay).await;
                        let mut resp = Response::new(());
                        *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap();
                        for (k, v) in reply.headers {
                            resp.headers_mut().append(
                                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                                http::HeaderValue::from_str(&v).unwrap(),
                            );
                        }
                        let end = reply.body.is_empty();
                        if let Ok(mut send) = respond.send_response(resp, end) {
                            if !end {
                                let _ = send.send_data(reply.body, true);
                            }
                        }
                    }
                    _ => {
                        let _ = close.send(());
                        // Never answered: the stream dies with the connection.
                        std::future::pending::<()>().await;
                    }
                }
            });
        }
    }

    /// Reads the connection preface and frames until the client's first HEADERS frame is in, then
    /// hands those bytes to the h2 server, which sends GOAWAY before processing any frame after the
    /// preface: its last-stream-id is 0, below the client's stream.
    async fn go_away_unprocessed(&self, mut tls: tokio_rustls::server::TlsStream<TcpStream>) {
        const PREFACE: usize = 24;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let got_headers = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
                let mut at = PREFACE;
                while seen.len() >= at + 9 {
                    let len = usize::from(seen[at]) << 16
                        | usize::from(seen[at + 1]) << 8
                        | usize::from(seen[at + 2]);
                    if seen[at + 3] == 0x1 {
                        return true;
                    }
                    at += 9 + len;
                }
            }
        })
        .await;
        if got_headers != Ok(true) {
            return;
        }
        let Ok(mut conn) = h2::server::handshake(Prefixed::new(seen, tls)).await else {
            return;
        };
        self.goaways.fetch_add(1, Ordering::SeqCst);
        conn.abrupt_shutdown(h2::Reason::NO_ERROR);
        let _ = std::future::poll_fn(|cx| conn.poll_closed(cx)).await;
    }
}

/// An I/O stream that first yields bytes already read from it.
struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
