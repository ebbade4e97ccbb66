//! The sandbox provider's modes, seen through the proxy (a standalone sandbox on port 0 behind the
//! real proxy), and its control API on the sidecar's admin listener (an in-config `sandbox:` entry).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::{json, Value};
use switchyard::config::MapSecrets;
use switchyard::sandbox::{Mode, ModeSpec, Sandbox, Stats};

use crate::support::*;

const PAY: &str = "/v1/payment_intents";
const FORM: &str = "amount=1000&currency=eur";

/// A standalone sandbox named `name` and the proxy in front of it; `extra` is appended to the
/// provider's YAML. The proxy's breaker never trips, a 429 throttles for 1 ms only, it keeps no
/// idempotency records and never retries, so that every request shows the sandbox's own behaviour
/// rather than the proxy's protection from it.
async fn behind_proxy(name: &str, extra: &str) -> (Sandbox, TestProxy) {
    let sandbox = Sandbox::start(name, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let url = format!("http://{}", sandbox.addr());
    let transparent = format!(
        "breaker: {{ consecutive_failures: 0, failure_rate: 1.0, min_requests: 100000 }}\nmax_throttle: 1ms\n{extra}"
    );
    let proxy = TestProxy::start(&config(
        &[(name, &url)],
        &transparent,
        "idempotency: { mode: off }\nretry: { attempts: 1 }",
    ))
    .await;
    (sandbox, proxy)
}

fn mode(mode: Mode) -> ModeSpec {
    ModeSpec {
        mode,
        ..ModeSpec::default()
    }
}

/// Asserts a provider answer passed through the proxy: the provider's status, no proxy error.
fn assert_from_provider(answer: &Answer, status: u16, provider: &str) {
    assert_eq!(answer.status, status, "body: {}", answer.text());
    assert_eq!(
        answer.header("x-switchyard-error"),
        None,
        "body: {}",
        answer.text()
    );
    assert_eq!(answer.header("x-switchyard-provider"), Some(provider));
}

/// Asserts the proxy reported an unknown outcome: a provider 5xx without a "not executed" marker may
/// hide a charge, so the proxy never passes it on as if it were a plain failure.
fn assert_unknown(answer: &Answer, provider: &str) {
    assert_eq!(answer.status, 502, "body: {}", answer.text());
    assert_eq!(answer.header("x-switchyard-error"), Some("outcome_unknown"));
    assert_eq!(answer.header("x-switchyard-outcome"), Some("unknown"));
    assert_eq!(answer.header("x-switchyard-provider"), Some(provider));
}

fn charges_by_key(stats: &Stats, key: &str) -> u64 {
    stats.charges_by_key.get(key).copied().unwrap_or(0)
}

/// Whether a TCP connection to `addr` is accepted.
async fn accepts(addr: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_ok()
}

#[tokio::test]
async fn ok_charges_with_the_amount_of_a_form_or_json_body() {
    let (sandbox, proxy) = behind_proxy("psp-ok", "").await;

    let answer = post(&proxy.url(PAY), FORM).await;
    assert_from_provider(&answer, 200, "psp-ok");
    let payment = answer.json();
    assert!(
        payment["id"].as_str().unwrap().starts_with("pi_"),
        "{payment}"
    );
    assert_eq!(payment["amount"], 1000);
    assert_eq!(payment["currency"], "eur");
    assert_eq!(payment["status"], "succeeded");
    assert_eq!(payment["provider"], "psp-ok");

    let answer = send(
        Request::post(proxy.url(PAY))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"amount": 250, "currency": "usd"}"#,
            )))
            .unwrap(),
    )
    .await;
    assert_from_provider(&answer, 200, "psp-ok");
    let second = answer.json();
    assert_eq!(second["amount"], 250);
    assert_eq!(second["currency"], "usd");
    assert_ne!(second["id"], payment["id"]);

    let stats = sandbox.stats();
    assert_eq!((stats.requests, stats.charges), (2, 2));
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_repeated_key_replays_the_first_answer_without_charging_again() {
    let (sandbox, proxy) = behind_proxy("psp-replay", "").await;

    let first = post_with_key(&proxy.url(PAY), "order-1", FORM).await;
    assert_from_provider(&first, 200, "psp-replay");
    assert_eq!(first.header("idempotent-replayed"), None);

    let again = post_with_key(&proxy.url(PAY), "order-1", FORM).await;
    assert_from_provider(&again, 200, "psp-replay");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body);

    let stats = sandbox.stats();
    assert_eq!(stats.charges, 1);
    assert_eq!(charges_by_key(&stats, "order-1"), 1);
    assert_eq!(stats.replays, 1);

    // The same key with other parameters is refused, as Stripe does.
    let other = post_with_key(&proxy.url(PAY), "order-1", "amount=2000").await;
    assert_from_provider(&other, 400, "psp-replay");
    assert_eq!(other.json()["error"]["type"], "idempotency_error");
    assert_eq!(sandbox.stats().charges, 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_same_key_while_in_flight_gets_409_and_one_charge() {
    let (sandbox, proxy) = behind_proxy("psp-inflight", "").await;
    sandbox.set_mode(ModeSpec {
        process_ms: 500,
        ..mode(Mode::Ok)
    });

    let url = proxy.url(PAY);
    let first = tokio::spawn(async move { post_with_key(&url, "order-2", FORM).await });
    // The first request is being processed (its key is in flight) before the second is sent.
    assert!(
        eventually(Duration::from_secs(5), || async {
            sandbox.stats().requests == 1
        })
        .await
    );
    let second = post_with_key(&proxy.url(PAY), "order-2", FORM).await;
    assert_from_provider(&second, 409, "psp-inflight");
    assert_eq!(second.json()["error"]["type"], "idempotency_error");

    let first = first.await.unwrap();
    assert_from_provider(&first, 200, "psp-inflight");

    let stats = sandbox.stats();
    assert_eq!(stats.charges, 1);
    assert_eq!(charges_by_key(&stats, "order-2"), 1);
    assert_eq!(stats.conflicts, 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn without_a_key_every_request_is_a_new_charge() {
    let (sandbox, proxy) = behind_proxy("psp-unkeyed", "").await;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..3 {
        let answer = post(&proxy.url(PAY), FORM).await;
        assert_from_provider(&answer, 200, "psp-unkeyed");
        ids.insert(answer.json()["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 3, "three distinct payments: {ids:?}");
    let stats = sandbox.stats();
    assert_eq!((stats.charges, stats.unkeyed_charges), (3, 3));
    assert!(stats.charges_by_key.is_empty());
    proxy.shutdown().await;
}

#[tokio::test]
async fn down_is_unreachable_and_comes_back_on_the_same_port() {
    let (sandbox, proxy) = behind_proxy("psp-down", "connect_timeout: 1s").await;
    let addr = sandbox.addr();

    sandbox.set_mode(mode(Mode::Down));
    assert!(eventually(Duration::from_secs(5), || async { !accepts(addr).await }).await);
    let answer = post(&proxy.url(PAY), FORM).await;
    assert_eq!(answer.status, 502, "body: {}", answer.text());
    assert_eq!(
        answer.header("x-switchyard-error"),
        Some("provider_unreachable")
    );
    assert_eq!(sandbox.stats().requests, 0);

    sandbox.set_mode(mode(Mode::Ok));
    assert!(eventually(Duration::from_secs(5), || accepts(addr)).await);
    assert_eq!(sandbox.addr(), addr);
    let answer = post(&proxy.url(PAY), FORM).await;
    assert_from_provider(&answer, 200, "psp-down");
    assert_eq!(sandbox.stats().charges, 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn error503_charges_nothing_and_the_proxy_reports_it_as_unknown() {
    let (sandbox, proxy) = behind_proxy("psp-503", "").await;
    sandbox.set_mode(mode(Mode::Error503));
    let answer = post_with_key(&proxy.url(PAY), "order-3", FORM).await;
    assert_unknown(&answer, "psp-503");
    let stats = sandbox.stats();
    assert_eq!((stats.requests, stats.charges), (1, 0));

    // Nothing was recorded for the key: once healthy, the same key charges once.
    sandbox.set_mode(mode(Mode::Ok));
    let answer = post_with_key(&proxy.url(PAY), "order-3", FORM).await;
    assert_from_provider(&answer, 200, "psp-503");
    assert_eq!(answer.header("idempotent-replayed"), None);
    assert_eq!(sandbox.stats().charges, 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn error500_charges_and_a_retry_with_the_key_replays_the_stored_answer() {
    let (sandbox, proxy) = behind_proxy("psp-500", "").await;
    sandbox.set_mode(mode(Mode::Error500));
    let answer = post_with_key(&proxy.url(PAY), "order-4", FORM).await;
    assert_unknown(&answer, "psp-500");
    let stats = sandbox.stats();
    assert_eq!(stats.charges, 1, "a 500 does not mean nothing was charged");
    assert_eq!(charges_by_key(&stats, "order-4"), 1);

    sandbox.set_mode(mode(Mode::Ok));
    let retry = post_with_key(&proxy.url(PAY), "order-4", FORM).await;
    assert_from_provider(&retry, 200, "psp-500");
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    let payment = retry.json();
    assert!(
        payment["id"].as_str().unwrap().starts_with("pi_"),
        "{payment}"
    );
    assert_eq!(payment["amount"], 1000);
    let stats = sandbox.stats();
    assert_eq!(stats.charges, 1);
    assert_eq!(stats.replays, 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn slow_answers_late_and_a_provider_timeout_does_not_hide_the_charge() {
    let (sandbox, proxy) = behind_proxy("psp-slow", "").await;
    sandbox.set_mode(ModeSpec {
        delay_ms: 300,
        ..mode(Mode::Slow)
    });
    let started = Instant::now();
    let answer = post(&proxy.url(PAY), FORM).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_from_provider(&answer, 200, "psp-slow");
    assert_eq!(sandbox.stats().charges, 1);

    // A second sidecar that waits only 100 ms for the same provider.
    let url = format!("http://{}", sandbox.addr());
    let impatient = TestProxy::start(&config(
        &[("psp-slow", &url)],
        "timeout: 100ms",
        "retry: { attempts: 1 }",
    ))
    .await;
    let answer = post(&impatient.url(PAY), FORM).await;
    assert_eq!(answer.status, 504, "body: {}", answer.text());
    assert_eq!(
        answer.header("x-switchyard-error"),
        Some("provider_timeout")
    );
    // The provider charged anyway: the outcome is unknown to the shop, not "nothing happened".
    assert!(
        eventually(Duration::from_secs(2), || async {
            sandbox.stats().charges == 2
        })
        .await
    );
    impatient.shutdown().await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn throttle_answers_429_with_retry_after() {
    let (sandbox, proxy) = behind_proxy("psp-throttle", "").await;
    sandbox.set_mode(ModeSpec {
        retry_after_s: 7,
        ..mode(Mode::Throttle)
    });
    let answer = post(&proxy.url(PAY), FORM).await;
    assert_from_provider(&answer, 429, "psp-throttle");
    assert_eq!(answer.header("retry-after"), Some("7"));
    assert_eq!(answer.json()["error"]["type"], "rate_limit_error");
    assert_eq!(sandbox.stats().charges, 0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn flaky_fails_its_ratio_of_requests() {
    let (sandbox, proxy) = behind_proxy("psp-flaky", "").await;
    sandbox.set_mode(ModeSpec {
        ratio: 1.0,
        ..mode(Mode::Flaky)
    });
    for _ in 0..5 {
        let answer = post(&proxy.url(PAY), FORM).await;
        assert_unknown(&answer, "psp-flaky");
    }
    assert_eq!(sandbox.stats().charges, 0);

    sandbox.set_mode(ModeSpec {
        ratio: 0.0,
        ..mode(Mode::Flaky)
    });
    for _ in 0..5 {
        let answer = post(&proxy.url(PAY), FORM).await;
        assert_from_provider(&answer, 200, "psp-flaky");
    }
    let stats = sandbox.stats();
    assert_eq!((stats.requests, stats.charges), (10, 5));
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_payment_can_be_read_back() {
    let (_sandbox, proxy) = behind_proxy("psp-read", "").await;
    let created = post(&proxy.url(PAY), FORM).await;
    assert_from_provider(&created, 200, "psp-read");
    let id = created.json()["id"].as_str().unwrap().to_owned();

    let read = get(&proxy.url(&format!("{PAY}/{id}"))).await;
    assert_from_provider(&read, 200, "psp-read");
    assert_eq!(read.json(), created.json());

    let unknown = get(&proxy.url(&format!("{PAY}/pi_does_not_exist"))).await;
    assert_from_provider(&unknown, 404, "psp-read");
    assert_eq!(unknown.json()["error"]["type"], "invalid_request_error");
    proxy.shutdown().await;
}

// --- the control API on the admin listener ---------------------------------------------------

/// A proxy with an in-config sandbox `name` on port 0; `admin_extra` is appended to `admin:`.
async fn with_config_sandbox(name: &str, admin_extra: &str) -> TestProxy {
    with_config_sandbox_secrets(name, admin_extra, MapSecrets::new()).await
}

async fn with_config_sandbox_secrets(
    name: &str,
    admin_extra: &str,
    secrets: MapSecrets,
) -> TestProxy {
    let unused = closed_port().await;
    let mut yaml = config(&[("psp-unused", &format!("http://{unused}"))], "", "");
    if !admin_extra.is_empty() {
        yaml = yaml.replacen(
            "admin:\n  listen: 127.0.0.1:0\n",
            &format!("admin:\n  listen: 127.0.0.1:0\n  {admin_extra}\n"),
            1,
        );
    }
    yaml.push_str(&format!(
        "sandbox:\n  - {{ name: {name}, listen: 127.0.0.1:0 }}\n"
    ));
    TestProxy::start_with_secrets(&yaml, secrets).await
}

async fn admin_post(proxy: &TestProxy, path: &str, body: Value, token: Option<&str>) -> Answer {
    let mut req = Request::post(proxy.admin_url(path)).header("content-type", "application/json");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    send(req.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await
}

/// Creates a payment directly at the in-process sandbox.
async fn charge_directly(sandbox: &Sandbox) -> Answer {
    post(&format!("http://{}{PAY}", sandbox.addr()), FORM).await
}

#[tokio::test]
async fn the_admin_api_shows_switches_and_resets_a_sandbox() {
    let proxy = with_config_sandbox("psp-ctl", "").await;
    let sandbox = proxy.app().sandbox("psp-ctl").unwrap().clone();
    assert_ne!(sandbox.addr().port(), 0);
    assert_eq!(charge_directly(&sandbox).await.status, 200);
    assert_eq!(charge_directly(&sandbox).await.status, 200);

    // GET one: mode, address and counters.
    let view = get(&proxy.admin_url("/admin/sandbox/psp-ctl")).await;
    assert_eq!(view.status, 200, "{}", view.text());
    let view = view.json();
    assert_eq!(view["name"], "psp-ctl");
    assert_eq!(view["mode"], "ok");
    assert_eq!(view["listen"], sandbox.addr().to_string());
    assert_eq!(view["requests"], 2);
    assert_eq!(view["charges"], 2);
    assert_eq!(view["unkeyed_charges"], 2);

    // GET all.
    let list = get(&proxy.admin_url("/admin/sandbox")).await;
    assert_eq!(list.status, 200, "{}", list.text());
    let list = list.json();
    let all = list["sandboxes"].as_array().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["name"], "psp-ctl");
    assert_eq!(all[0]["charges"], 2);

    // A bad mode or parameter is refused and changes nothing.
    for bad in [
        json!({"mode": "melt"}),
        json!({"mode": "flaky", "ratio": 2.0}),
        json!({"mode": "ok", "bogus": 1}),
    ] {
        let answer = admin_post(&proxy, "/admin/sandbox/psp-ctl", bad.clone(), None).await;
        assert_eq!(answer.status, 400, "{bad}: {}", answer.text());
        assert_eq!(sandbox.mode().mode, Mode::Ok, "{bad}");
    }

    // An unknown sandbox is a 404, read or written.
    assert_eq!(
        get(&proxy.admin_url("/admin/sandbox/psp-nope"))
            .await
            .status,
        404
    );
    let answer = admin_post(
        &proxy,
        "/admin/sandbox/psp-nope",
        json!({"mode": "down"}),
        None,
    )
    .await;
    assert_eq!(answer.status, 404);

    // Switching the mode takes effect at once.
    let answer = admin_post(
        &proxy,
        "/admin/sandbox/psp-ctl",
        json!({"mode": "throttle", "retry_after_s": 3}),
        None,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["mode"], "throttle");
    assert_eq!(answer.json()["mode_spec"]["retry_after_s"], 3);
    let throttled = charge_directly(&sandbox).await;
    assert_eq!(throttled.status, 429);
    assert_eq!(throttled.header("retry-after"), Some("3"));

    // Reset clears the counters and keeps the mode.
    let answer = admin_post(&proxy, "/admin/sandbox/psp-ctl/reset", json!({}), None).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let view = answer.json();
    assert_eq!(view["requests"], 0);
    assert_eq!(view["charges"], 0);
    assert_eq!(view["unkeyed_charges"], 0);
    assert_eq!(view["mode"], "throttle");
    let stats = sandbox.stats();
    assert_eq!((stats.requests, stats.charges), (0, 0));
    proxy.shutdown().await;
}

#[tokio::test]
async fn with_an_admin_token_sandbox_writes_need_the_bearer_token() {
    let var = format!("SWITCHYARD_TEST_SANDBOX_TOKEN_{}", std::process::id());
    let token = "sandbox-admin-token-3f9c";
    let proxy = with_config_sandbox_secrets(
        "psp-locked",
        &format!("token_env: {var}"),
        MapSecrets::new().with(var.as_str(), token),
    )
    .await;
    let sandbox = proxy.app().sandbox("psp-locked").unwrap().clone();
    let path = "/admin/sandbox/psp-locked";

    // Reads stay open.
    assert_eq!(get(&proxy.admin_url(path)).await.status, 200);

    for wrong in [None, Some("not-the-token")] {
        let answer = admin_post(&proxy, path, json!({"mode": "down"}), wrong).await;
        assert_eq!(answer.status, 401, "{wrong:?}: {}", answer.text());
        assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
        assert_eq!(sandbox.mode().mode, Mode::Ok, "{wrong:?}");
    }
    assert_eq!(charge_directly(&sandbox).await.status, 200);
    let answer = admin_post(&proxy, &format!("{path}/reset"), json!({}), None).await;
    assert_eq!(answer.status, 401);
    assert_eq!(sandbox.stats().charges, 1);

    let answer = admin_post(&proxy, path, json!({"mode": "error503"}), Some(token)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(sandbox.mode().mode, Mode::Error503);
    let answer = admin_post(&proxy, &format!("{path}/reset"), json!({}), Some(token)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(sandbox.stats().charges, 0);
    proxy.shutdown().await;
}
