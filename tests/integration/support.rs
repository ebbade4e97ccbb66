//! Test support: mock providers on 127.0.0.1 port 0 that record what they receive and answer as
//! scripted, the real proxy started in-process on a config file in a temporary folder, and a client.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

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
        }
    }
    pub fn hang() -> Self {
        Self {
            hang: true,
            ..Self::ok("")
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
}

impl Drop for MockProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
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
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (rec, handler, tls) = (Arc::clone(&rec), Arc::clone(&handler), tls.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (rec, handler) = (Arc::clone(&rec), Arc::clone(&handler));
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
                            rec.lock().unwrap().push(r);
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
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
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
                });
            }
        });
        Self {
            addr,
            received,
            task,
        }
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
