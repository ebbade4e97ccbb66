//! Hot reload: the file watch, POST /admin/reload, a bad file never replacing a good one, and traffic
//! that never fails while the config changes under it.

use std::sync::Arc;
use std::time::Duration;

use switchyard::config::{MapSecrets, SecretRef};

use crate::support::*;

async fn two_mocks() -> (MockProvider, MockProvider) {
    (
        MockProvider::start(|_| Reply::ok("a")).await,
        MockProvider::start(|_| Reply::ok("b")).await,
    )
}

#[tokio::test]
async fn file_change_is_applied_and_reported() {
    let (a, b) = two_mocks().await;
    let proxy = TestProxy::start_opts(&config(&[("psp", &a.url())], "", ""), true).await;
    assert_eq!(post(&proxy.url("/v1/x"), "").await.body, "a");

    proxy.write_config(&config(&[("psp", &b.url())], "", ""));
    let url = proxy.url("/v1/x");
    assert!(
        eventually(Duration::from_secs(5), || async {
            post(&url, "").await.body == "b"
        })
        .await,
        "the file watch did not apply the new config"
    );
    let view = get(&proxy.admin_url("/admin/config")).await.json();
    assert_eq!(view["generation"], 2);
    assert!(view["last_reload_error"].is_null());
    assert_eq!(view["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(
        metric(
            &proxy,
            r#"switchyard_config_reloads_total{result="success"}"#
        )
        .await,
        1.0
    );
    assert_eq!(metric(&proxy, "switchyard_config_generation").await, 2.0);
}

#[tokio::test]
async fn bad_file_keeps_the_old_config_and_says_where() {
    let (a, b) = two_mocks().await;
    let proxy = TestProxy::start_opts(&config(&[("psp", &a.url())], "", ""), true).await;
    let bad = config(&[("psp", &b.url())], "", "").replace("provider: psp", "provider: psp-bakup");
    proxy.write_config(&bad);
    let admin = proxy.admin_url("/admin/config");
    assert!(
        eventually(Duration::from_secs(5), || async {
            !get(&admin).await.json()["last_reload_error"].is_null()
        })
        .await,
        "the bad file was not noticed"
    );
    let view = get(&admin).await.json();
    let error = view["last_reload_error"].as_str().unwrap();
    assert!(
        error.contains(r#"routes[0].targets[0].provider (line 11): unknown provider "psp-bakup""#),
        "{error}"
    );
    assert_eq!(view["generation"], 1);
    assert_eq!(
        post(&proxy.url("/v1/x"), "").await.body,
        "a",
        "the old config keeps serving"
    );
    assert_eq!(
        metric(
            &proxy,
            r#"switchyard_config_reloads_total{result="failure"}"#
        )
        .await,
        1.0
    );

    // A malformed file likewise.
    proxy.write_config("routes: [ { name: x\n");
    let url = proxy.url("/v1/x");
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&admin).await.json()["last_reload_error"]
                .as_str()
                .is_some_and(|e| e.contains("line"))
                && post(&url, "").await.body == "a"
        })
        .await
    );

    // Fixed: applied, error cleared.
    proxy.write_config(&config(&[("psp", &b.url())], "", ""));
    assert!(
        eventually(Duration::from_secs(5), || async {
            post(&url, "").await.body == "b"
        })
        .await
    );
    assert!(get(&admin).await.json()["last_reload_error"].is_null());
}

#[tokio::test]
async fn admin_reload_endpoint_needs_the_token_when_configured() {
    let (a, b) = two_mocks().await;
    let var = "SWITCHYARD_TEST_RELOAD_TOKEN";
    let with_token = |url: &str| {
        config(&[("psp", url)], "", "").replace(
            "admin:\n  listen: 127.0.0.1:0\n",
            &format!("admin:\n  listen: 127.0.0.1:0\n  token_env: {var}\n"),
        )
    };
    let proxy = TestProxy::start_with_secrets(
        &with_token(&a.url()),
        MapSecrets::new().with(var, "s3cret-admin"),
    )
    .await;
    proxy.write_config(&with_token(&b.url()));
    let reload = proxy.admin_url("/admin/reload");

    let denied = post(&reload, "").await;
    assert_eq!(denied.status, 401);
    assert_eq!(denied.header("www-authenticate"), Some("Bearer"));
    let wrong = send(
        http::Request::post(&reload)
            .header("authorization", "Bearer nope")
            .body(Default::default())
            .unwrap(),
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(
        post(&proxy.url("/v1/x"), "").await.body,
        "a",
        "nothing was reloaded"
    );

    let ok = send(
        http::Request::post(&reload)
            .header("authorization", "Bearer s3cret-admin")
            .body(Default::default())
            .unwrap(),
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["generation"], 2);
    assert_eq!(post(&proxy.url("/v1/x"), "").await.body, "b");

    // A failed reload answers 422 with the error, and the generation stays.
    proxy.write_config(&with_token(&b.url()).replace("routes:", "routes:\n  - bogus: 1\n"));
    let failed = send(
        http::Request::post(&reload)
            .header("authorization", "Bearer s3cret-admin")
            .body(Default::default())
            .unwrap(),
    )
    .await;
    assert_eq!(failed.status, 422);
    assert_eq!(failed.json()["generation"], 2);
    assert!(failed.json()["error"].as_str().unwrap().contains("line"));
}

#[tokio::test]
async fn listen_change_needs_a_restart_and_the_rest_applies() {
    let (a, b) = two_mocks().await;
    let proxy = TestProxy::start(&config(&[("psp", &a.url())], "", "")).await;
    let port = closed_port().await.port();
    proxy.write_config(&config(&[("psp", &b.url())], "", "").replace(
        "listen: 127.0.0.1:0\nadmin",
        &format!("listen: 127.0.0.1:{port}\nadmin"),
    ));
    assert_eq!(proxy.app().reload().await, Ok(2));
    let view = get(&proxy.admin_url("/admin/config")).await.json();
    let notes = view["restart_required"].as_array().unwrap();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].as_str().unwrap().starts_with("listen changed"));
    assert_eq!(
        post(&proxy.url("/v1/x"), "").await.body,
        "b",
        "served on the old address, new routes"
    );
    assert_eq!(
        metric(&proxy, "switchyard_config_restart_required").await,
        1.0
    );
}

#[tokio::test]
async fn a_request_finishes_on_the_generation_it_started_with() {
    let slow = MockProvider::start(|_| Reply::ok("old").delay(Duration::from_millis(400))).await;
    let fresh = MockProvider::start(|_| Reply::ok("new")).await;
    let proxy = TestProxy::start(&config(&[("old-psp", &slow.url())], "", "")).await;
    let url = proxy.url("/v1/x");
    let in_flight = tokio::spawn(async move { post(&url, "").await });
    assert!(eventually(Duration::from_secs(2), || async { slow.count() == 1 }).await);
    // The new config no longer has the old provider at all.
    proxy.write_config(&config(&[("new-psp", &fresh.url())], "", ""));
    assert_eq!(proxy.app().reload().await, Ok(2));
    let answer = in_flight.await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "old");
    assert_eq!(post(&proxy.url("/v1/x"), "").await.body, "new");
}

#[tokio::test]
async fn reloads_under_traffic_fail_no_request() {
    let (a, b) = two_mocks().await;
    let proxy = TestProxy::start(&config(&[("psp", &a.url())], "", "")).await;
    let proxy = Arc::new(proxy);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (url, stop) = (proxy.url("/v1/x"), Arc::clone(&stop));
        workers.push(tokio::spawn(async move {
            let client = client();
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let a = send_with(
                    &client,
                    http::Request::post(&url).body(Default::default()).unwrap(),
                )
                .await;
                if a.status == 200 {
                    ok += 1;
                } else {
                    failed.push((a.status, a.text()));
                }
            }
            (ok, failed)
        }));
    }
    let bad = config(&[("psp", &b.url())], "", "").replace("provider: psp", "provider: nope");
    for i in 0..30 {
        let yaml = match i % 3 {
            0 => config(&[("psp", &b.url())], "", ""),
            1 => bad.clone(),
            _ => config(&[("psp", &a.url())], "", ""),
        };
        proxy.write_config(&yaml);
        let _ = proxy.app().reload().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        let (ok, failed) = w.await.unwrap();
        assert!(
            failed.is_empty(),
            "requests failed during reloads: {failed:?}"
        );
        total += ok;
    }
    assert!(total > 0);
    assert_eq!(
        metric(
            &proxy,
            r#"switchyard_config_reloads_total{result="failure"}"#
        )
        .await,
        10.0
    );
    assert_eq!(
        metric(
            &proxy,
            r#"switchyard_config_reloads_total{result="success"}"#
        )
        .await,
        20.0
    );
    assert!(a.count() > 0 && b.count() > 0);
}

#[tokio::test]
async fn a_file_too_deep_or_too_large_is_refused_and_the_old_config_keeps_serving() {
    let (a, b) = two_mocks().await;
    let proxy = TestProxy::start(&config(&[("psp", &a.url())], "", "")).await;
    let url = proxy.url("/v1/x");

    let deep = format!(
        "{}listen: {}{}\n",
        config(&[("psp", &b.url())], "", "").replacen("listen: 127.0.0.1:0\n", "", 1),
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    proxy.write_config(&deep);
    let error = proxy.app().reload().await.unwrap_err();
    assert!(
        error.contains("deeper than the limit of 64 levels"),
        "{error}"
    );
    assert_eq!(
        post(&url, "").await.body,
        "a",
        "the old config keeps serving"
    );

    let mut large = config(&[("psp", &b.url())], "", "");
    let filler = format!("# {}\n", "x".repeat(1022));
    while large.len() <= switchyard::config::MAX_CONFIG_BYTES {
        large.push_str(&filler);
    }
    proxy.write_config(&large);
    let error = proxy.app().reload().await.unwrap_err();
    assert!(
        error.contains(&format!(
            "limit of {} bytes",
            switchyard::config::MAX_CONFIG_BYTES
        )),
        "{error}"
    );
    assert_eq!(
        post(&url, "").await.body,
        "a",
        "the old config keeps serving"
    );
    assert_eq!(proxy.app().generation().number, 1);
    assert_eq!(
        metric(
            &proxy,
            r#"switchyard_config_reloads_total{result="failure"}"#
        )
        .await,
        2.0
    );

    // The good file applies again.
    proxy.write_config(&config(&[("psp", &b.url())], "", ""));
    assert_eq!(proxy.app().reload().await, Ok(2));
    assert_eq!(post(&url, "").await.body, "b");
}

/// Reads every secret as "gated-token", but only once the gate is open (or after 10 s, as an error).
#[derive(Clone, Default)]
struct Gate(Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

impl Gate {
    fn set(&self, open: bool) {
        let (lock, changed) = &*self.0;
        *lock.lock().unwrap() = open;
        changed.notify_all();
    }
}

impl SecretSource for Gate {
    fn read(&self, _: &SecretRef) -> Result<String, String> {
        let (lock, changed) = &*self.0;
        let guard = lock.lock().unwrap();
        let (open, timeout) = changed
            .wait_timeout_while(guard, Duration::from_secs(10), |open| !*open)
            .unwrap();
        if timeout.timed_out() || !*open {
            return Err("the gate stayed closed".to_owned());
        }
        Ok("gated-token".to_owned())
    }
}

#[tokio::test]
async fn a_reload_reads_and_validates_off_the_thread_that_serves_requests() {
    // The test runtime has one thread: were the reload to read its secrets on it, the request below
    // could not be served until the gate opened, and the gate opens only after that request.
    let (a, b) = two_mocks().await;
    let with_token = |url: &str| {
        config(&[("psp", url)], "", "").replace(
            "admin:\n  listen: 127.0.0.1:0\n",
            "admin:\n  listen: 127.0.0.1:0\n  token_env: GATED_ADMIN_TOKEN\n",
        )
    };
    let gate = Gate::default();
    gate.set(true);
    let proxy = TestProxy::start_with_secrets(&with_token(&a.url()), gate.clone()).await;
    gate.set(false);
    proxy.write_config(&with_token(&b.url()));
    let reload = tokio::spawn({
        let req = http::Request::post(proxy.admin_url("/admin/reload"))
            .header("authorization", "Bearer gated-token")
            .body(Default::default())
            .unwrap();
        async move { send(req).await }
    });
    // Let the reload start and block on the gate.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!reload.is_finished());
    assert_eq!(post(&proxy.url("/v1/x"), "").await.body, "a");
    gate.set(true);
    let answer = reload.await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(post(&proxy.url("/v1/x"), "").await.body, "b");
}

/// A reload that removes a provider (and the route naming it) removes its metric series too: a
/// reload from many routes back to a few must not keep serving the old ones for ever.
#[tokio::test]
async fn series_of_a_removed_provider_leave_metrics_with_it() {
    let (a, b) = two_mocks().await;
    let both = config(&[("psp", &a.url()), ("psp-old", &b.url())], "", "");
    let proxy = TestProxy::start(&both).await;
    assert_eq!(post(&proxy.url("/v1/x"), "").await.status, 200);
    let before = get(&proxy.admin_url("/metrics")).await.text();
    assert!(before.contains(r#"provider="psp-old""#), "{before}");

    proxy.write_config(&config(&[("psp", &a.url())], "", ""));
    assert_eq!(proxy.app().reload().await, Ok(2));
    let after = get(&proxy.admin_url("/metrics")).await.text();
    assert!(!after.contains("psp-old"), "{after}");
    assert!(
        after.contains(r#"switchyard_requests_total{code="200",provider="psp",route="payments"}"#),
        "the series of what is still configured stay: {after}"
    );
}
