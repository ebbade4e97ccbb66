//! Forwarding: what the provider receives, what the shop gets back, and the proxy's own answers.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use switchyard::config::MapSecrets;

use crate::support::*;

fn echo() -> impl Fn(&Received) -> Reply + Send + Sync + 'static {
    |_| Reply::ok(r#"{"id":"pi_1"}"#).header("x-provider-header", "kept")
}

#[tokio::test]
async fn forwards_method_path_query_headers_and_body() {
    let mock = MockProvider::start(echo()).await;
    let proxy = TestProxy::start(&config(&[("psp", &mock.url())], "", "")).await;
    let req = Request::post(proxy.url("/v1/payment_intents?expand[]=customer&limit=3"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("idempotency-key", "order-1")
        .header("x-custom", "a")
        .header("x-custom", "b")
        .body(Full::new(Bytes::from_static(b"amount=1000&currency=eur")))
        .unwrap();
    let answer = send(req).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, r#"{"id":"pi_1"}"#);
    assert_eq!(answer.header("x-provider-header"), Some("kept"));
    assert_eq!(answer.header("x-switchyard-provider"), Some("psp"));

    let got = mock.received();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.method, http::Method::POST);
    assert_eq!(r.uri, "/v1/payment_intents?expand[]=customer&limit=3");
    assert_eq!(r.body, "amount=1000&currency=eur");
    assert_eq!(r.headers["idempotency-key"], "order-1");
    assert_eq!(
        r.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    let custom: Vec<_> = r.headers.get_all("x-custom").iter().collect();
    assert_eq!(custom, ["a", "b"]);
    assert_eq!(
        r.headers["host"],
        mock.addr.to_string(),
        "Host is the provider's"
    );
    for method in ["GET", "PUT", "PATCH", "DELETE"] {
        let req = Request::builder()
            .method(method)
            .uri(proxy.url("/v1/x"))
            .body(Full::default())
            .unwrap();
        assert_eq!(send(req).await.status, 200);
        assert_eq!(mock.received().last().unwrap().method.as_str(), method);
    }
}

#[tokio::test]
async fn header_hygiene_both_ways() {
    let mock = MockProvider::start(|_| {
        Reply::ok("{}")
            .header("connection", "x-hop")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5")
    })
    .await;
    let proxy = TestProxy::start(&config(&[("psp", &mock.url())], "", "")).await;
    let req = Request::post(proxy.url("/v1/x"))
        .header("connection", "x-shop-hop")
        .header("x-shop-hop", "1")
        .header("proxy-authorization", "Basic c2hvcA==")
        .header("te", "trailers")
        .header("x-forwarded-for", "10.1.2.3")
        .header("forwarded", "for=10.1.2.3")
        .header("x-real-ip", "10.1.2.3")
        .header("via", "1.1 shop-gw")
        .header("cookie", "session=abc")
        .header("authorization", "Bearer shop-own-key")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let answer = send(req).await;
    assert_eq!(answer.status, 200);
    assert!(
        answer.headers.get("x-hop").is_none(),
        "provider's hop-by-hop leaked to the shop"
    );
    assert!(answer.headers.get("keep-alive").is_none());

    let r = &mock.received()[0];
    for h in [
        "x-shop-hop",
        "proxy-authorization",
        "te",
        "x-forwarded-for",
        "forwarded",
        "x-real-ip",
        "via",
        "cookie",
    ] {
        assert!(r.headers.get(h).is_none(), "{h} reached the provider");
    }
    // Without provider auth configured, the shop's own credential is passed through.
    assert_eq!(r.headers["authorization"], "Bearer shop-own-key");
}

#[tokio::test]
async fn provider_auth_replaces_the_shops_credential() {
    let var = "SWITCHYARD_TEST_FWD_KEY";
    let mock = MockProvider::start(echo()).await;
    let extra = format!("auth: {{ header: Authorization, value_env: {var} }}");
    let proxy = TestProxy::start_with_secrets(
        &config(&[("psp", &mock.url())], &extra, ""),
        MapSecrets::new().with(var, "sk_test_injected"),
    )
    .await;
    let req = Request::post(proxy.url("/v1/x"))
        .header("authorization", "Bearer shop-own-key")
        .body(Full::default())
        .unwrap();
    assert_eq!(send(req).await.status, 200);
    let r = &mock.received()[0];
    let auths: Vec<_> = r.headers.get_all("authorization").iter().collect();
    assert_eq!(
        auths,
        ["sk_test_injected"],
        "exactly the injected credential"
    );

    // A custom header name: the shop's Authorization is dropped too.
    let var2 = "SWITCHYARD_TEST_FWD_KEY2";
    let mock2 = MockProvider::start(echo()).await;
    let extra = format!("auth: {{ header: X-Api-Key, value_env: {var2} }}");
    let proxy2 = TestProxy::start_with_secrets(
        &config(&[("psp", &mock2.url())], &extra, ""),
        MapSecrets::new().with(var2, "key-2"),
    )
    .await;
    let req = Request::post(proxy2.url("/v1/x"))
        .header("authorization", "Bearer shop-own-key")
        .header("x-api-key", "shop-key")
        .body(Full::default())
        .unwrap();
    assert_eq!(send(req).await.status, 200);
    let r = &mock2.received()[0];
    assert!(r.headers.get("authorization").is_none());
    let keys: Vec<_> = r.headers.get_all("x-api-key").iter().collect();
    assert_eq!(keys, ["key-2"]);
    drop(proxy);
}

#[tokio::test]
async fn request_id_is_accepted_generated_and_propagated() {
    let mock = MockProvider::start(echo()).await;
    let proxy = TestProxy::start(&config(&[("psp", &mock.url())], "", "")).await;

    let req = Request::post(proxy.url("/v1/x"))
        .header("x-request-id", "shop-req-42")
        .body(Full::default())
        .unwrap();
    let answer = send(req).await;
    assert_eq!(answer.header("x-request-id"), Some("shop-req-42"));
    assert_eq!(mock.received()[0].headers["x-request-id"], "shop-req-42");

    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = Request::post(proxy.url("/v1/x"))
        .header("traceparent", tp)
        .body(Full::default())
        .unwrap();
    let answer = send(req).await;
    assert_eq!(
        answer.header("x-request-id"),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    let r = &mock.received()[1];
    assert_eq!(
        r.headers["traceparent"], tp,
        "traceparent is passed on unchanged"
    );

    let a = post(&proxy.url("/v1/x"), "").await;
    let b = post(&proxy.url("/v1/x"), "").await;
    let (ida, idb) = (
        a.header("x-request-id").unwrap(),
        b.header("x-request-id").unwrap(),
    );
    assert_ne!(ida, idb);
    assert!(uuid::Uuid::parse_str(ida).is_ok());
    assert_eq!(mock.received()[2].headers["x-request-id"], ida);

    // The proxy's own answers carry it too.
    let nr = get(&proxy.url("/nowhere")).await;
    assert!(nr.header("x-request-id").is_some());
}

#[tokio::test]
async fn base_path_and_strip_prefix() {
    let mock = MockProvider::start(echo()).await;
    let url = format!("{}/api/base/", mock.url());
    let proxy = TestProxy::start(&config(&[("psp", &url)], "", "strip_prefix: /stripe")).await;
    assert_eq!(
        post(&proxy.url("/stripe/v1/charges?x=1"), "").await.status,
        200
    );
    assert_eq!(mock.received()[0].uri, "/api/base/v1/charges?x=1");
}

#[tokio::test]
async fn routes_match_on_prefix_method_host_and_headers_in_order() {
    let a = MockProvider::start(|_| Reply::ok("a")).await;
    let b = MockProvider::start(|_| Reply::ok("b")).await;
    let yaml = format!(
        r#"listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
providers:
  a: {{ url: "{}" }}
  b: {{ url: "{}" }}
routes:
  - name: eu-tenant
    match: {{ path_prefix: /v1, methods: [POST], host: shop.local, headers: {{ x-tenant: eu }} }}
    targets: [{{ provider: a }}]
  - name: rest
    match: {{ path_prefix: /v1/ }}
    targets: [{{ provider: b }}]
"#,
        a.url(),
        b.url()
    );
    let proxy = TestProxy::start(&yaml).await;
    let req = |method: &str, path: &str, host: &str, tenant: Option<&str>| {
        let mut r = Request::builder()
            .method(method)
            .uri(proxy.url(path))
            .header("host", host);
        if let Some(t) = tenant {
            r = r.header("x-tenant", t);
        }
        r.body(Full::default()).unwrap()
    };
    assert_eq!(
        send(req("POST", "/v1/x", "SHOP.local:8080", Some("eu")))
            .await
            .body,
        "a"
    );
    assert_eq!(
        send(req("POST", "/v1/x", "shop.local", Some("us")))
            .await
            .body,
        "b"
    );
    assert_eq!(
        send(req("POST", "/v1/x", "other", Some("eu"))).await.body,
        "b"
    );
    assert_eq!(
        send(req("GET", "/v1/x", "shop.local", Some("eu")))
            .await
            .body,
        "b"
    );
    let none = send(req("POST", "/v10/x", "shop.local", Some("eu"))).await;
    assert_eq!(none.status, 404);
    assert_eq!(none.header("x-switchyard-error"), Some("no_route"));
    assert_eq!(
        none.header("content-type"),
        Some("application/problem+json")
    );
    let problem = none.json();
    assert_eq!(problem["status"], 404);
    assert_eq!(problem["type"], "urn:switchyard:error:no_route");
    assert_eq!(
        a.count() + b.count(),
        4,
        "the unrouted request reached nobody"
    );
}

#[tokio::test]
async fn body_over_max_body_is_413_and_never_sent() {
    let mock = MockProvider::start(echo()).await;
    let proxy = TestProxy::start(&config(&[("psp", &mock.url())], "", "max_body: 1KiB")).await;
    assert_eq!(
        post(&proxy.url("/v1/x"), &"a".repeat(1024)).await.status,
        200
    );
    let big = post(&proxy.url("/v1/x"), &"a".repeat(1025)).await;
    assert_eq!(big.status, 413);
    assert_eq!(big.header("x-switchyard-error"), Some("body_too_large"));

    // A chunked body with no Content-Length is cut off as it grows past the limit.
    let chunks = futures_util::stream::iter((0..8).map(|_| {
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(vec![b'x'; 512])))
    }));
    let body = http_body_util::StreamBody::new(chunks);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::StreamBody<_>>();
    let resp = client
        .request(Request::post(proxy.url("/v1/x")).body(body).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(
        mock.count(),
        1,
        "only the request within the limit reached the provider"
    );
}

#[tokio::test]
async fn oversized_headers_get_431_and_malformed_http_400() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = MockProvider::start(echo()).await;
    let proxy = TestProxy::start(&config(&[("psp", &mock.url())], "", "")).await;
    let addr = proxy.app().shop_addr();

    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let huge = "a".repeat(80 * 1024);
    let req = format!("GET /v1/x HTTP/1.1\r\nhost: x\r\nx-big: {huge}\r\n\r\n");
    let _ = s.write_all(req.as_bytes()).await;
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 431"), "got {head}");
    // The limit (64 KiB by default) is exact, however the bytes arrive: just past it is refused, just
    // within it goes through.
    for (size, status) in [(64 * 1024 + 16, "431"), (60 * 1024, "200")] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET /v1/x HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
            "a".repeat(size)
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let n = s.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status}")),
            "{size}: got {head}"
        );
    }

    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"THIS IS NOT HTTP\r\n\r\n").await.unwrap();
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 400"), "got {head}");
    assert_eq!(
        mock.count(),
        1,
        "only the head within the limit reached the provider"
    );
}

#[tokio::test]
async fn h2c_prior_knowledge_from_the_shop() {
    let mock = MockProvider::start(echo()).await;
    let proxy = TestProxy::start(&config(&[("psp", &mock.url())], "", "")).await;
    let client = h2c_client();
    let req = Request::post(proxy.url("/v1/x"))
        .header("idempotency-key", "k")
        .body(Full::new(Bytes::from_static(b"amount=1")))
        .unwrap();
    let answer = send_with(&client, req).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-switchyard-provider"), Some("psp"));
    let r = &mock.received()[0];
    assert_eq!(
        r.version,
        http::Version::HTTP_11,
        "plain http to the provider is HTTP/1.1"
    );
    assert_eq!(r.body, "amount=1");
    assert_eq!(r.headers["host"], mock.addr.to_string());
}

#[tokio::test]
async fn unreachable_provider_is_502_with_problem_json() {
    let dead = closed_port().await;
    let proxy = TestProxy::start(&config(&[("psp", &format!("http://{dead}"))], "", "")).await;
    let answer = post(&proxy.url("/v1/x"), "{}").await;
    assert_eq!(answer.status, 502);
    assert_eq!(
        answer.header("x-switchyard-error"),
        Some("provider_unreachable")
    );
    assert_eq!(answer.header("x-switchyard-provider"), Some("psp"));
    let p = answer.json();
    assert_eq!(p["status"], 502);
    assert!(p["detail"].as_str().unwrap().contains("psp"));
    assert!(p["request_id"].is_string());
    assert_eq!(
        metric(
            &proxy,
            r#"switchyard_proxy_errors_total{kind="provider_unreachable",route="payments"}"#
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &proxy,
            r#"switchyard_requests_total{code="502",provider="psp",route="payments"}"#
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn provider_timeout_is_504_and_route_deadline_bounds_the_request() {
    let mock = MockProvider::start(|_| Reply::hang()).await;
    let proxy = TestProxy::start(&config(
        &[("psp", &mock.url())],
        "timeout: 200ms",
        "retry: { attempts: 1 }",
    ))
    .await;
    let start = Instant::now();
    let answer = post(&proxy.url("/v1/x"), "{}").await;
    assert_eq!(answer.status, 504);
    assert_eq!(
        answer.header("x-switchyard-error"),
        Some("provider_timeout")
    );
    assert_eq!(answer.header("x-switchyard-outcome"), Some("unknown"));
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert_eq!(mock.count(), 1);

    let proxy = TestProxy::start(&config(
        &[("psp", &mock.url())],
        "timeout: 10s",
        "timeout: 150ms",
    ))
    .await;
    let answer = post(&proxy.url("/v1/x"), "{}").await;
    assert_eq!(answer.status, 504);
    assert_eq!(
        answer.header("x-switchyard-error"),
        Some("deadline_exceeded")
    );
    assert_eq!(
        answer.header("x-switchyard-outcome"),
        Some("unknown"),
        "the request was with the provider when the deadline ran out"
    );
}

#[tokio::test]
async fn provider_answers_pass_through_unchanged() {
    let mock = MockProvider::start(|r| {
        let status = r.uri.trim_start_matches("/status/").parse().unwrap_or(200);
        Reply::status(status, r#"{"error":{"type":"card_error"}}"#)
    })
    .await;
    let proxy = TestProxy::start(&config(&[("psp", &mock.url())], "", "")).await;
    // Final answers (2xx, 4xx) pass through as the provider gave them; a 429 from the only target too
    // (last: it throttles the provider, which then takes no traffic for its Retry-After).
    for code in [200u16, 201, 402, 404, 409, 422, 429] {
        let a = post(&proxy.url(&format!("/status/{code}")), "{}").await;
        assert_eq!(a.status.as_u16(), code);
        assert!(
            a.header("x-switchyard-error").is_none(),
            "a provider answer is not the proxy's"
        );
        assert_eq!(a.body, r#"{"error":{"type":"card_error"}}"#);
        if code != 429 {
            assert_eq!(
                a.header("x-switchyard-attempts"),
                Some("1"),
                "{code} is never retried"
            );
        }
    }
}

#[tokio::test]
async fn a_5xx_that_stays_unknown_is_reported_as_unknown() {
    let mock =
        MockProvider::start(|_| Reply::status(500, r#"{"error":{"type":"api_error"}}"#)).await;
    let proxy = TestProxy::start(&config(
        &[("psp", &mock.url())],
        "breaker: { consecutive_failures: 0, failure_rate: 1.0, min_requests: 1000 }",
        "retry: { attempts: 2, backoff: 1ms }",
    ))
    .await;
    let a = post(&proxy.url("/v1/x"), "{}").await;
    assert_eq!(a.status, 502);
    assert_eq!(a.header("x-switchyard-error"), Some("outcome_unknown"));
    assert_eq!(a.header("x-switchyard-outcome"), Some("unknown"));
    assert_eq!(a.header("x-switchyard-attempts"), Some("2"));
    assert!(a.json()["detail"].as_str().unwrap().contains("500"));
}

#[tokio::test]
async fn metric_labels_never_carry_request_values() {
    let mock = MockProvider::start(echo()).await;
    let proxy = TestProxy::start(&config(&[("psp", &mock.url())], "", "")).await;
    post_with_key(
        &proxy.url("/v1/payment_intents/pi_SECRETID123?card=4242424242424242"),
        "order-SECRET-KEY",
        "{}",
    )
    .await;
    get(&proxy.url("/elsewhere-xyz")).await;
    let text = get(&proxy.admin_url("/metrics")).await.text();
    for leak in [
        "SECRETID123",
        "4242424242424242",
        "order-SECRET-KEY",
        "elsewhere-xyz",
    ] {
        assert!(!text.contains(leak), "{leak} appeared in /metrics");
    }
    assert!(
        text.contains(r#"switchyard_requests_total{code="200",provider="psp",route="payments"} 2"#)
    );
    assert!(text.contains("switchyard_build_info{version="));
    assert!(text.contains("switchyard_upstream_requests_in_flight{provider=\"psp\"} 0"));
}

#[tokio::test]
async fn card_numbers_are_masked_in_the_proxys_own_answers() {
    let mock = MockProvider::start(echo()).await;
    let yaml =
        config(&[("psp", &mock.url())], "", "").replace("path_prefix: /", "path_prefix: /v1");
    let proxy = TestProxy::start(&yaml).await;
    let answer = get(&proxy.url("/cards/4242424242424242/x")).await;
    assert_eq!(answer.status, 404);
    let detail = answer.json()["detail"].as_str().unwrap().to_owned();
    assert!(!detail.contains("4242424242424242"), "{detail}");
    assert!(detail.contains("424242******4242"), "{detail}");
}

/// A route limited to `/v1/refunds` (with the provider credential injected) is never a way to reach
/// another provider endpoint: `..` is resolved before matching, and encoded dots and slashes, which a
/// provider or the proxy in front of it may decode, are refused.
#[tokio::test]
async fn dot_segments_never_escape_a_routes_prefix() {
    let mock = MockProvider::start(echo()).await;
    let yaml = config(&[("psp", &mock.url())], "", "")
        .replace("path_prefix: /", "path_prefix: /v1/refunds");
    let proxy = TestProxy::start(&yaml).await;
    let get = |path: &str| Request::get(proxy.url(path)).body(Full::default()).unwrap();

    let escaped = send(get("/v1/refunds/../payouts")).await;
    assert_eq!(escaped.status, 404, "{}", escaped.text());
    assert_eq!(escaped.header("x-switchyard-error"), Some("no_route"));
    for encoded in [
        "/v1/refunds/%2e%2e/payouts",
        "/v1/refunds/%2E%2E/payouts",
        "/v1/refunds/.%2e/payouts",
        "/v1/refunds/..%2fpayouts",
        "/v1/refunds%2f..%2f..%2fpayouts",
    ] {
        let refused = send(get(encoded)).await;
        assert_eq!(refused.status, 400, "{encoded}: {}", refused.text());
        assert_eq!(refused.header("x-switchyard-error"), Some("bad_request"));
    }
    assert!(mock.received().is_empty(), "nothing reached the provider");

    // Inside the prefix, the provider gets the resolved path, query untouched.
    let inside = send(get("/v1/refunds/x/../re_1/./?expand[]=charge")).await;
    assert_eq!(inside.status, 200, "{}", inside.text());
    let got = mock.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].uri, "/v1/refunds/re_1/?expand[]=charge");
}

/// Tenants share the sidecar's provider account (the credential is injected) and each may pick any
/// key: the provider gets a key derived from tenant and key, so tenant B's "order-1" is never answered
/// with tenant A's payment. Stable: a retry of the same tenant's key carries the same derived key.
#[tokio::test]
async fn tenants_on_one_provider_account_never_share_a_key_at_the_provider() {
    let var = "SWITCHYARD_TEST_TENANT_KEY";
    let mock = MockProvider::start(echo()).await;
    let extra = format!("auth: {{ header: Authorization, value_env: {var} }}");
    let yaml = config(
        &[("psp", &mock.url())],
        &extra,
        "idempotency: { scope_header: X-Tenant }",
    );
    let proxy =
        TestProxy::start_with_secrets(&yaml, MapSecrets::new().with(var, "sk_test_shared")).await;
    let pay = |tenant: &str, body: &'static str| {
        Request::post(proxy.url("/v1/payment_intents"))
            .header("x-tenant", tenant)
            .header("idempotency-key", "order-1")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    assert_eq!(send(pay("tenant-a", "amount=100")).await.status, 200);
    assert_eq!(send(pay("tenant-b", "amount=999")).await.status, 200);
    let got = mock.received();
    assert_eq!(got.len(), 2, "tenant B's payment was made, not replayed");
    let key = |i: usize| {
        got[i].headers["idempotency-key"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_ne!(key(0), key(1));
    for i in 0..2 {
        assert!(key(i).starts_with("sy-"), "{}", key(i));
        assert_ne!(key(i), "order-1");
    }

    // Without an injected credential each tenant brings its own account: the shop's key as it is.
    let own = MockProvider::start(echo()).await;
    let yaml = config(
        &[("psp", &own.url())],
        "",
        "idempotency: { scope_header: X-Tenant }",
    );
    let proxy = TestProxy::start(&yaml).await;
    let req = Request::post(proxy.url("/v1/payment_intents"))
        .header("x-tenant", "tenant-a")
        .header("idempotency-key", "order-1")
        .body(Full::default())
        .unwrap();
    assert_eq!(send(req).await.status, 200);
    assert_eq!(own.received()[0].headers["idempotency-key"], "order-1");
}

/// Odd methods, transfer codings hyper would silently drop, and a missing or doubled Host are
/// answered by the proxy and never reach the provider (whose 501 for `FOO` opened its breaker, and
/// whose TRACE was retried with the injected credential).
#[tokio::test]
async fn odd_methods_codings_and_hosts_are_answered_locally() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = MockProvider::start(echo()).await;
    let proxy = TestProxy::start(&config(&[("psp", &mock.url())], "", "")).await;
    let addr = proxy.app().shop_addr();
    let cases: [(&str, &str, &str); 7] = [
        ("TRACE", "host: x\r\n", "501"),
        ("FOO", "host: x\r\n", "501"),
        ("post", "host: x\r\ncontent-length: 0\r\n", "501"),
        (
            "POST",
            "host: x\r\ntransfer-encoding: gzip, chunked\r\n",
            "501",
        ),
        ("GET", "", "400"),
        ("GET", "host: a\r\nhost: b\r\n", "400"),
        ("GET", "host: x\r\n", "200"),
    ];
    for (method, headers, status) in cases {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let body = if headers.contains("chunked") {
            "0\r\n\r\n"
        } else {
            ""
        };
        let req = format!("{method} /v1/x HTTP/1.1\r\n{headers}\r\n{body}");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status}")),
            "{method} {headers:?}: got {head}"
        );
    }
    assert_eq!(mock.count(), 1, "only the plain GET reached the provider");
}

/// A keyed answer larger than the replay store keeps (4 MiB) is passed on whole, marked unstored;
/// the key stays pinned to that provider, so the shop's retry goes there again with the same key
/// (the provider answers it from its own store) instead of failing as `outcome_unknown` every time.
#[tokio::test]
async fn a_keyed_answer_too_large_to_store_is_passed_on_unstored() {
    let large = format!("{{\"id\":\"pi_1\",\"pad\":\"{}\"}}", "x".repeat(5 << 20));
    let served = large.clone();
    let mock = MockProvider::start(move |_| Reply::ok(&served)).await;
    let proxy = TestProxy::start(&config(&[("psp", &mock.url())], "", "")).await;
    let pay = || {
        Request::post(proxy.url("/v1/payment_intents"))
            .header("idempotency-key", "order-large")
            .body(Full::new(Bytes::from_static(b"amount=1")))
            .unwrap()
    };
    let first = send(pay()).await;
    assert_eq!(
        first.status,
        200,
        "{}",
        &first.text()[..200.min(first.body.len())]
    );
    assert_eq!(first.body.len(), large.len(), "passed on whole");
    assert_eq!(first.header("x-switchyard-stored"), Some("false"));
    let again = send(pay()).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("idempotent-replayed"), None, "not replayed");
    let got = mock.received();
    assert_eq!(got.len(), 2, "the retry reached the provider that holds it");
    assert!(got
        .iter()
        .all(|r| r.headers["idempotency-key"] == "order-large"));
}
