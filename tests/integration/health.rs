//! Provider health: breakers, active checks, throttling, drains, quotas and route limits, and where the
//! traffic goes because of them.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use switchyard::config::MapSecrets;

use crate::support::*;

/// A mock whose status for payments can be switched at run time; `/healthz` answers `health`.
struct Switchable {
    mock: MockProvider,
    status: Arc<AtomicU16>,
    health: Arc<AtomicU16>,
}

impl Switchable {
    async fn start(name: &'static str) -> Self {
        let status = Arc::new(AtomicU16::new(200));
        let health = Arc::new(AtomicU16::new(200));
        let (s, h) = (Arc::clone(&status), Arc::clone(&health));
        let mock = MockProvider::start(move |r| {
            if r.uri.starts_with("/healthz") {
                return Reply::status(h.load(Ordering::SeqCst), "{}");
            }
            let code = s.load(Ordering::SeqCst);
            let reply = Reply::status(code, &format!(r#"{{"provider":"{name}"}}"#));
            if code == 429 {
                reply.header("retry-after", "1")
            } else {
                reply
            }
        })
        .await;
        Self {
            mock,
            status,
            health,
        }
    }
    fn set(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }
    fn payments(&self) -> usize {
        self.mock
            .received()
            .iter()
            .filter(|r| !r.uri.starts_with("/healthz"))
            .count()
    }
}

const BREAKER: &str = "breaker: { consecutive_failures: 3, open_for: 300ms, max_open_for: 2s, half_open_probes: 2, jitter: 0 }";

/// Primary and backup behind one route. Retries are off (one attempt per request) unless
/// `route_extra` sets them, so each request feeds the breaker exactly once.
fn two(
    primary: &Switchable,
    backup: &Switchable,
    provider_extra: &str,
    route_extra: &str,
) -> String {
    let route_extra = if route_extra.contains("retry:") {
        route_extra.to_owned()
    } else {
        format!("retry: {{ attempts: 1 }}\n{route_extra}")
    };
    let route_extra = route_extra.as_str();
    config(
        &[
            ("primary", &primary.mock.url()),
            ("backup", &backup.mock.url()),
        ],
        provider_extra,
        route_extra,
    )
}

async fn who(proxy: &TestProxy) -> (u16, String) {
    let a = post(&proxy.url("/v1/payment_intents"), "amount=1").await;
    (
        a.status.as_u16(),
        a.header("x-switchyard-provider").unwrap_or("").to_owned(),
    )
}

async fn providers_view(proxy: &TestProxy) -> serde_json::Value {
    get(&proxy.admin_url("/admin/providers")).await.json()
}

#[tokio::test]
async fn a_failing_primary_trips_its_breaker_and_traffic_moves_to_the_backup_and_back() {
    let (p, b) = (
        Switchable::start("primary").await,
        Switchable::start("backup").await,
    );
    let extra = format!("{BREAKER}\nslow_start: 2s");
    // Unkeyed: the shop's own requests are the breaker's probes here (the resolver would send the
    // unknown ones again as probes of its own).
    let unkeyed = "idempotency: { mode: off }";
    let proxy = TestProxy::start(&two(&p, &b, &extra, unkeyed)).await;
    assert_eq!(who(&proxy).await, (200, "primary".into()));

    p.set(503);
    // Each of the first three failures reaches the shop (a 5xx may hide a charge: the proxy reports the
    // outcome as unknown, and never sends it elsewhere); then the breaker opens.
    for _ in 0..3 {
        assert_eq!(who(&proxy).await, (502, "primary".into()));
    }
    let view = providers_view(&proxy).await;
    assert_eq!(view["providers"]["primary"]["breaker"], "open");
    assert_eq!(view["providers"]["primary"]["health"], 0.0);
    assert_eq!(view["routes"]["payments"][1]["share"], 1.0);
    let sent_to_primary = p.payments();
    for _ in 0..10 {
        assert_eq!(who(&proxy).await, (200, "backup".into()));
    }
    assert_eq!(
        p.payments(),
        sent_to_primary,
        "nothing is sent into an open breaker"
    );
    assert_eq!(
        metric(
            &proxy,
            r#"switchyard_breaker_state{provider="primary",state="open"}"#
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &proxy,
            r#"switchyard_breaker_transitions_total{from="closed",provider="primary",to="open"}"#
        )
        .await,
        1.0
    );

    // Still failing when the open period ends: the probe fails and the breaker reopens, for longer.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        who(&proxy).await,
        (502, "primary".into()),
        "the first request after open_for is a probe"
    );
    assert_eq!(
        providers_view(&proxy).await["providers"]["primary"]["breaker"],
        "open"
    );
    assert_eq!(who(&proxy).await, (200, "backup".into()));

    // Healed: after the (doubled) open period, two probes succeed and the breaker closes.
    p.set(200);
    tokio::time::sleep(Duration::from_millis(650)).await;
    assert_eq!(who(&proxy).await, (200, "primary".into()));
    assert_eq!(who(&proxy).await, (200, "primary".into()));
    assert_eq!(
        providers_view(&proxy).await["providers"]["primary"]["breaker"],
        "closed"
    );

    // Slow start: right after closing, the primary gets only part of the traffic, then all of it.
    let share = |v: &serde_json::Value| v["routes"]["payments"][0]["share"].as_f64().unwrap();
    let early = share(&providers_view(&proxy).await);
    assert!(early < 0.6, "primary share right after recovery: {early}");
    let mut early_backup = 0;
    for _ in 0..40 {
        if who(&proxy).await.1 == "backup" {
            early_backup += 1;
        }
    }
    assert!(
        early_backup > 0,
        "slow start sends some traffic to the backup at first"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(share(&providers_view(&proxy).await), 1.0);
    for _ in 0..20 {
        assert_eq!(who(&proxy).await, (200, "primary".into()));
    }
}

#[tokio::test]
async fn connection_refused_trips_the_breaker_too() {
    let b = Switchable::start("backup").await;
    let dead = closed_port().await;
    let yaml = config(
        &[
            ("primary", &format!("http://{dead}")),
            ("backup", &b.mock.url()),
        ],
        BREAKER,
        "",
    );
    let proxy = TestProxy::start(&yaml).await;
    // Refused connections send nothing: each request fails over to the backup at once, and the shop
    // never sees the failure. After three, the breaker opens and requests go straight to the backup.
    for _ in 0..3 {
        let a = post(&proxy.url("/v1/x"), "").await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("x-switchyard-provider"), Some("backup"));
        assert_eq!(a.header("x-switchyard-attempts"), Some("2"));
    }
    assert_eq!(
        providers_view(&proxy).await["providers"]["primary"]["breaker"],
        "open"
    );
    for _ in 0..5 {
        let a = post(&proxy.url("/v1/x"), "").await;
        assert_eq!(a.header("x-switchyard-provider"), Some("backup"));
        assert_eq!(a.header("x-switchyard-attempts"), Some("1"));
    }
    assert_eq!(
        metric(&proxy, r#"switchyard_failovers_total{from="primary",reason="not_sent",route="payments",to="backup"}"#).await,
        3.0
    );
}

#[tokio::test]
async fn declines_and_4xx_do_not_count_as_failures() {
    let (p, b) = (
        Switchable::start("primary").await,
        Switchable::start("backup").await,
    );
    let proxy = TestProxy::start(&two(&p, &b, BREAKER, "")).await;
    p.set(402);
    for _ in 0..10 {
        assert_eq!(who(&proxy).await, (402, "primary".into()));
    }
    assert_eq!(
        providers_view(&proxy).await["providers"]["primary"]["breaker"],
        "closed"
    );
}

#[tokio::test]
async fn a_provider_429_shifts_traffic_without_tripping_the_breaker() {
    let (p, b) = (
        Switchable::start("primary").await,
        Switchable::start("backup").await,
    );
    let proxy = TestProxy::start(&two(&p, &b, &format!("{BREAKER}\nslow_start: 0s"), "")).await;
    p.set(429);
    let first = post(&proxy.url("/v1/x"), "").await;
    assert_eq!(
        first.status, 429,
        "the provider's own answer reaches the shop"
    );
    assert_eq!(first.header("retry-after"), Some("1"));
    assert_eq!(first.header("x-switchyard-provider"), Some("primary"));
    let view = providers_view(&proxy).await;
    assert_eq!(view["providers"]["primary"]["breaker"], "closed");
    assert!(
        view["providers"]["primary"]["throttled_remaining_ms"]
            .as_u64()
            .unwrap()
            > 500
    );
    assert_eq!(
        metric(
            &proxy,
            r#"switchyard_provider_throttled{provider="primary"}"#
        )
        .await,
        1.0
    );
    for _ in 0..5 {
        assert_eq!(who(&proxy).await, (200, "backup".into()));
    }
    assert_eq!(p.payments(), 1);
    // After Retry-After, the primary takes traffic again.
    p.set(200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(who(&proxy).await, (200, "primary".into()));
    assert_eq!(
        metric(
            &proxy,
            r#"switchyard_breaker_transitions_total{from="closed",provider="primary""#
        )
        .await,
        0.0
    );
}

#[tokio::test]
async fn drain_and_undrain_move_traffic_by_hand() {
    let (p, b) = (
        Switchable::start("primary").await,
        Switchable::start("backup").await,
    );
    let var = "SWITCHYARD_TEST_DRAIN_TOKEN";
    let yaml = two(&p, &b, "slow_start: 0s", "").replace(
        "admin:\n  listen: 127.0.0.1:0\n",
        &format!("admin:\n  listen: 127.0.0.1:0\n  token_env: {var}\n"),
    );
    let proxy =
        TestProxy::start_with_secrets(&yaml, MapSecrets::new().with(var, "drain-token")).await;
    let action = |a: &str| {
        http::Request::post(proxy.admin_url(&format!("/admin/providers/primary/{a}")))
            .header("authorization", "Bearer drain-token")
            .body(Default::default())
            .unwrap()
    };
    assert_eq!(
        post(&proxy.admin_url("/admin/providers/primary/drain"), "")
            .await
            .status,
        401
    );
    assert_eq!(who(&proxy).await.1, "primary");

    let drained = send(action("drain")).await;
    assert_eq!(drained.status, 200);
    assert_eq!(drained.json()["drained"], true);
    for _ in 0..5 {
        assert_eq!(who(&proxy).await, (200, "backup".into()));
    }
    assert_eq!(
        metric(&proxy, r#"switchyard_provider_drained{provider="primary"}"#).await,
        1.0
    );
    assert_eq!(
        metric(
            &proxy,
            r#"switchyard_route_target_share{provider="backup",route="payments"}"#
        )
        .await,
        1.0
    );
    assert_eq!(send(action("undrain")).await.status, 200);
    assert_eq!(who(&proxy).await, (200, "primary".into()));
    assert_eq!(send(action("nonsense")).await.status, 404);
    let unknown = send(
        http::Request::post(proxy.admin_url("/admin/providers/nobody/drain"))
            .header("authorization", "Bearer drain-token")
            .body(Default::default())
            .unwrap(),
    )
    .await;
    assert_eq!(unknown.status, 404);
}

#[tokio::test]
async fn no_healthy_provider_is_503_with_retry_after_and_nothing_is_sent() {
    let (p, b) = (
        Switchable::start("primary").await,
        Switchable::start("backup").await,
    );
    let breaker = "breaker: { consecutive_failures: 1, open_for: 5s, jitter: 0 }";
    let proxy = TestProxy::start(&two(&p, &b, breaker, "")).await;
    p.set(500);
    b.set(500);
    assert_eq!(who(&proxy).await, (502, "primary".into()));
    assert_eq!(who(&proxy).await, (502, "backup".into()));
    let sent = p.payments() + b.payments();
    let a = post(&proxy.url("/v1/x"), "").await;
    assert_eq!(a.status, 503);
    assert_eq!(a.header("x-switchyard-error"), Some("no_healthy_provider"));
    let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry), "{retry}");
    assert_eq!(p.payments() + b.payments(), sent);
}

#[tokio::test]
async fn active_health_checks_take_a_provider_out_and_back() {
    let (p, b) = (
        Switchable::start("primary").await,
        Switchable::start("backup").await,
    );
    let extra = "health_check: { path: /healthz, interval: 50ms, timeout: 40ms, unhealthy_after: 2, healthy_after: 2 }\nslow_start: 0s";
    let proxy = TestProxy::start(&two(&p, &b, extra, "")).await;
    assert_eq!(who(&proxy).await.1, "primary");
    p.health.store(503, Ordering::SeqCst);
    let admin = proxy.admin_url("/admin/providers");
    assert!(
        eventually(Duration::from_secs(3), || async {
            get(&admin).await.json()["providers"]["primary"]["checks"]["status"] == "unhealthy"
        })
        .await
    );
    for _ in 0..5 {
        assert_eq!(who(&proxy).await, (200, "backup".into()));
    }
    assert!(
        metric(
            &proxy,
            r#"switchyard_health_checks_total{provider="primary",result="fail"}"#
        )
        .await
            >= 2.0
    );
    p.health.store(200, Ordering::SeqCst);
    let url = proxy.url("/v1/x");
    assert!(
        eventually(Duration::from_secs(3), || async {
            post(&url, "").await.header("x-switchyard-provider") == Some("primary")
        })
        .await
    );
}

#[tokio::test]
async fn health_checks_stop_when_a_reload_removes_the_provider() {
    let (p, b) = (
        Switchable::start("primary").await,
        Switchable::start("backup").await,
    );
    let extra = "health_check: { path: /healthz, interval: 30ms, timeout: 20ms }";
    let proxy = TestProxy::start(&two(&p, &b, extra, "")).await;
    assert!(eventually(Duration::from_secs(2), || async { p.mock.count() >= 2 }).await);
    proxy.write_config(&config(&[("backup", &b.mock.url())], extra, ""));
    proxy.app().reload().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = p.mock.count();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        p.mock.count(),
        after,
        "checks of a removed provider must stop"
    );
    assert!(
        b.mock.count() > 0,
        "the remaining provider is still checked"
    );
}

#[tokio::test]
async fn breaker_state_survives_a_reload() {
    let (p, b) = (
        Switchable::start("primary").await,
        Switchable::start("backup").await,
    );
    let breaker = "breaker: { consecutive_failures: 2, open_for: 10s, jitter: 0 }";
    let proxy = TestProxy::start(&two(&p, &b, breaker, "")).await;
    p.set(503);
    who(&proxy).await;
    who(&proxy).await;
    assert_eq!(
        providers_view(&proxy).await["providers"]["primary"]["breaker"],
        "open"
    );
    // A reload that changes the route (a new timeout) keeps the provider's state by name.
    proxy.write_config(&two(&p, &b, breaker, "timeout: 20s"));
    assert_eq!(proxy.app().reload().await, Ok(2));
    assert_eq!(
        providers_view(&proxy).await["providers"]["primary"]["breaker"],
        "open"
    );
    p.set(200);
    assert_eq!(who(&proxy).await, (200, "backup".into()));
}

#[tokio::test]
async fn route_rate_limit_answers_429_with_retry_after_per_key() {
    let (p, b) = (
        Switchable::start("primary").await,
        Switchable::start("backup").await,
    );
    let proxy = TestProxy::start(&two(
        &p,
        &b,
        "",
        "rate_limit: { rps: 1, burst: 2, by: \"header:x-shop-id\" }",
    ))
    .await;
    let req = |shop: &str| {
        http::Request::post(proxy.url("/v1/x"))
            .header("x-shop-id", shop)
            .body(Default::default())
            .unwrap()
    };
    assert_eq!(send(req("a")).await.status, 200);
    assert_eq!(send(req("a")).await.status, 200);
    let limited = send(req("a")).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("x-switchyard-error"), Some("rate_limited"));
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert!(limited.header("x-switchyard-provider").is_none());
    assert_eq!(
        send(req("b")).await.status,
        200,
        "another shop has its own bucket"
    );
    assert_eq!(p.payments(), 3, "the refused request reached no provider");
    assert_eq!(
        metric(
            &proxy,
            r#"switchyard_rate_limited_total{route="payments",scope="route"}"#
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn provider_quota_waits_then_passes_the_attempt_to_the_next_target() {
    let (p, b) = (
        Switchable::start("primary").await,
        Switchable::start("backup").await,
    );
    let quota = "quota: { rps: 1, burst: 1, max_wait: 0s }";
    let yaml = config(
        &[("primary", &p.mock.url()), ("backup", &b.mock.url())],
        "",
        "",
    )
    .replacen(
        &format!("    url: {}\n", p.mock.url()),
        &format!("    url: {}\n    {quota}\n", p.mock.url()),
        1,
    );
    let proxy = TestProxy::start(&yaml).await;
    assert_eq!(who(&proxy).await, (200, "primary".into()));
    assert_eq!(
        who(&proxy).await,
        (200, "backup".into()),
        "over quota: not sent, next target"
    );
    assert_eq!(p.payments(), 1);
    assert_eq!(
        metric(
            &proxy,
            r#"switchyard_rate_limited_total{route="payments",scope="provider"}"#
        )
        .await,
        1.0
    );

    // A single target at its quota: the shop gets 429 with Retry-After; within max_wait, the request waits.
    let solo = TestProxy::start(&config(&[("primary", &p.mock.url())], quota, "")).await;
    assert_eq!(who(&solo).await.0, 200);
    let a = post(&solo.url("/v1/x"), "").await;
    assert_eq!(a.status, 429);
    assert_eq!(
        a.header("x-switchyard-error"),
        Some("provider_quota_exhausted")
    );
    assert_eq!(a.header("retry-after"), Some("1"));
    let patient = TestProxy::start(&config(
        &[("primary", &p.mock.url())],
        "quota: { rps: 10, burst: 1, max_wait: 500ms }",
        "",
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(
            who(&patient).await.0,
            200,
            "waits for its slot within max_wait"
        );
    }
}
