//! Shutdown: stop accepting, fail readiness, let in-flight requests finish up to the drain timeout.

use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test]
async fn in_flight_requests_finish_and_new_connections_are_refused() {
    let slow = MockProvider::start(|_| Reply::ok("done").delay(Duration::from_millis(500))).await;
    let proxy = TestProxy::start(&config(&[("psp", &slow.url())], "", "")).await;
    let shop = proxy.app().shop_addr();
    let ready = proxy.admin_url("/readyz");
    assert_eq!(get(&ready).await.status, 200);

    let url = proxy.url("/v1/x");
    let in_flight = tokio::spawn(async move { post(&url, "").await });
    assert!(eventually(Duration::from_secs(2), || async { slow.count() == 1 }).await);

    let shutdown = tokio::spawn(proxy.shutdown());
    // While draining: readiness fails, the shop listener refuses new connections.
    assert!(
        eventually(Duration::from_secs(2), || async {
            tokio::net::TcpStream::connect(shop).await.is_err()
        })
        .await,
        "the shop listener still accepts"
    );
    let readyz = get(&ready).await;
    assert_eq!(readyz.status, 503, "readyz must fail while draining");

    let answer = in_flight.await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "done");
    shutdown.await.unwrap();
}

#[tokio::test]
async fn drain_stops_waiting_at_the_drain_timeout() {
    let hang = MockProvider::start(|_| Reply::hang()).await;
    let yaml = config(&[("psp", &hang.url())], "timeout: 30s", "timeout: 60s").replacen(
        "providers:",
        "drain_timeout: 300ms\nproviders:",
        1,
    );
    let proxy = TestProxy::start(&yaml).await;
    let url = proxy.url("/v1/x");
    let stuck = tokio::spawn(async move {
        let req = http::Request::post(url).body(Default::default()).unwrap();
        client().request(req).await.map(|r| r.status())
    });
    assert!(eventually(Duration::from_secs(2), || async { hang.count() == 1 }).await);
    let start = Instant::now();
    proxy.shutdown().await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "returned before the drain timeout: {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "drain did not stop at its timeout: {took:?}"
    );
    stuck.abort();
}
