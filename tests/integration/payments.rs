//! The payment rules (../shared/PAYMENT_RULES.md): each test here fails if a rule breaks. Providers are
//! sandboxes that count charges per key, or scripted mocks, so every test checks what the shop saw
//! *and* what each provider received.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use switchyard::sandbox::{Mode, ModeSpec, Sandbox, Stats};

use crate::support::*;

const PAY: &str = "/v1/payment_intents";
const FORM: &str = "amount=1000&currency=eur";

async fn sandbox(name: &str) -> Sandbox {
    Sandbox::start(name, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn url(s: &Sandbox) -> String {
    format!("http://{}", s.addr())
}

fn mode(mode: Mode) -> ModeSpec {
    ModeSpec {
        mode,
        ..ModeSpec::default()
    }
}

/// Keys charged more than once on one provider, and keys charged on both.
fn double_charges(a: &Stats, b: &Stats) -> (Vec<String>, Vec<String>) {
    let twice: Vec<String> = a
        .charges_by_key
        .iter()
        .chain(b.charges_by_key.iter())
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| k.clone())
        .collect();
    let on_a: HashSet<&String> = a.charges_by_key.keys().collect();
    let both: Vec<String> = b
        .charges_by_key
        .keys()
        .filter(|k| on_a.contains(k))
        .cloned()
        .collect();
    (twice, both)
}

/// Primary and backup sandboxes behind one route `payments` with the given extras.
async fn pair(provider_extra: &str, route_extra: &str) -> (Sandbox, Sandbox, TestProxy) {
    let (a, b) = (sandbox("primary").await, sandbox("backup").await);
    let proxy = TestProxy::start(&config(
        &[("primary", &url(&a)), ("backup", &url(&b))],
        provider_extra,
        route_extra,
    ))
    .await;
    (a, b, proxy)
}

async fn pay(proxy: &TestProxy, key: &str) -> Answer {
    post_with_key(&proxy.url(PAY), key, FORM).await
}

// 1. Connection refused while load runs: nothing reaches the shop as a failure, nothing is charged twice.
#[tokio::test]
async fn primary_refusing_connections_under_load_fails_no_payment_and_charges_none_twice() {
    let (a, b, proxy) = pair(
        "breaker: { consecutive_failures: 3, open_for: 200ms, jitter: 0 }\nslow_start: 0s",
        "",
    )
    .await;
    let proxy = Arc::new(proxy);
    let mut failures = Vec::new();
    let mut answered = 0;
    for round in 0..3 {
        if round == 1 {
            a.set_mode(mode(Mode::Down));
            // Let the pooled connections see the close: "refuses connections" is about new ones.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if round == 2 {
            a.set_mode(mode(Mode::Ok));
        }
        let mut tasks = Vec::new();
        for w in 0..4 {
            let proxy = Arc::clone(&proxy);
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..25 {
                    let key = format!("order-{round}-{w}-{i}");
                    out.push((key.clone(), pay(&proxy, &key).await));
                }
                out
            }));
        }
        for t in tasks {
            for (key, answer) in t.await.unwrap() {
                answered += 1;
                if answer.status != 200 {
                    failures.push((key, answer.status, answer.text()));
                }
            }
        }
    }
    assert_eq!(answered, 300);
    assert!(
        failures.is_empty(),
        "failures reached the shop: {failures:?}"
    );
    let (twice, both) = double_charges(&a.stats(), &b.stats());
    assert!(
        twice.is_empty() && both.is_empty(),
        "double charges: {twice:?} {both:?}"
    );
    assert_eq!(
        a.stats().charges + b.stats().charges,
        300,
        "every payment charged once"
    );
    assert!(
        b.stats().charges >= 100,
        "the outage round went to the backup"
    );
}

// 2. Primary takes the payment and hangs: never sent to the backup; the shop learns the outcome is
//    unknown; its retry with the same key goes to the primary and gets the real answer.
#[tokio::test]
async fn a_primary_that_hangs_after_charging_is_never_bypassed() {
    let (a, b, proxy) = pair("timeout: 150ms", "retry: { attempts: 1 }").await;
    a.set_mode(ModeSpec {
        delay_ms: 1_000,
        ..mode(Mode::Slow)
    });
    let first = pay(&proxy, "order-hang").await;
    assert_eq!(first.status, 504);
    assert_eq!(first.header("x-switchyard-outcome"), Some("unknown"));
    assert_eq!(first.header("x-switchyard-provider"), Some("primary"));
    assert_eq!(
        b.stats().requests,
        0,
        "a maybe-charged payment never goes to the backup"
    );

    // The primary stays sick, so traffic would go to the backup — but this key is pinned.
    let retry = pay(&proxy, "order-hang").await;
    assert_eq!(retry.header("x-switchyard-provider"), Some("primary"));
    assert_eq!(
        retry.status,
        200,
        "the provider replays its real answer: {}",
        retry.text()
    );
    assert_eq!(retry.json()["provider"], "primary");
    assert_eq!(b.stats().requests, 0);
    let (twice, both) = double_charges(&a.stats(), &b.stats());
    assert!(twice.is_empty() && both.is_empty());
    assert_eq!(a.stats().charges_by_key.get("order-hang"), Some(&1));

    // With retries on, the proxy's own retry at the primary settles it in one request.
    let (a, b, proxy) = pair("timeout: 150ms", "retry: { attempts: 3, backoff: 10ms }").await;
    a.set_mode(ModeSpec {
        delay_ms: 1_000,
        ..mode(Mode::Slow)
    });
    let answer = pay(&proxy, "order-hang-2").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-switchyard-attempts"), Some("2"));
    assert_eq!(b.stats().requests, 0);
    assert_eq!(a.stats().charges, 1);
}

// 3. Primary charges, then answers 500: retried only at the primary, with the same key.
#[tokio::test]
async fn a_500_after_charging_is_retried_only_at_the_primary_with_the_same_key() {
    let (a, b, proxy) = pair("", "retry: { attempts: 3, backoff: 5ms }").await;
    a.set_mode(mode(Mode::Error500));
    let answer = pay(&proxy, "order-500").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("x-switchyard-provider"), Some("primary"));
    assert_eq!(answer.header("x-switchyard-attempts"), Some("2"));
    let stats = a.stats();
    assert_eq!(
        (stats.charges, stats.replays),
        (1, 1),
        "the retry was deduplicated by the key"
    );
    assert_eq!(b.stats().requests, 0);
}

// 4. Not executed (503 with Adyen's transient-error, or 429): completes at the backup.
#[tokio::test]
async fn a_request_the_primary_did_not_execute_completes_at_the_backup() {
    let status = Arc::new(AtomicU16::new(503));
    let s = Arc::clone(&status);
    let primary = MockProvider::start(move |_| {
        let code = s.load(Ordering::SeqCst);
        let reply = Reply::status(code, r#"{"status":"refused"}"#);
        if code == 503 {
            reply.header("transient-error", "true")
        } else {
            reply.header("retry-after", "1")
        }
    })
    .await;
    let b = sandbox("backup").await;
    let proxy = TestProxy::start(&config(
        &[("primary", &primary.url()), ("backup", &url(&b))],
        "",
        "",
    ))
    .await;
    let answer = pay(&proxy, "order-transient").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("x-switchyard-provider"), Some("backup"));
    assert_eq!(answer.header("x-switchyard-attempts"), Some("2"));
    assert_eq!(
        primary.received()[0].headers["idempotency-key"],
        "order-transient"
    );
    assert_eq!(b.stats().charges_by_key.get("order-transient"), Some(&1));

    status.store(429, Ordering::SeqCst);
    let answer = pay(&proxy, "order-throttled").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-switchyard-provider"), Some("backup"));
    assert_eq!(
        metric(&proxy, r#"switchyard_failovers_total{from="primary",reason="not_processed",route="payments",to="backup"}"#).await,
        2.0
    );
}

// 5. Concurrent duplicates: one provider call; another payload: 422; replays after success and decline.
#[tokio::test]
async fn duplicates_reach_the_provider_once() {
    let (a, _b, proxy) = pair("", "").await;
    a.set_mode(ModeSpec {
        process_ms: 300,
        ..mode(Mode::Ok)
    });
    let proxy = Arc::new(proxy);
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let proxy = Arc::clone(&proxy);
        tasks.push(tokio::spawn(async move { pay(&proxy, "order-dup").await }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        let a = t.await.unwrap();
        if a.status == 409 {
            assert_eq!(a.header("x-switchyard-error"), Some("idempotency_conflict"));
            assert!(a.header("retry-after").is_some());
        }
        statuses.push(a.status.as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 409, 409, 409, 409]);
    assert_eq!(a.stats().requests, 1, "exactly one provider call");

    let replay = pay(&proxy, "order-dup").await;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.header("x-switchyard-attempts"), Some("0"));
    assert_eq!(
        a.stats().requests,
        1,
        "the replay comes from the proxy's record"
    );

    let other = post_with_key(&proxy.url(PAY), "order-dup", "amount=9999").await;
    assert_eq!(other.status, 422);
    assert_eq!(
        other.header("x-switchyard-error"),
        Some("idempotency_mismatch")
    );
    assert_eq!(a.stats().requests, 1);
    assert_eq!(
        metric(
            &proxy,
            r#"switchyard_idempotency_total{result="conflict",route="payments"}"#
        )
        .await,
        4.0
    );
}

#[tokio::test]
async fn a_replay_is_byte_for_byte_for_a_success_and_for_a_decline() {
    let mock = MockProvider::start(|r| {
        if r.uri.contains("decline") {
            Reply::status(
                402,
                r#"{"error":{"type":"card_error","code":"card_declined"}}"#,
            )
            .header("request-id", "req_decline")
        } else {
            Reply::ok(r#"{"id":"pi_123456789","status":"succeeded"}"#)
                .header("request-id", "req_ok")
        }
    })
    .await;
    let proxy = TestProxy::start(&config(&[("psp", &mock.url())], "", "")).await;
    for (path, key) in [
        ("/v1/payment_intents", "k-ok"),
        ("/v1/decline", "k-decline"),
    ] {
        let first = post_with_key(&proxy.url(path), key, FORM).await;
        let again = post_with_key(&proxy.url(path), key, FORM).await;
        assert_eq!(again.status, first.status);
        assert_eq!(again.body, first.body, "byte for byte");
        assert_eq!(again.header("request-id"), first.header("request-id"));
        assert_eq!(again.header("content-type"), first.header("content-type"));
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        assert_eq!(first.header("idempotent-replayed"), None);
    }
    assert_eq!(
        mock.count(),
        2,
        "each key reached the provider once; the decline was never retried"
    );
}

// 6. A pinned key with the primary's breaker open past the route's deadline: 503 at once, nothing
// to the backup.
#[tokio::test]
async fn a_pinned_payment_never_moves_even_when_its_provider_is_open() {
    let primary = MockProvider::start(|_| Reply::status(500, "{}")).await;
    let b = sandbox("backup").await;
    let proxy = TestProxy::start(&config(
        &[("primary", &primary.url()), ("backup", &url(&b))],
        "breaker: { consecutive_failures: 1, open_for: 30s, jitter: 0 }",
        "retry: { attempts: 1 }\ntimeout: 5s",
    ))
    .await;
    let first = pay(&proxy, "order-pinned").await;
    assert_eq!(first.status, 502);
    assert_eq!(first.header("x-switchyard-outcome"), Some("unknown"));
    // The breaker is open now; new payments go to the backup...
    let fresh = pay(&proxy, "order-fresh").await;
    assert_eq!(fresh.header("x-switchyard-provider"), Some("backup"));
    // ...but the pinned one does not.
    let retry = pay(&proxy, "order-pinned").await;
    assert_eq!(retry.status, 503);
    assert_eq!(
        retry.header("x-switchyard-error"),
        Some("pinned_provider_unavailable")
    );
    assert_eq!(retry.header("x-switchyard-outcome"), Some("unknown"));
    assert!(retry.header("retry-after").is_some());
    assert_eq!(primary.count(), 1);
    assert_eq!(b.stats().charges_by_key.get("order-pinned"), None);
}

/// A primary whose first answer is a 500 (it may have charged) and every later one a success naming
/// `id`, a backup sandbox, and a proxy whose breaker opens for 300 ms on one failure, with `retry`.
async fn primary_failing_once(id: &'static str, retry: &str) -> (MockProvider, Sandbox, TestProxy) {
    let calls = AtomicU16::new(0);
    let primary = MockProvider::start(move |_| {
        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::status(500, "{}")
        } else {
            Reply::ok(&format!(r#"{{"id":"{id}","status":"succeeded"}}"#))
        }
    })
    .await;
    let b = sandbox("backup").await;
    let proxy = TestProxy::start(&config(
        &[("primary", &primary.url()), ("backup", &url(&b))],
        "breaker: { consecutive_failures: 1, open_for: 300ms, jitter: 0 }",
        &format!("retry: {{ attempts: 2, backoff: 1ms, max_backoff: 1ms{retry} }}\ntimeout: 5s"),
    ))
    .await;
    (primary, b, proxy)
}

// 6b. A pinned key whose provider's breaker opens for less than the route's deadline waits for it:
// the shop gets the payment's answer from that provider, and the backup never sees the key.
#[tokio::test]
async fn a_pinned_payment_waits_for_its_provider_within_the_deadline() {
    let (primary, b, proxy) = primary_failing_once("pi_after_wait", "").await;
    let started = std::time::Instant::now();
    let answer = pay(&proxy, "order-waits").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("x-switchyard-provider"), Some("primary"));
    assert_eq!(answer.json()["id"], "pi_after_wait");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "the retry waited for the breaker: {:?}",
        started.elapsed()
    );
    assert_eq!(primary.count(), 2);
    assert_eq!(b.stats().charges_by_key.get("order-waits"), None);
}

// 6c. With `pinned_wait: 0s` the shop gets the 503 at once, and its retry with the same key later
// still goes to the primary only.
#[tokio::test]
async fn a_pinned_payment_with_no_wait_gets_503_then_completes_at_its_provider() {
    let (primary, b, proxy) = primary_failing_once("pi_later_retry", ", pinned_wait: 0s").await;
    let first = pay(&proxy, "order-no-wait").await;
    assert_eq!(first.status, 503, "{}", first.text());
    assert_eq!(
        first.header("x-switchyard-error"),
        Some("pinned_provider_unavailable")
    );
    assert_eq!(primary.count(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let again = pay(&proxy, "order-no-wait").await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.header("x-switchyard-provider"), Some("primary"));
    assert_eq!(again.json()["id"], "pi_later_retry");
    assert_eq!(b.stats().charges_by_key.get("order-no-wait"), None);
}

// 7. A retry storm against a failing provider stays within the budget.
#[tokio::test]
async fn a_retry_storm_stays_within_the_budget() {
    let primary = MockProvider::start(|_| Reply::status(500, "{}")).await;
    let proxy = TestProxy::start(&config(
        &[("primary", &primary.url())],
        "breaker: { consecutive_failures: 0, failure_rate: 1.0, min_requests: 100000 }",
        "retry: { attempts: 3, backoff: 1ms, max_backoff: 2ms, budget: 0.1, min_retries_per_second: 1 }",
    ))
    .await;
    let requests = 100;
    for i in 0..requests {
        let a = pay(&proxy, &format!("storm-{i}")).await;
        assert_eq!(a.status, 502);
    }
    let sent = primary.count();
    // 100 first attempts + at most 10 % of them + the floor of 1/s over the window (10).
    assert!(
        sent <= requests + 10 + 10,
        "{sent} attempts for {requests} requests"
    );
    assert!(sent > requests, "some retries were allowed");
    assert!(
        metric(
            &proxy,
            r#"switchyard_retry_budget_exhausted_total{route="payments"}"#
        )
        .await
            > 0.0
    );
}

// 8. The shop hangs up mid-payment; its retry with the same key gets the stored answer.
#[tokio::test]
async fn a_shop_that_hangs_up_mid_payment_gets_the_stored_answer_on_retry() {
    let (a, _b, proxy) = pair("", "").await;
    a.set_mode(ModeSpec {
        process_ms: 400,
        ..mode(Mode::Ok)
    });
    let url = proxy.url(PAY);
    let impatient = tokio::spawn(async move { post_with_key(&url, "order-gone", FORM).await });
    assert!(eventually(Duration::from_secs(2), || async { a.stats().requests == 1 }).await);
    impatient.abort();
    let _ = impatient.await;
    // While the first is still in flight, the retry is told to wait.
    let early = pay(&proxy, "order-gone").await;
    assert_eq!(early.status, 409);
    // Once the provider answered, the retry gets that answer — without a second provider call.
    let settled = eventually(Duration::from_secs(3), || async {
        pay(&proxy, "order-gone").await.status == 200
    })
    .await;
    assert!(settled);
    let replay = pay(&proxy, "order-gone").await;
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    let stats = a.stats();
    assert_eq!((stats.requests, stats.charges), (1, 1));
}

// Rule 2: keys required, generated, per-provider header and length, hashed never cut.
#[tokio::test]
async fn a_route_that_requires_keys_refuses_a_post_without_one() {
    let mock = MockProvider::start(|_| Reply::ok("{}")).await;
    let proxy = TestProxy::start(&config(
        &[("psp", &mock.url())],
        "",
        "idempotency: { mode: require }",
    ))
    .await;
    let a = post(&proxy.url(PAY), FORM).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.header("content-type"), Some("application/problem+json"));
    assert_eq!(
        a.header("x-switchyard-error"),
        Some("idempotency_key_required")
    );
    assert!(a.json()["detail"]
        .as_str()
        .unwrap()
        .contains("idempotency-key"));
    assert_eq!(mock.count(), 0);
    let bad = post_with_key(&proxy.url(PAY), "has space", FORM).await;
    assert_eq!(bad.status, 400);
    // Two keys: which one would the provider deduplicate on? Refused, never guessed.
    let twice = http::Request::post(proxy.url(PAY))
        .header("idempotency-key", "order-a")
        .header("idempotency-key", "order-b")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            FORM.as_bytes(),
        )))
        .unwrap();
    let twice = send(twice).await;
    assert_eq!(twice.status, 400, "{}", twice.text());
    assert_eq!(twice.header("x-switchyard-error"), Some("bad_request"));
    assert!(twice.text().contains("sent once"), "{}", twice.text());
    assert_eq!(mock.count(), 0);
    // GETs need none.
    assert_eq!(
        get(&proxy.url("/v1/payment_intents/pi_1")).await.status,
        200
    );
}

#[tokio::test]
async fn a_generated_key_is_returned_and_reused_on_retries_and_failover() {
    let primary = MockProvider::start(|_| Reply::status(429, "{}")).await;
    let backup = MockProvider::start(|_| Reply::ok(r#"{"id":"pi_gen_000001"}"#)).await;
    let yaml = config(&[("primary", &primary.url()), ("backup", &backup.url())], "", "")
        .replacen(
            &format!("    url: {}\n", backup.url()),
            &format!(
                "    url: {}\n    idempotency_header: PayPal-Request-Id\n    idempotency_key_max_len: 40\n",
                backup.url()
            ),
            1,
        );
    let proxy = TestProxy::start(&yaml).await;
    let a = post(&proxy.url(PAY), FORM).await;
    assert_eq!(a.status, 200);
    let key = a
        .header("idempotency-key")
        .expect("the generated key is returned")
        .to_owned();
    assert!(uuid::Uuid::parse_str(&key).is_ok());
    assert_eq!(
        primary.received()[0].headers["idempotency-key"],
        key.as_str()
    );
    let at_backup = &backup.received()[0].headers;
    assert!(
        at_backup.get("idempotency-key").is_none(),
        "the backup reads its own header"
    );
    assert_eq!(
        at_backup["paypal-request-id"],
        key.as_str(),
        "36 characters fit in 40"
    );

    // A key longer than the provider accepts is hashed — the same way every time — never cut.
    let long = format!("order-{}", "x".repeat(60));
    post_with_key(&proxy.url(PAY), &long, FORM).await;
    post_with_key(&proxy.url(PAY), &format!("{long}-2"), FORM).await;
    // The primary is throttled by its 429 now: both go to the backup.
    let sent: Vec<String> = backup.received()[1..]
        .iter()
        .map(|r| r.headers["paypal-request-id"].to_str().unwrap().to_owned())
        .collect();
    assert!(
        sent.iter()
            .all(|k| k.len() <= 40 && !long.starts_with(k.as_str())),
        "{sent:?}"
    );
    assert_ne!(sent[0], sent[1], "different keys stay different");
}

// Rule 3: follow-ups go to the provider holding the payment, even when traffic moved since.
#[tokio::test]
async fn a_capture_goes_to_the_provider_that_holds_the_payment() {
    let (a, b, proxy) = pair(
        "breaker: { consecutive_failures: 1, open_for: 200ms, jitter: 0 }\nslow_start: 0s",
        "",
    )
    .await;
    a.set_mode(mode(Mode::Down));
    tokio::time::sleep(Duration::from_millis(30)).await;
    let created = pay_at(
        &proxy,
        PAY,
        "order-follow",
        "amount=1000&currency=eur&capture_method=manual",
    )
    .await;
    assert_eq!(created.header("x-switchyard-provider"), Some("backup"));
    assert_eq!(created.json()["status"], "requires_capture");
    let id = created.json()["id"].as_str().unwrap().to_owned();
    // The primary is back and takes new traffic...
    a.set_mode(mode(Mode::Ok));
    tokio::time::sleep(Duration::from_millis(250)).await;
    let mut back = false;
    for i in 0..10 {
        if pay(&proxy, &format!("warm-{i}"))
            .await
            .header("x-switchyard-provider")
            == Some("primary")
        {
            back = true;
        }
    }
    assert!(back, "the primary takes traffic again");
    // ...but the capture of a payment held by the backup goes to the backup, by path or by body.
    let capture = pay_at(&proxy, &format!("{PAY}/{id}/capture"), "capture-1", "").await;
    assert_eq!(capture.header("x-switchyard-provider"), Some("backup"));
    let refund = pay_at(
        &proxy,
        "/v1/refunds",
        "refund-1",
        &format!("payment_intent={id}"),
    )
    .await;
    assert_eq!(refund.header("x-switchyard-provider"), Some("backup"));
    assert_eq!(refund.json()["object"], "refund");
    assert_eq!(b.stats().charges_by_key.get("capture-1"), Some(&1));
    assert_eq!(b.stats().refunds, 1);
}

async fn pay_at(proxy: &TestProxy, path: &str, key: &str, body: &str) -> Answer {
    send(
        Request::post(proxy.url(path))
            .header("idempotency-key", key)
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap(),
    )
    .await
}

// Rule 4: no retry of a POST without a key once it may have been sent; provider hints win.
#[tokio::test]
async fn a_post_without_a_key_is_never_resent_after_it_may_have_arrived() {
    let primary = MockProvider::start(|_| Reply::status(500, "{}")).await;
    let backup = MockProvider::start(|_| Reply::ok("{}")).await;
    let proxy = TestProxy::start(&config(
        &[("primary", &primary.url()), ("backup", &backup.url())],
        "",
        "idempotency: { mode: off }",
    ))
    .await;
    let a = post(&proxy.url(PAY), FORM).await;
    assert_eq!(a.status, 502);
    assert_eq!(a.header("x-switchyard-outcome"), Some("unknown"));
    assert_eq!((primary.count(), backup.count()), (1, 0));
    assert!(primary.received()[0]
        .headers
        .get("idempotency-key")
        .is_none());

    // A GET is idempotent: retried at the same provider.
    let g = get(&proxy.url("/v1/payment_intents/pi_1")).await;
    assert_eq!(g.status, 502);
    assert_eq!(primary.count(), 4, "1 POST + 3 GET attempts");
    assert_eq!(
        backup.count(),
        0,
        "an unknown outcome never moves to another provider"
    );
}

#[tokio::test]
async fn stripe_should_retry_false_stops_retries() {
    let primary =
        MockProvider::start(|_| Reply::status(500, "{}").header("stripe-should-retry", "false"))
            .await;
    let proxy = TestProxy::start(&config(&[("primary", &primary.url())], "", "")).await;
    let a = pay(&proxy, "order-no-retry").await;
    assert_eq!(a.status, 502);
    assert_eq!(a.header("x-switchyard-attempts"), Some("1"));
    assert_eq!(primary.count(), 1);
}

#[tokio::test]
async fn retry_after_is_honoured_up_to_its_cap() {
    let hits = Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = Arc::clone(&hits);
    let primary = MockProvider::start(move |_| {
        let mut hits = h.lock().unwrap();
        hits.push(std::time::Instant::now());
        if hits.len() == 1 {
            Reply::status(503, "{}").header("retry-after", "30")
        } else {
            Reply::ok("{}")
        }
    })
    .await;
    let proxy = TestProxy::start(&config(
        &[("primary", &primary.url())],
        "breaker: { consecutive_failures: 0, failure_rate: 1.0, min_requests: 1000 }",
        "retry: { attempts: 2, retry_after_cap: 300ms }",
    ))
    .await;
    let a = pay(&proxy, "order-wait").await;
    assert_eq!(a.status, 200);
    let hits = hits.lock().unwrap();
    let gap = hits[1] - hits[0];
    assert!(
        gap >= Duration::from_millis(290) && gap < Duration::from_secs(5),
        "{gap:?}"
    );
}

#[tokio::test]
async fn idempotency_records_are_bounded_and_evictions_counted() {
    let mock = MockProvider::start(|_| Reply::ok("{}")).await;
    let proxy = TestProxy::start(&config(
        &[("psp", &mock.url())],
        "",
        "idempotency: { max_entries: 5 }",
    ))
    .await;
    for i in 0..12 {
        pay(&proxy, &format!("bounded-{i}")).await;
    }
    assert_eq!(metric(&proxy, "switchyard_idempotency_records ").await, 5.0);
    assert_eq!(
        metric(&proxy, "switchyard_idempotency_evictions_total ").await,
        7.0
    );
    // The newest are still replayed; the evicted oldest reach the provider again.
    assert_eq!(
        pay(&proxy, "bounded-11")
            .await
            .header("idempotent-replayed"),
        Some("true")
    );
    assert_eq!(mock.count(), 12);
}

// Rule 1: the proxy knows whether the request was written. A provider that takes the TCP connection but
// never finishes the TLS handshake was sent nothing: the payment fails over to the backup.
#[tokio::test]
async fn a_stalled_tls_handshake_sent_nothing_and_fails_over() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            conns.push(c); // accepted, never answered
        }
    });
    let b = sandbox("backup").await;
    let proxy = TestProxy::start(&config(
        &[
            ("primary", &format!("https://127.0.0.1:{}", addr.port())),
            ("backup", &url(&b)),
        ],
        "timeout: 200ms",
        "",
    ))
    .await;
    let a = pay(&proxy, "order-stalled").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-switchyard-provider"), Some("backup"));
    assert_eq!(a.header("x-switchyard-attempts"), Some("2"));
    assert_eq!(
        metric(
            &proxy,
            r#"switchyard_attempts_total{outcome="not_sent",provider="primary",route="payments"}"#
        )
        .await,
        1.0
    );
    held.abort();
}

// Rule 1: once the request was written, a timeout is an unknown outcome, not a failover.
#[tokio::test]
async fn a_timeout_after_the_request_was_written_is_unknown() {
    let primary = MockProvider::start(|_| Reply::hang()).await;
    let b = sandbox("backup").await;
    let proxy = TestProxy::start(&config(
        &[("primary", &primary.url()), ("backup", &url(&b))],
        "timeout: 150ms",
        "retry: { attempts: 2, backoff: 1ms }",
    ))
    .await;
    let a = pay(&proxy, "order-written").await;
    assert_eq!(a.status, 504);
    assert_eq!(a.header("x-switchyard-outcome"), Some("unknown"));
    assert_eq!(
        primary.count(),
        2,
        "retried at the primary with the same key"
    );
    assert!(primary
        .received()
        .iter()
        .all(|r| r.headers["idempotency-key"] == "order-written"));
    assert_eq!(b.stats().requests, 0);
    assert_eq!(
        metric(
            &proxy,
            r#"switchyard_unknown_outcomes_total{provider="primary",route="payments"}"#
        )
        .await,
        1.0
    );
}
