//! A bare hyper reverse proxy: the floor of a proxy built on hyper 1.x and tokio, for
//! `--compare hyper`. Not a product, and not a proxy to deploy.
//!
//! switchyard is built on the same stack; `direct` (no proxy) is the floor for latency. This is the
//! floor for a *proxy*: what one hop through hyper's HTTP/1.1 server and hyper-util's pooled client
//! costs in CPU per request and memory when the proxy does nothing else. The difference between it and
//! switchyard is what switchyard's own features cost (idempotency store, breakers, retries, metrics,
//! ...); what it costs itself is the stack's.
//!
//! It is configured like switchyard's defaults, so that the comparison is fair: one `current_thread`
//! runtime (the `bare-proxy` binary), hyper's HTTP/1.1 server on every accepted connection (TCP_NODELAY,
//! keep-alive, switchyard's 30 s header read timeout), and a `client::legacy::Client` with
//! TCP_NODELAY, the 250 ms connect timeout and the 256 idle connections per host of the switchyard
//! config loadtest writes, and hyper's 90 s idle timeout. Every request goes to one upstream (the
//! primary provider) with its URI rewritten to `http://UPSTREAM/PATH?QUERY` and its `Host` header
//! removed (the client sets it); bodies stream both ways; the upstream's status and headers come
//! back as they are. Hop-by-hop headers are not touched. When the upstream request fails it answers
//! 502 with a short text body and [`ERROR_HEADER`]. There are no retries, no failover, no health
//! checks, no timeouts on the upstream's answer and no logs: like `direct`, it fails while the
//! primary does.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// The line it prints on stdout once it listens, followed by the bound address.
pub const READY_PREFIX: &str = "bare-proxy listening on ";

/// Header on the answers the proxy made itself (a 502 when the upstream request failed); never on
/// an upstream's answer.
pub const ERROR_HEADER: &str = "x-bare-proxy-error";

/// The value of [`ERROR_HEADER`].
pub const ERROR_VALUE: &str = "upstream_request_failed";

/// Idle upstream connections kept per host: `pool_max_idle` of the switchyard config loadtest writes.
pub const POOL_MAX_IDLE: usize = 256;

/// Connect timeout to the upstream: `connect_timeout` of the switchyard config loadtest writes.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);

/// How long an idle upstream connection is kept (hyper's default, and switchyard's).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a client may take to send a request's headers (switchyard's default).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The body of an answer: the upstream's, streamed, or the proxy's own.
pub type Body = Either<Incoming, Full<Bytes>>;

type Upstreams = Client<HttpConnector, Incoming>;

/// The upstream client.
fn client() -> Upstreams {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE)
        .build(connector)
}

/// Serves `listener` for good, forwarding every request to `upstream` (`host:port`). Each
/// connection is a task of the current runtime.
pub async fn serve(listener: TcpListener, upstream: Authority) {
    let client = client();
    let mut server = http1::Builder::new();
    server
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (client, upstream, server) = (client.clone(), upstream.clone(), server.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| forward(client.clone(), upstream.clone(), req));
            // A connection that breaks or times out just ends.
            let _ = server.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// Forwards one request to `upstream` and passes its answer back, or answers 502.
async fn forward(
    client: Upstreams,
    upstream: Authority,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.uri = match Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(upstream)
        .path_and_query(path)
        .build()
    {
        Ok(uri) => uri,
        Err(_) => return Ok(own_answer(StatusCode::BAD_REQUEST, "bad request target\n")),
    };
    parts.headers.remove(HOST);
    match client.request(Request::from_parts(parts, body)).await {
        Ok(answer) => Ok(answer.map(Either::Left)),
        Err(e) => Ok(own_answer(
            StatusCode::BAD_GATEWAY,
            &format!("bare-proxy: upstream request failed: {e}\n"),
        )),
    }
}

fn own_answer(status: StatusCode, text: &str) -> Response<Body> {
    let mut answer = Response::new(Either::Right(Full::new(Bytes::from(text.to_owned()))));
    *answer.status_mut() = status;
    let headers = answer.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(ERROR_HEADER, HeaderValue::from_static(ERROR_VALUE));
    answer
}

/// Binds `listen` and prints [`READY_PREFIX`] and the bound address on stdout.
pub async fn bind(listen: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(listen).await?;
    println!("{READY_PREFIX}{}", listener.local_addr()?);
    Ok(listener)
}

/// This workspace's `Cargo.lock`, which pins the stack the binary is built with.
const CARGO_LOCK: &str = include_str!("../../Cargo.lock");

/// The version line of the binary: `bare-proxy 0.1.0: hyper 1.12.0, hyper-util 0.1.21, tokio 1.54.1`.
pub fn version_line() -> String {
    let stack: Vec<String> = ["hyper", "hyper-util", "tokio"]
        .iter()
        .map(|name| format!("{name} {}", locked_version(CARGO_LOCK, name).unwrap_or("?")))
        .collect();
    format!(
        "bare-proxy {}: {}",
        env!("CARGO_PKG_VERSION"),
        stack.join(", ")
    )
}

/// The version of package `name` in the text of a `Cargo.lock` (the first, if there are several).
pub fn locked_version<'a>(lock: &'a str, name: &str) -> Option<&'a str> {
    let wanted = format!("name = \"{name}\"");
    let mut lines = lock.lines().map(str::trim);
    lines.find(|l| *l == wanted)?;
    lines
        .next()?
        .strip_prefix("version = \"")?
        .strip_suffix('"')
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn reads_locked_versions() {
        let lock = "[[package]]\nname = \"hyper-util\"\nversion = \"0.1.21\"\n\n[[package]]\nname = \"hyper\"\nversion = \"1.12.0\"\n";
        assert_eq!(locked_version(lock, "hyper"), Some("1.12.0"));
        assert_eq!(locked_version(lock, "hyper-util"), Some("0.1.21"));
        assert_eq!(locked_version(lock, "tokio"), None);
        let line = version_line();
        assert!(line.starts_with("bare-proxy "), "{line}");
        assert!(line.contains("hyper 1."), "{line}");
        assert!(!line.contains('?'), "{line}");
    }

    /// An upstream that answers with what it got: method, URI, Host header and body.
    async fn echo_upstream() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let service = service_fn(|req: Request<Incoming>| async move {
                        let head = format!(
                            "{} {} host={}\n",
                            req.method(),
                            req.uri(),
                            req.headers()
                                .get(HOST)
                                .and_then(|h| h.to_str().ok())
                                .unwrap_or("-")
                        );
                        let body = req.into_body().collect().await?.to_bytes();
                        let mut answer = Response::new(Full::new(Bytes::from(
                            [head.as_bytes(), &body].concat(),
                        )));
                        *answer.status_mut() = StatusCode::CREATED;
                        answer
                            .headers_mut()
                            .insert("x-upstream", HeaderValue::from_static("echo"));
                        Ok::<_, hyper::Error>(answer)
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    async fn proxy_to(upstream: SocketAddr) -> SocketAddr {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream: Authority = upstream.to_string().parse().unwrap();
        tokio::spawn(serve(listener, upstream));
        addr
    }

    #[tokio::test(flavor = "current_thread")]
    async fn forwards_to_the_upstream_and_answers_502_without_it() {
        let proxy = proxy_to(echo_upstream().await).await;
        let client = crate::control::client(2);
        let req = Request::post(format!("http://{proxy}/v1/payment_intents?x=1"))
            .body(Full::new(Bytes::from_static(b"amount=100")))
            .unwrap();
        let answer = client.request(req).await.unwrap();
        assert_eq!(answer.status(), StatusCode::CREATED);
        assert_eq!(answer.headers()["x-upstream"], "echo");
        assert!(answer.headers().get(ERROR_HEADER).is_none());
        let body = answer.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&body);
        // The client set Host to the upstream, not to the proxy.
        assert!(
            text.starts_with("POST /v1/payment_intents?x=1 host=127.0.0.1:"),
            "{text}"
        );
        assert!(!text.contains(&format!("host={proxy}")), "{text}");
        assert!(text.ends_with("amount=100"), "{text}");

        // An upstream that refuses connections.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let gone = closed.local_addr().unwrap();
        drop(closed);
        let proxy = proxy_to(gone).await;
        let req = Request::get(format!("http://{proxy}/x"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let answer = client.request(req).await.unwrap();
        assert_eq!(answer.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(answer.headers()[ERROR_HEADER], ERROR_VALUE);
    }
}
