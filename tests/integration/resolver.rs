//! The resolver (issue 14): an operation whose outcome is unknown is sent again, with the same key
//! and body, to the provider it may have reached, and the provider's final answer settles it; the
//! shop's retry is then a byte-for-byte replay. Nothing with card data is kept, no answer is invented,
//! and the operation never reaches another provider.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::*;

const PAY: &str = "/v1/payment_intents";
const FORM: &str = "amount=1000&currency=eur";
const PRIMARY_OK: &str = r#"{"id":"pi_primary","status":"succeeded"}"#;
const NO_BREAKER: &str =
    "breaker: { consecutive_failures: 0, failure_rate: 1.0, min_requests: 100000 }";
/// One attempt per shop request: the first request ends unknown at once.
const ONE_TRY: &str = "retry: { attempts: 1 }";

/// A primary that resets every request (after reading it: it may have charged) until `healthy`;
/// then it answers a key it saw before as Stripe does, from its store, marked `Idempotent-Replayed`.
async fn primary(healthy: &Arc<AtomicBool>) -> MockProvider {
    let h = Arc::clone(healthy);
    let seen = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    MockProvider::start(move |r| {
        let key = r
            .headers
            .get("idempotency-key")
            .map(|v| v.to_str().unwrap_or("").to_owned());
        let again = !seen.lock().unwrap().insert(key);
        if h.load(Ordering::SeqCst) {
            let answer = Reply::status(201, PRIMARY_OK);
            if again {
                answer.header("idempotent-replayed", "true")
            } else {
                answer
            }
        } else {
            Reply::reset()
        }
    })
    .await
}

/// The config of a route to `primary` then `backup` (no breaker, one attempt), its state on disk in
/// `dir` when given.
fn local_yaml(primary: &MockProvider, backup: &MockProvider, dir: &std::path::Path) -> String {
    format!(
        "{}state: {{ backend: local, dir: {}/state }}\n",
        config(
            &[("primary", &primary.url()), ("backup", &backup.url())],
            NO_BREAKER,
            ONE_TRY
        ),
        dir.display()
    )
}

/// Whether any file of the state in `dir` holds `needle`.
fn at_rest(dir: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir.join("state"))
        .unwrap()
        .flatten()
        .map(|e| std::fs::read(e.path()).unwrap_or_default())
        .any(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
}

async fn start(primary: &MockProvider, backup: &MockProvider) -> TestProxy {
    let yaml = config(
        &[("primary", &primary.url()), ("backup", &backup.url())],
        NO_BREAKER,
        ONE_TRY,
    );
    TestProxy::start(&yaml).await
}

/// A shop payment with `key`, `body` and the shop's own credential.
async fn pay(proxy: &TestProxy, key: &str, body: &str) -> Answer {
    send(
        Request::post(proxy.url(PAY))
            .header("idempotency-key", key)
            .header("authorization", "Bearer sk_test_shop")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("stripe-version", "2024-06-20")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap(),
    )
    .await
}

async fn resolutions(proxy: &TestProxy, result: &str) -> f64 {
    metric(
        proxy,
        &format!(
            r#"switchyard_resolutions_total{{provider="primary",result="{result}",route="payments"}}"#
        ),
    )
    .await
}

async fn unknown_gauge(proxy: &TestProxy) -> f64 {
    metric(
        proxy,
        r#"switchyard_unknown_operations{provider="primary",route="payments"}"#,
    )
    .await
}

async fn listed(proxy: &TestProxy) -> Vec<serde_json::Value> {
    let a = get(&proxy.admin_url("/admin/operations?state=unknown")).await;
    assert_eq!(a.status, 200, "{}", a.text());
    a.json()["operations"].as_array().unwrap().clone()
}

#[tokio::test]
async fn an_unknown_outcome_is_resolved_without_the_shop_and_its_retry_is_a_replay() {
    let healthy = Arc::new(AtomicBool::new(false));
    let primary = primary(&healthy).await;
    let backup = MockProvider::start(|_| Reply::ok(r#"{"id":"pi_backup"}"#)).await;
    let proxy = start(&primary, &backup).await;

    let a = pay(&proxy, "order-r1", FORM).await;
    assert_eq!(a.status, 502, "{}", a.text());
    assert_eq!(a.header("x-switchyard-outcome"), Some("unknown"));
    assert_eq!(primary.count(), 1);
    // Listed, with its age and the resolver's first try coming.
    let ops = listed(&proxy).await;
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert_eq!(ops[0]["provider"], "primary");
    assert_eq!(ops[0]["route"], "payments");
    assert_eq!(ops[0]["resolver_attempts"], 0);
    assert_eq!(ops[0]["resolvable"], true);
    assert!(!ops[0].to_string().contains("order-r1"), "never the key");
    assert!(
        eventually(Duration::from_secs(3), || async {
            unknown_gauge(&proxy).await == 1.0
        })
        .await
    );

    // The provider answers again: the resolver's resend (same key, body, headers and the shop's
    // credential) gets its final answer, with no shop retry.
    healthy.store(true, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(8), || async {
            resolutions(&proxy, "resolved").await == 1.0
        })
        .await,
        "resolved within the schedule (1 s, 5 s)"
    );
    let sent = primary.received();
    let resend = sent.last().unwrap();
    assert_eq!(resend.headers["idempotency-key"], "order-r1");
    assert_eq!(resend.headers["authorization"], "Bearer sk_test_shop");
    assert_eq!(resend.headers["stripe-version"], "2024-06-20");
    assert_eq!(&resend.body[..], FORM.as_bytes());
    assert_eq!(resend.uri, sent[0].uri);
    assert!(
        eventually(Duration::from_secs(3), || async {
            unknown_gauge(&proxy).await == 0.0
        })
        .await
    );
    assert!(listed(&proxy).await.is_empty());

    // The shop's retry is the provider's answer, replayed: no provider request.
    let before = primary.count();
    let again = pay(&proxy, "order-r1", FORM).await;
    assert_eq!(again.status, 201, "{}", again.text());
    assert_eq!(again.text(), PRIMARY_OK);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.header("x-switchyard-attempts"), Some("0"));
    assert_eq!(primary.count(), before);
    assert_eq!(backup.count(), 0, "never another provider");
    let seconds = metric(
        &proxy,
        r#"switchyard_resolution_seconds_count{provider="primary",route="payments"}"#,
    )
    .await;
    assert_eq!(seconds, 1.0);
}

#[tokio::test]
async fn a_payment_with_card_data_is_not_kept_and_waits_for_the_shop() {
    let healthy = Arc::new(AtomicBool::new(false));
    let primary = primary(&healthy).await;
    let backup = MockProvider::start(|_| Reply::ok("{}")).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = local_yaml(&primary, &backup, dir.path());
    let proxy = TestProxy::start(&yaml).await;
    let body = "amount=1000&card[number]=4242424242424242&card[cvc]=123";
    let a = pay(&proxy, "order-card", body).await;
    assert_eq!(a.header("x-switchyard-outcome"), Some("unknown"));
    healthy.store(true, Ordering::SeqCst);
    let ops = listed(&proxy).await;
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0]["waiting_for"], "card_data");
    assert_eq!(ops[0]["resolvable"], false);
    assert_eq!(resolutions(&proxy, "no_request").await, 1.0);
    // Past the first two steps of the schedule: nothing was sent again.
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    assert_eq!(
        primary.count(),
        1,
        "no request with card data is kept to send"
    );
    let at_rest = at_rest(dir.path(), b"4242424242424242");
    assert!(!at_rest, "no card number in the state on disk");
    // The shop's retry still resolves it, at the primary.
    let again = pay(&proxy, "order-card", body).await;
    assert_eq!(again.status, 201, "{}", again.text());
    assert_eq!(primary.count(), 2);
    assert!(listed(&proxy).await.is_empty());
}

#[tokio::test]
async fn a_provider_that_answers_5xx_again_keeps_the_operation_unknown_and_listed() {
    let primary = MockProvider::start(|_| Reply::status(500, r#"{"error":"api_error"}"#)).await;
    let backup = MockProvider::start(|_| Reply::ok("{}")).await;
    let proxy = start(&primary, &backup).await;
    let a = pay(&proxy, "order-500", FORM).await;
    assert_eq!(a.header("x-switchyard-outcome"), Some("unknown"));
    assert!(
        eventually(Duration::from_secs(4), || async {
            resolutions(&proxy, "still_unknown").await >= 1.0
        })
        .await
    );
    assert_eq!(primary.count(), 2, "one resend, at 1 s; the next is at 5 s");
    let ops = listed(&proxy).await;
    assert_eq!(ops.len(), 1, "still listed");
    assert_eq!(ops[0]["resolver_attempts"], 1);
    let next = ops[0]["next_try_in_seconds"].as_f64().unwrap();
    assert!(next > 0.0 && next <= 4.0, "the 5 s step: {next}");
    assert_eq!(unknown_gauge(&proxy).await, 1.0);
    assert_eq!(backup.count(), 0);
    assert_eq!(
        resolutions(&proxy, "resolved").await,
        0.0,
        "no answer invented"
    );
    assert_eq!(
        metric(
            &proxy,
            r#"switchyard_unknown_outcomes_total{provider="primary",route="payments"}"#
        )
        .await,
        1.0,
        "the shop's unknown answer; the resolver's tries are counted as resolutions"
    );
}

#[tokio::test]
async fn an_operator_can_try_one_now_and_a_credential_refusal_is_not_an_answer() {
    let refuse = Arc::new(AtomicBool::new(false));
    let healthy = Arc::new(AtomicBool::new(false));
    let (r, h) = (Arc::clone(&refuse), Arc::clone(&healthy));
    let primary = MockProvider::start(move |_| {
        if r.load(Ordering::SeqCst) {
            Reply::status(401, r#"{"error":{"type":"invalid_request_error"}}"#)
        } else if h.load(Ordering::SeqCst) {
            Reply::status(201, PRIMARY_OK)
        } else {
            Reply::reset()
        }
    })
    .await;
    let backup = MockProvider::start(|_| Reply::ok("{}")).await;
    let proxy = start(&primary, &backup).await;
    pay(&proxy, "order-admin", FORM).await;
    let id = listed(&proxy).await[0]["id"].as_str().unwrap().to_owned();
    let retry = |id: String| {
        let url = proxy.admin_url(&format!("/admin/operations/{id}/retry"));
        async move { post(&url, "").await }
    };
    // A 401 to the resend is about its credential, not the payment: still unknown.
    refuse.store(true, Ordering::SeqCst);
    let a = retry(id.clone()).await;
    assert_eq!(a.status, 503, "{}", a.text());
    assert_eq!(a.json()["result"], "still_unknown");
    assert_eq!(listed(&proxy).await.len(), 1);
    refuse.store(false, Ordering::SeqCst);
    healthy.store(true, Ordering::SeqCst);
    let a = retry(id.clone()).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["result"], "resolved");
    assert_eq!(a.json()["provider_status"], 201);
    assert!(listed(&proxy).await.is_empty());
    let a = retry(id).await;
    assert_eq!(a.status, 404, "no longer unknown: {}", a.text());
    let bad = get(&proxy.admin_url("/admin/operations?state=done")).await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn a_stripe_event_naming_the_key_resolves_it_at_once() {
    use hmac::{Hmac, Mac};
    // The primary: a reset, then a 500 (still unknown: the resolver's next step is 5 s away), then
    // healthy.
    let step = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let s = Arc::clone(&step);
    let primary = MockProvider::start(move |_| match s.load(Ordering::SeqCst) {
        0 => Reply::reset(),
        1 => Reply::status(500, r#"{"error":"api_error"}"#),
        _ => Reply::status(201, PRIMARY_OK),
    })
    .await;
    let backup = MockProvider::start(|_| Reply::ok("{}")).await;
    let shop = MockProvider::start(|_| Reply::ok(r#"{"ok":true}"#)).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("whsec");
    std::fs::write(&secret, "whsec_test\n").unwrap();
    let yaml = format!(
        "{}webhooks:\n  - name: stripe-events\n    path: /webhooks/stripe\n    forward_to: {}/hook\n    verify: {{ scheme: stripe, secrets_file: [\"{}\"], tolerance: 5m }}\n",
        config(
            &[("primary", &primary.url()), ("backup", &backup.url())],
            NO_BREAKER,
            ONE_TRY
        ),
        shop.url(),
        secret.display()
    );
    let proxy = TestProxy::start(&yaml).await;
    let a = pay(&proxy, "order-wh", FORM).await;
    assert_eq!(a.header("x-switchyard-outcome"), Some("unknown"));
    step.store(1, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(3), || async {
            resolutions(&proxy, "still_unknown").await == 1.0
        })
        .await
    );
    step.store(2, Ordering::SeqCst);
    // The provider's event about the payment names the key it was made with.
    let body = r#"{"id":"evt_9","type":"payment_intent.succeeded","request":{"id":"req_9","idempotency_key":"order-wh"}}"#;
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(b"whsec_test").unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    let sig = format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()));
    let hook = send(
        Request::post(proxy.url("/webhooks/stripe"))
            .header("content-type", "application/json")
            .header("stripe-signature", sig)
            .body(Full::new(Bytes::from(body)))
            .unwrap(),
    )
    .await;
    assert_eq!(hook.status, 200, "{}", hook.text());
    // Resolved now, not at the 5 s step; by the provider's answer to the resend, not the event.
    assert!(
        eventually(Duration::from_millis(2_500), || async {
            resolutions(&proxy, "resolved").await == 1.0
        })
        .await,
        "the event had it tried at once"
    );
    assert_eq!(primary.count(), 3);
    let again = pay(&proxy, "order-wh", FORM).await;
    assert_eq!(again.text(), PRIMARY_OK);
    assert_eq!(again.header("x-switchyard-attempts"), Some("0"));
}

#[tokio::test]
async fn the_resolver_waits_while_the_breaker_is_open_and_tries_when_the_provider_is_back() {
    let healthy = Arc::new(AtomicBool::new(false));
    let primary = primary(&healthy).await;
    let backup = MockProvider::start(|_| Reply::ok(r#"{"id":"pi_backup"}"#)).await;
    let breaker = "breaker: { consecutive_failures: 2, open_for: 3s }";
    let yaml = config(
        &[("primary", &primary.url()), ("backup", &backup.url())],
        breaker,
        ONE_TRY,
    );
    let proxy = TestProxy::start(&yaml).await;
    pay(&proxy, "order-b1", FORM).await;
    pay(&proxy, "order-b2", FORM).await;
    assert_eq!(primary.count(), 2);
    let view = get(&proxy.admin_url("/admin/providers")).await.json();
    assert_eq!(view["providers"]["primary"]["breaker"], "open");
    healthy.store(true, Ordering::SeqCst);
    // Due at 1 s, but not admitted: nothing is sent into the open breaker, and it is listed so.
    assert!(
        eventually(Duration::from_secs(3), || async {
            resolutions(&proxy, "not_admitted").await == 2.0
        })
        .await
    );
    assert_eq!(primary.count(), 2, "nothing sent while the breaker is open");
    assert_eq!(listed(&proxy).await[0]["waiting_for"], "provider");
    // The breaker lets probes through after open_for: the resolver's resends are those probes, and
    // both operations are settled by the primary's answers.
    assert!(
        eventually(Duration::from_secs(6), || async {
            resolutions(&proxy, "resolved").await == 2.0
        })
        .await
    );
    assert_eq!(primary.count(), 4);
    assert_eq!(backup.count(), 0);
}

#[tokio::test]
async fn after_a_restart_the_kept_request_is_resolved_once_the_shop_brings_its_credential_back() {
    let healthy = Arc::new(AtomicBool::new(false));
    let primary = primary(&healthy).await;
    let backup = MockProvider::start(|_| Reply::ok("{}")).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = local_yaml(&primary, &backup, dir.path());
    let proxy = TestProxy::start(&yaml).await;
    let a = pay(&proxy, "order-restart", FORM).await;
    assert_eq!(a.header("x-switchyard-outcome"), Some("unknown"));
    proxy.shutdown().await;
    let on_disk = at_rest(dir.path(), b"sk_test_shop");
    assert!(!on_disk, "the shop's credential is never written");

    healthy.store(true, Ordering::SeqCst);
    let proxy = TestProxy::start(&yaml).await;
    // The kept request survived; the shop's credential did not (memory only): it waits for it.
    assert!(
        eventually(Duration::from_secs(3), || async {
            listed(&proxy)
                .await
                .first()
                .map(|o| o["waiting_for"].clone())
                == Some(serde_json::json!("shop_credential"))
        })
        .await
    );
    assert_eq!(primary.count(), 1);
    // The shop's next payment in the same scope brings it back; the resolver then settles the first.
    let other = pay(&proxy, "order-next", FORM).await;
    assert_eq!(other.status, 201);
    assert!(
        eventually(Duration::from_secs(8), || async {
            resolutions(&proxy, "resolved").await == 1.0
        })
        .await
    );
    let again = pay(&proxy, "order-restart", FORM).await;
    assert_eq!(again.header("x-switchyard-attempts"), Some("0"));
    assert_eq!(again.text(), PRIMARY_OK);
    assert_eq!(
        primary.count(),
        3,
        "the first, the next payment, one resend"
    );
}

#[tokio::test]
async fn in_a_fleet_one_sidecar_resends_an_operation_once() {
    let redis = crate::redis_support::RedisServer::start_tcp();
    let healthy = Arc::new(AtomicBool::new(false));
    let primary = primary(&healthy).await;
    let backup = MockProvider::start(|_| Reply::ok("{}")).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{}state: {{ backend: redis, dir: {}/state, redis: {{ url: \"{}\" }} }}\n",
        config(
            &[("primary", &primary.url()), ("backup", &backup.url())],
            &format!("auth: {{ header: Authorization, value_file: KEYFILE }}\n{NO_BREAKER}"),
            ONE_TRY
        ),
        dir.path().display(),
        redis.url()
    );
    let keyfile = dir.path().join("key");
    std::fs::write(&keyfile, "Bearer sk_test_fleet\n").unwrap();
    let yaml = yaml.replace("KEYFILE", &keyfile.display().to_string());
    let (a, b) = (
        TestProxy::start(&yaml).await,
        TestProxy::start(&yaml.replace("/state", "/state-b")).await,
    );
    let first = pay(&a, "order-fleet", FORM).await;
    assert_eq!(first.header("x-switchyard-outcome"), Some("unknown"));
    // Both sidecars list it.
    assert_eq!(listed(&a).await.len(), 1);
    assert_eq!(listed(&b).await.len(), 1);
    healthy.store(true, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(8), || async {
            resolutions(&a, "resolved").await + resolutions(&b, "resolved").await == 1.0
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(primary.count(), 2, "one resend for the fleet");
    let resend = primary.received().pop().unwrap();
    assert_eq!(resend.headers["authorization"], "Bearer sk_test_fleet");
    // Either sidecar replays the answer.
    let again = pay(&b, "order-fleet", FORM).await;
    assert_eq!(again.header("x-switchyard-attempts"), Some("0"));
    assert_eq!(again.text(), PRIMARY_OK);
    assert!(listed(&a).await.is_empty() && listed(&b).await.is_empty());
}

#[tokio::test]
async fn an_unknown_answer_from_a_retry_the_breaker_refused_is_counted_and_kept() {
    let healthy = Arc::new(AtomicBool::new(false));
    let primary = primary(&healthy).await;
    let backup = MockProvider::start(|_| Reply::ok("{}")).await;
    let yaml = config(
        &[("primary", &primary.url()), ("backup", &backup.url())],
        "breaker: { consecutive_failures: 1, open_for: 30s }",
        "retry: { attempts: 2, backoff: 1ms, max_backoff: 2ms, pinned_wait: 0s }",
    );
    let proxy = TestProxy::start(&yaml).await;
    let a = pay(&proxy, "order-refused", FORM).await;
    assert_eq!(a.status, 503, "{}", a.text());
    assert_eq!(
        a.header("x-switchyard-error"),
        Some("pinned_provider_unavailable")
    );
    assert_eq!(a.header("x-switchyard-outcome"), Some("unknown"));
    assert_eq!(primary.count(), 1);
    assert_eq!(
        metric(
            &proxy,
            r#"switchyard_unknown_outcomes_total{provider="primary",route="payments"}"#
        )
        .await,
        1.0
    );
    // Kept for the resolver, which waits for the breaker.
    let ops = listed(&proxy).await;
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0]["waiting_for"], "provider");
    assert_eq!(ops[0]["resolvable"], true);
}
