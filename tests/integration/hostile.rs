//! Hostile and broken clients: stalled and trickled bodies, too many connections, too many buffered
//! bytes, silent HTTP/2 connections, partial prefaces, many headers, and requests still in flight
//! when a shutdown's drain runs out. Each test uses small configured limits and a few connections.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// `yaml` with a `limits:` section made of `lines` (each indented under it).
fn with_limits(yaml: &str, lines: &[&str]) -> String {
    let mut out = String::from("limits:\n");
    for l in lines {
        out.push_str(&format!("  {l}\n"));
    }
    out.push_str(yaml);
    out
}

/// Reads until the server closes the connection, for at most `limit`. `Some(bytes read)` when it
/// closed (or reset) in time, `None` when it was still open.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read_all).await.ok()?;
    Some(got)
}

/// A proxy with a stripe webhook on a listener of its own; returns it, that listener's address, and
/// the shop (kept alive) and secret folder.
async fn webhook_proxy(
    limits: &[&str],
) -> (TestProxy, SocketAddr, MockProvider, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("k");
    std::fs::write(&secret, "whsec_k\n").unwrap();
    let shop = MockProvider::start(|_| Reply::ok("{}")).await;
    let provider = MockProvider::start(|_| Reply::ok("{}")).await;
    let yaml = format!(
        "{}webhooks:\n  - name: stripe-events\n    path: /webhooks/stripe\n    listen: 127.0.0.1:0\n    forward_to: {}/hook\n    verify: {{ scheme: stripe, secrets_file: [\"{}\"] }}\n",
        config(&[("psp", &provider.url())], "", ""),
        shop.url(),
        secret.display()
    );
    let proxy = TestProxy::start(&with_limits(&yaml, limits)).await;
    let addr = proxy
        .app()
        .webhook_addr("127.0.0.1:0".parse().unwrap())
        .expect("the webhook listener is bound");
    (proxy, addr, shop, dir)
}

#[tokio::test]
async fn a_stalled_webhook_body_is_answered_408_and_closed_at_the_deadline() {
    let (proxy, addr, shop, _dir) =
        webhook_proxy(&["webhooks: { body_read_timeout: 300ms }"]).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // A signature header that could verify (fresh, well formed): the body must be read to tell.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let head = format!(
        "POST /webhooks/stripe HTTP/1.1\r\nhost: x\r\nstripe-signature: t={now},v1={}\r\ncontent-length: 1000\r\n\r\n0123456789",
        "0".repeat(64)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = closed_within(&mut stream, Duration::from_secs(5))
        .await
        .expect("the connection of a stalled body stays open");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert_eq!(shop.count(), 0);
    assert_eq!(
        metric(
            &proxy,
            "switchyard_webhooks_total{result=\"body_timeout\",webhook=\"stripe-events\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_slow_upload_that_outlasts_the_routes_timeout_is_a_408_not_a_504() {
    // 8 bytes a second never idles, and the listener's body deadline (30 s) is far: the route's
    // 1 s timeout ends it, and the shop is told its body did not arrive (nothing was sent anywhere).
    let provider = MockProvider::start(|_| Reply::ok("{}")).await;
    let proxy = TestProxy::start(&config(&[("psp", &provider.url())], "", "timeout: 1s")).await;
    let stream = TcpStream::connect(proxy.app().shop_addr()).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let trickle = tokio::spawn(async move {
        let _ = write
            .write_all(b"POST /v1/x HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n")
            .await;
        for _ in 0..100 {
            if write.write_all(b"aaaa").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(4), async {
        let mut buf = [0u8; 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"}") {
                        return;
                    }
                }
            }
        }
    })
    .await;
    trickle.abort();
    let answer = String::from_utf8_lossy(&got);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert_eq!(provider.count(), 0);
}

#[tokio::test]
async fn a_trickled_body_is_cut_at_the_deadline() {
    let provider = MockProvider::start(|_| Reply::ok("{}")).await;
    let yaml = with_limits(
        &config(&[("psp", &provider.url())], "", ""),
        &["shop: { body_read_timeout: 500ms }"],
    );
    let proxy = TestProxy::start(&yaml).await;
    let stream = TcpStream::connect(proxy.app().shop_addr()).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let trickle = tokio::spawn(async move {
        let _ = write
            .write_all(b"POST /v1/x HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n")
            .await;
        // One byte every 100 ms: the body would take 10 s.
        for _ in 0..100 {
            if write.write_all(b"a").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(4), async {
        let mut buf = [0u8; 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    trickle.abort();
    assert!(closed.is_ok(), "a trickled body keeps its connection open");
    let answer = String::from_utf8_lossy(&got);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert_eq!(provider.count(), 0);
}

#[tokio::test]
async fn the_connection_limit_closes_extra_connections_and_counts_them() {
    let provider = MockProvider::start(|_| Reply::ok("{}")).await;
    let yaml = with_limits(
        &config(&[("psp", &provider.url())], "", ""),
        &["shop: { max_connections: 3 }"],
    );
    let proxy = TestProxy::start(&yaml).await;
    let shop = proxy.app().shop_addr();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(shop).await.unwrap());
    }
    assert!(
        eventually(Duration::from_secs(2), || async {
            metric(&proxy, "switchyard_listener_connections{listener=\"shop\"}").await == 3.0
        })
        .await
    );
    let mut extra = TcpStream::connect(shop).await.unwrap();
    assert!(
        closed_within(&mut extra, Duration::from_secs(2))
            .await
            .is_some(),
        "a connection past the limit stays open"
    );
    assert_eq!(
        metric(
            &proxy,
            "switchyard_overload_rejections_total{listener=\"shop\",reason=\"connections\"}"
        )
        .await,
        1.0
    );
    // The admin listener is not behind the shop's limit.
    assert_eq!(get(&proxy.admin_url("/healthz")).await.status, 200);
    // Room again once one closes.
    held.pop();
    let url = proxy.url("/v1/x");
    assert!(
        eventually(Duration::from_secs(2), || async {
            client()
                .request(Request::get(&url).body(Full::default()).unwrap())
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await
    );
}

#[tokio::test]
async fn the_buffer_budget_answers_503_overloaded_then_serves_again() {
    let provider = MockProvider::start(|_| Reply::ok("{}")).await;
    let yaml = with_limits(
        &config(&[("psp", &provider.url())], "", "max_body: 40KiB"),
        &["max_buffered_bytes: 64KiB"],
    );
    let proxy = TestProxy::start(&yaml).await;
    // A held upload that declares 40 000 bytes takes them from the budget at once.
    let mut holder = TcpStream::connect(proxy.app().shop_addr()).await.unwrap();
    holder
        .write_all(b"POST /v1/x HTTP/1.1\r\nhost: x\r\ncontent-length: 40000\r\n\r\nabc")
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(2), || async {
            metric(&proxy, "switchyard_buffered_bytes").await == 40000.0
        })
        .await
    );
    let body = "x".repeat(30_000);
    let a = post(&proxy.url("/v1/x"), &body).await;
    assert_eq!(a.status, 503, "{}", a.text());
    assert_eq!(a.header("x-switchyard-error"), Some("overloaded"));
    assert!(a.header("retry-after").is_some());
    assert_eq!(provider.count(), 0);
    assert_eq!(
        metric(
            &proxy,
            "switchyard_overload_rejections_total{listener=\"shop\",reason=\"buffered_bytes\"}"
        )
        .await,
        1.0
    );
    // The held upload goes away: its bytes come back, and the next upload is served.
    drop(holder);
    assert!(
        eventually(Duration::from_secs(2), || async {
            metric(&proxy, "switchyard_buffered_bytes").await == 0.0
        })
        .await
    );
    let a = post(&proxy.url("/v1/x"), &body).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(provider.received()[0].body.len(), 30_000);
}

/// The HTTP/2 preface and an empty SETTINGS frame.
const H2_HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test]
async fn an_idle_h2c_connection_is_closed_after_the_idle_timeout() {
    let provider = MockProvider::start(|_| Reply::ok("{}")).await;
    let yaml = with_limits(
        &config(&[("psp", &provider.url())], "", ""),
        &["h2_idle_timeout: 300ms", "h2_keep_alive_timeout: 300ms"],
    );
    let proxy = TestProxy::start(&yaml).await;
    // A working h2c client is served first: the limit is on idleness, not on HTTP/2.
    let a = send_with(
        &h2c_client(),
        Request::get(proxy.url("/v1/x"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200);
    let mut idle = TcpStream::connect(proxy.app().shop_addr()).await.unwrap();
    idle.write_all(H2_HELLO).await.unwrap();
    let got = closed_within(&mut idle, Duration::from_secs(3))
        .await
        .expect("an idle h2c connection stays open");
    // The server's SETTINGS, then a GOAWAY (type 7) before the close.
    assert!(
        got.windows(4).any(|w| w[3] == 0x07 && w[..3] == [0, 0, 8]),
        "no GOAWAY in {got:?}"
    );
}

#[tokio::test]
async fn a_partial_preface_is_closed_after_the_preface_timeout() {
    let provider = MockProvider::start(|_| Reply::ok("{}")).await;
    let yaml = with_limits(
        &config(&[("psp", &provider.url())], "", ""),
        &["preface_timeout: 300ms"],
    );
    let proxy = TestProxy::start(&yaml).await;
    for first in [&b"PRI * HTTP/2.0\r\n"[..], &b""[..]] {
        let mut stream = TcpStream::connect(proxy.app().shop_addr()).await.unwrap();
        stream.write_all(first).await.unwrap();
        assert!(
            closed_within(&mut stream, Duration::from_secs(3))
                .await
                .is_some(),
            "a connection that sent {first:?} stays open"
        );
    }
}

/// A provider that takes up to 1 000 header fields (the shared mock stops at hyper's default of 100)
/// and answers with how many it got.
async fn many_headers_provider() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| {
                    let n = req.headers().len();
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(n.to_string()),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .max_headers(1000)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn more_than_100_headers_are_accepted_when_configured() {
    let (provider, _task) = many_headers_provider().await;
    let yaml = with_limits(
        &config(&[("psp", &format!("http://{provider}"))], "", ""),
        &["max_headers: 200"],
    );
    let proxy = TestProxy::start(&yaml).await;
    let mut req = Request::get(proxy.url("/v1/x"));
    for i in 0..101 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let a = send(req.body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let forwarded: usize = a.text().parse().unwrap();
    assert!(forwarded > 101, "the provider got {forwarded} headers");
    // And the bound holds past the configured number.
    let mut req = Request::get(proxy.url("/v1/x"));
    for i in 0..201 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let a = send(req.body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(a.status, 431);
}

#[tokio::test]
async fn the_drain_timeout_answers_an_in_flight_payment_503_unknown() {
    let hang = MockProvider::start(|_| Reply::hang()).await;
    let audit = tempfile::tempdir().unwrap();
    let yaml = config(&[("psp", &hang.url())], "timeout: 30s", "timeout: 60s").replacen(
        "providers:",
        &format!(
            "drain_timeout: 300ms\naudit:\n  dir: {}\nproviders:",
            audit.path().display()
        ),
        1,
    );
    let proxy = TestProxy::start(&yaml).await;
    let url = proxy.url("/v1/payment_intents");
    let in_flight = tokio::spawn(async move { post_with_key(&url, "k-1", "amount=1").await });
    assert!(eventually(Duration::from_secs(2), || async { hang.count() == 1 }).await);
    proxy.shutdown().await;
    let a = tokio::time::timeout(Duration::from_secs(5), in_flight)
        .await
        .expect("the in-flight payment got no answer")
        .unwrap();
    assert_eq!(a.status, 503, "{}", a.text());
    assert_eq!(a.header("x-switchyard-error"), Some("shutting_down"));
    assert_eq!(a.header("x-switchyard-outcome"), Some("unknown"));
    // Its audit record was written before the sidecar stopped.
    let mut records = String::new();
    for entry in std::fs::read_dir(audit.path()).unwrap() {
        records.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default());
    }
    assert!(
        records.lines().any(|l| l.contains("\"status\":503")),
        "no audit record of the cut payment in {records}"
    );
}
