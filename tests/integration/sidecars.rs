//! Sidecars as real processes, killed and restarted, and several of them on one store: what the shop
//! sees and, above all, which providers charged which keys (`PAYMENT_RULES.md` §3: a payment that may
//! have been charged never goes to another provider, whatever happened to the sidecar in between).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::redis_support::RedisServer;
use crate::support::{post_with_key, MockProvider, Received, Reply};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const STARTUP: Duration = Duration::from_secs(15);

/// A sidecar process: killed and reaped on drop.
pub struct Sidecar {
    child: std::process::Child,
    pub listen: SocketAddr,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sidecar {
    /// Starts `switchyard run` on `config`; returns once it serves (or panics with its output).
    pub fn start(config: &Path) -> Self {
        Self::try_start(config).unwrap_or_else(|logs| panic!("the sidecar did not start:\n{logs}"))
    }

    /// Starts `switchyard run` on `config`: the sidecar once it serves, or everything it wrote when it
    /// exited (or took too long) instead.
    pub fn try_start(config: &Path) -> Result<Self, String> {
        Self::try_start_with_env(config, &[])
    }

    /// As [`Sidecar::try_start`], with these environment variables set.
    pub fn try_start_with_env(config: &Path, env: &[(&str, &Path)]) -> Result<Self, String> {
        let mut command = Command::new(BIN);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command
            .args(["run", "--log-format", "json", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .env("SWITCHYARD_WORKERS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("switchyard starts");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let pipe = child.stderr.take().expect("stderr is piped");
        let all = std::sync::Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                all.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        let end = std::time::Instant::now() + STARTUP;
        let serving = loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                let _ = child.wait();
                return Err(stderr.lock().unwrap().clone());
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["message"] == "switchyard is serving" {
                break v;
            }
        };
        let addr = |field: &str| -> SocketAddr {
            serving[field]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no {field} in {serving}"))
        };
        Ok(Self {
            listen: addr("listen"),
            child,
            stderr,
        })
    }

    /// A URL on the shop-facing listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    /// Sends `signal` (`KILL`, `TERM`) and waits for the process to end.
    pub fn stop(mut self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success());
        let _ = self.child.wait();
    }

    /// Everything the sidecar logged so far.
    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

/// A config file in `dir`: route `payments` to `primary` then `backup`, payment state as `state`.
pub fn write_config(dir: &Path, primary: &str, backup: &str, state: &str) -> PathBuf {
    let yaml = format!(
        "\
listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
drain_timeout: 1s
providers:
  primary:
    url: {primary}
    timeout: 2s
    # Every payment here meets the primary: a breaker that opens would send new keys to the backup,
    # which is right but not what these tests look at.
    breaker: {{ consecutive_failures: 1000, min_requests: 1000 }}
  backup:
    url: {backup}
    timeout: 2s
routes:
  - name: payments
    match: {{ path_prefix: / }}
    timeout: 5s
    retry: {{ attempts: 2, backoff: 1ms, max_backoff: 1ms, pinned_wait: 0s }}
    # New payments stay on the primary however many of its answers were 500s.
    overprovisioning: 10
    targets:
      - {{ provider: primary, priority: 0 }}
      - {{ provider: backup, priority: 1 }}
{state}"
    );
    let path = dir.join("routes.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// The idempotency keys a provider received.
pub fn keys(received: &[Received]) -> BTreeSet<String> {
    received
        .iter()
        .filter_map(|r| r.headers.get("idempotency-key")?.to_str().ok())
        .map(str::to_owned)
        .collect()
}

/// A primary that charges every payment; it answers 500 (after charging) for bodies that say so.
pub async fn charging_primary() -> MockProvider {
    MockProvider::start(|r| {
        if r.body.starts_with(b"fail") {
            Reply::status(500, r#"{"error":"internal"}"#)
        } else {
            Reply::ok(r#"{"id":"pi_charged","object":"payment_intent"}"#)
        }
    })
    .await
}

/// The restart of the issue: ten payments paid at the primary, ten left unknown (charged, then a
/// 500), the sidecar stopped with `signal` and started again while the primary is down, and the shop
/// retrying all twenty keys. Returns the keys both providers charged.
async fn restart_scenario(state: &str, signal: &str) -> (BTreeSet<String>, Vec<u16>) {
    let dir = tempfile::tempdir().unwrap();
    let primary = charging_primary().await;
    let backup = MockProvider::start(|_| Reply::ok(r#"{"id":"pi_backup"}"#)).await;
    let state = state.replace("$DIR", &dir.path().display().to_string());
    let config = write_config(dir.path(), &primary.url(), &backup.url(), &state);

    let sidecar = Sidecar::start(&config);
    for i in 0..10 {
        let a = post_with_key(&sidecar.url("/v1/charges"), &format!("paid-{i}"), "ok").await;
        assert_eq!(a.status, 200, "{}", a.text());
        let a = post_with_key(&sidecar.url("/v1/charges"), &format!("unknown-{i}"), "fail").await;
        assert_eq!(a.status, 502, "{}\n{}", a.text(), sidecar.logs());
    }
    // (A failing primary loses weight: a few new payments may go to the backup, each to one only.)
    let both_before: BTreeSet<String> = keys(&primary.received())
        .intersection(&keys(&backup.received()))
        .cloned()
        .collect();
    assert!(both_before.is_empty(), "{both_before:?}");
    sidecar.stop(signal);

    assert!(primary.go_down().await);
    let sidecar = Sidecar::start(&config);
    let mut statuses = Vec::new();
    for i in 0..10 {
        for (key, body) in [
            (format!("paid-{i}"), "ok"),
            (format!("unknown-{i}"), "fail"),
        ] {
            let a = post_with_key(&sidecar.url("/v1/charges"), &key, body).await;
            statuses.push(a.status.as_u16());
        }
    }
    let both: BTreeSet<String> = keys(&primary.received())
        .intersection(&keys(&backup.received()))
        .cloned()
        .collect();
    (both, statuses)
}

#[tokio::test]
async fn after_a_sigkill_no_payment_is_charged_by_both_providers() {
    let (both, statuses) =
        restart_scenario("state: { backend: local, dir: $DIR/state }", "KILL").await;
    assert!(both.is_empty(), "charged twice: {both:?}");
    // The paid ones are replayed; the unknown ones stay unknown at the primary (down: 502
    // outcome_unknown, retry later with the same key), never the backup.
    let replayed = statuses.iter().filter(|s| **s == 200).count();
    let held = statuses.iter().filter(|s| **s == 502).count();
    assert_eq!((replayed, held), (10, 10), "{statuses:?}");
}

#[tokio::test]
async fn after_a_sigterm_no_payment_is_charged_by_both_providers() {
    let (both, statuses) =
        restart_scenario("state: { backend: local, dir: $DIR/state }", "TERM").await;
    assert!(both.is_empty(), "charged twice: {both:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 10);
}

#[tokio::test]
async fn the_memory_backend_forgets_on_restart_as_its_documentation_says() {
    // The control of the two tests above: the same scenario without a durable store charges the
    // unknown payments twice, so the scenario does catch the fault they guard against.
    let (both, _) = restart_scenario("state: { backend: memory }", "KILL").await;
    assert!(both.len() >= 10, "{both:?}");
}

#[tokio::test]
async fn a_payment_in_flight_when_the_sidecar_is_killed_resumes_only_at_its_provider() {
    let dir = tempfile::tempdir().unwrap();
    // The primary takes the payment and answers only after the sidecar is gone.
    let primary = MockProvider::start(|_| Reply::ok("{}").delay(Duration::from_secs(30))).await;
    let backup = MockProvider::start(|_| Reply::ok(r#"{"id":"pi_backup"}"#)).await;
    let state = format!(
        "state: {{ backend: local, dir: {}/state }}",
        dir.path().display()
    );
    let config = write_config(dir.path(), &primary.url(), &backup.url(), &state);
    let sidecar = Sidecar::start(&config);
    let url = sidecar.url("/v1/charges");
    let pending = tokio::spawn(async move { post_with_key(&url, "in-flight-1", "ok").await });
    assert!(
        crate::support::eventually(Duration::from_secs(5), || async { primary.count() == 1 }).await,
        "the primary got the payment"
    );
    sidecar.stop("KILL");
    pending.abort();

    assert!(primary.go_down().await);
    let sidecar = Sidecar::start(&config);
    let a = post_with_key(&sidecar.url("/v1/charges"), "in-flight-1", "ok").await;
    // Not a 409 until a lease runs out: the store is this process's alone, so the dead holder's
    // claim is over; the retry goes to the recorded provider only, which is down: still unknown.
    assert_eq!(a.status, 502, "{}\n{}", a.text(), sidecar.logs());
    assert_eq!(
        a.header("x-switchyard-error"),
        Some("outcome_unknown"),
        "{}",
        a.text()
    );
    assert_eq!(a.header("x-switchyard-provider"), Some("primary"));
    assert_eq!(
        backup.count(),
        0,
        "the backup never sees a payment the primary may have charged"
    );
}

#[tokio::test]
async fn two_sidecars_cannot_share_one_local_store() {
    let dir = tempfile::tempdir().unwrap();
    let primary = charging_primary().await;
    let state = format!(
        "state: {{ backend: local, dir: {}/state }}",
        dir.path().display()
    );
    let config = write_config(dir.path(), &primary.url(), &primary.url(), &state);
    let _first = Sidecar::start(&config);
    let Err(logs) = Sidecar::try_start(&config) else {
        panic!("a second sidecar started on the same local store");
    };
    assert!(logs.contains("state"), "{logs}");
    assert!(
        logs.contains("redis"),
        "the error points to the shared backend: {logs}"
    );
}

#[tokio::test]
async fn a_state_dir_that_cannot_be_written_stops_start_up_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    // A folder under a regular file cannot be made, by root either.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let state = format!("state: {{ backend: local, dir: {}/state }}", file.display());
    let config = write_config(
        dir.path(),
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
        &state,
    );
    let Err(logs) = Sidecar::try_start(&config) else {
        panic!("the sidecar ran without its payment state");
    };
    assert!(
        logs.contains("not-a-dir"),
        "the error names the path: {logs}"
    );
}

/// A config for a fleet on `redis`: route `payments` to `primary` then `backup`, whose primary breaker
/// opens at its first failure and stays open for a minute.
fn fleet_config(dir: &Path, name: &str, primary: &str, backup: &str, state: &str) -> PathBuf {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let path = write_config(&dir, primary, backup, state);
    let yaml = std::fs::read_to_string(&path).unwrap().replace(
        "breaker: { consecutive_failures: 1000, min_requests: 1000 }",
        "breaker: { consecutive_failures: 1, open_for: 60s, max_open_for: 60s }",
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Two sidecars, `a` and `b`, in front of `primary` and `backup`, each with the state `state` gives for
/// its own folder.
fn two_sidecars(
    dir: &Path,
    primary: &MockProvider,
    backup: &MockProvider,
    state: &dyn Fn(&Path) -> String,
) -> (Sidecar, Sidecar) {
    let start = |name: &str| {
        let own = dir.join(name);
        Sidecar::start(&fleet_config(
            dir,
            name,
            &primary.url(),
            &backup.url(),
            &state(&own),
        ))
    };
    (start("a"), start("b"))
}

fn redis_state(redis: &RedisServer, dir: &Path) -> String {
    format!(
        "state: {{ backend: redis, dir: {}/state, redis: {{ url: {}, timeout: 200ms }} }}",
        dir.display(),
        redis.url()
    )
}

/// The fleet of the issue: an unknown outcome at one sidecar, then the shop's retry of the same key
/// at another whose breaker for the primary is open. Returns what the retry got and the keys both
/// providers charged.
async fn unknown_then_retry_elsewhere(state: impl Fn(&Path) -> String) -> (u16, BTreeSet<String>) {
    let dir = tempfile::tempdir().unwrap();
    let primary = charging_primary().await;
    let backup = MockProvider::start(|_| Reply::ok(r#"{"id":"pi_backup"}"#)).await;
    let (a, b) = two_sidecars(dir.path(), &primary, &backup, &state);
    // At A: charged, then a 500: unknown.
    let first = post_with_key(&a.url("/v1/charges"), "order-1", "fail").await;
    assert_eq!(
        first.header("x-switchyard-outcome"),
        Some("unknown"),
        "{}",
        first.text()
    );
    // At B: another payment fails at the primary, and B's breaker for it opens.
    let other = post_with_key(&b.url("/v1/charges"), "order-2", "fail").await;
    assert_eq!(
        other.header("x-switchyard-outcome"),
        Some("unknown"),
        "{}",
        other.text()
    );
    // The shop's retry of order-1 lands on B.
    let retry = post_with_key(&b.url("/v1/charges"), "order-1", "fail").await;
    let both: BTreeSet<String> = keys(&primary.received())
        .intersection(&keys(&backup.received()))
        .cloned()
        .collect();
    (retry.status.as_u16(), both)
}

#[tokio::test]
async fn a_retry_at_another_sidecar_never_goes_to_the_backup_with_a_shared_store() {
    let redis = RedisServer::start_tcp();
    let (status, both) = unknown_then_retry_elsewhere(|d| redis_state(&redis, d)).await;
    assert!(both.is_empty(), "charged twice: {both:?}");
    assert_eq!(status, 503, "the retry waits for the primary");
}

#[tokio::test]
async fn without_a_shared_store_the_retry_elsewhere_charges_twice() {
    // The control: each sidecar on its own memory, as before the shared store. The scenario does
    // catch the fault the test above guards against.
    let (status, both) =
        unknown_then_retry_elsewhere(|_| "state: { backend: memory }".into()).await;
    assert_eq!(status, 200);
    assert_eq!(both.len(), 1, "{both:?}");
}

#[tokio::test]
async fn the_same_key_at_two_sidecars_at_once_is_charged_once() {
    let redis = RedisServer::start_tcp();
    let dir = tempfile::tempdir().unwrap();
    let primary = MockProvider::start(|_| {
        Reply::ok(r#"{"id":"pi_1","object":"payment_intent"}"#).delay(Duration::from_millis(300))
    })
    .await;
    let backup = MockProvider::start(|_| Reply::ok(r#"{"id":"pi_backup"}"#)).await;
    let (a, b) = two_sidecars(dir.path(), &primary, &backup, &|d: &Path| {
        redis_state(&redis, d)
    });
    let (a_url, b_url) = (a.url("/v1/charges"), b.url("/v1/charges"));
    let (x, y) = tokio::join!(
        post_with_key(&a_url, "order-1", "ok"),
        post_with_key(&b_url, "order-1", "ok"),
    );
    let mut statuses = [x.status.as_u16(), y.status.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409], "{}\n{}", x.text(), y.text());
    assert_eq!(primary.count() + backup.count(), 1, "one charge");
    // Afterwards either sidecar replays it.
    let again = post_with_key(&b.url("/v1/charges"), "order-1", "ok").await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(primary.count() + backup.count(), 1);
}

#[tokio::test]
async fn with_redis_down_keyed_payments_fail_closed_and_reach_no_provider() {
    let mut redis = RedisServer::start_tcp();
    let dir = tempfile::tempdir().unwrap();
    let primary = charging_primary().await;
    let backup = MockProvider::start(|_| Reply::ok("{}")).await;
    let sidecar = Sidecar::start(&fleet_config(
        dir.path(),
        "a",
        &primary.url(),
        &backup.url(),
        &redis_state(&redis, dir.path()),
    ));
    let ok = post_with_key(&sidecar.url("/v1/charges"), "before", "ok").await;
    assert_eq!(ok.status, 200);
    redis.kill();
    let a = post_with_key(&sidecar.url("/v1/charges"), "during", "ok").await;
    assert_eq!(a.status, 503, "{}", a.text());
    assert_eq!(a.header("x-switchyard-error"), Some("state_unavailable"));
    assert!(a.header("retry-after").is_some());
    assert_eq!((primary.count(), backup.count()), (1, 0), "nothing sent");
}

#[tokio::test]
async fn a_redis_that_forgot_keeps_keyed_payments_on_the_primary() {
    let redis = RedisServer::start_tcp();
    let dir = tempfile::tempdir().unwrap();
    // The primary refuses connections: a payment would normally fail over at once.
    let closed = crate::support::closed_port().await;
    let backup = MockProvider::start(|_| Reply::ok("{}")).await;
    let sidecar = Sidecar::start(&fleet_config(
        dir.path(),
        "a",
        &format!("http://{closed}"),
        &backup.url(),
        &redis_state(&redis, dir.path()),
    ));
    redis.flushall();
    // The sidecar notices within its check interval.
    let mut last = None;
    for i in 0..50 {
        let a = post_with_key(&sidecar.url("/v1/charges"), &format!("k{i}"), "ok").await;
        if a.header("x-switchyard-state") == Some("degraded") {
            last = Some(a);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a = last.unwrap_or_else(|| panic!("never degraded:\n{}", sidecar.logs()));
    assert_ne!(a.status, 200, "not served by the backup: {}", a.text());
    let before = backup.count();
    let again = post_with_key(&sidecar.url("/v1/charges"), "after-forget", "ok").await;
    assert_eq!(again.header("x-switchyard-state"), Some("degraded"));
    assert_eq!(
        backup.count(),
        before,
        "no keyed payment crosses while degraded"
    );
}

#[tokio::test]
async fn with_redis_down_primary_only_serves_keyed_payments_at_the_primary_marked_degraded() {
    let mut redis = RedisServer::start_tcp();
    let dir = tempfile::tempdir().unwrap();
    let primary = charging_primary().await;
    let backup = MockProvider::start(|_| Reply::ok("{}")).await;
    let state = format!(
        "state: {{ backend: redis, dir: {}/state, redis: {{ url: {}, timeout: 200ms, on_unavailable: primary_only }} }}",
        dir.path().display(),
        redis.url()
    );
    let sidecar = Sidecar::start(&fleet_config(
        dir.path(),
        "a",
        &primary.url(),
        &backup.url(),
        &state,
    ));
    redis.kill();
    let a = post_with_key(&sidecar.url("/v1/charges"), "during", "ok").await;
    assert_eq!(a.status, 200, "{}\n{}", a.text(), sidecar.logs());
    assert_eq!(a.header("x-switchyard-provider"), Some("primary"));
    assert_eq!(a.header("x-switchyard-state"), Some("degraded"));
    // Its record is this sidecar's: the same key is replayed, not charged again.
    let again = post_with_key(&sidecar.url("/v1/charges"), "during", "ok").await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!((primary.count(), backup.count()), (1, 0));
}

/// A redis-server speaking TLS only, with `tls`'s certificate; killed on drop.
struct TlsRedis {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsRedis {
    fn start(tls: &crate::support::TestTls) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let child = Command::new(crate::redis_support::redis_server_binary())
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--tls-port")
            .arg(port.to_string())
            .arg("--tls-cert-file")
            .arg(&tls.cert_file)
            .arg("--tls-key-file")
            .arg(&tls.key_file)
            .arg("--tls-ca-cert-file")
            .arg(&tls.ca_file)
            .args(["--tls-auth-clients", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < end,
                "redis-server did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            port,
            _dir: dir,
        }
    }
}

#[tokio::test]
async fn a_fleet_store_over_tls_is_used_and_verified() {
    let tls = crate::support::TestTls::new();
    let redis = TlsRedis::start(&tls);
    let dir = tempfile::tempdir().unwrap();
    let primary = charging_primary().await;
    let state = format!(
        "state: {{ backend: redis, dir: {}/state, redis: {{ url: \"rediss://127.0.0.1:{}\", timeout: 500ms }} }}",
        dir.path().display(),
        redis.port
    );
    let config = fleet_config(dir.path(), "a", &primary.url(), &primary.url(), &state);
    // Without the CA among the trusted roots, the sidecar does not start: the server is not trusted.
    let Err(logs) =
        Sidecar::try_start_with_env(&config, &[("SSL_CERT_FILE", &dir.path().join("none.pem"))])
    else {
        panic!("an untrusted Redis certificate was accepted");
    };
    assert!(logs.contains("state.redis"), "{logs}");
    let sidecar = Sidecar::try_start_with_env(&config, &[("SSL_CERT_FILE", &tls.ca_file)])
        .unwrap_or_else(|logs| panic!("{logs}"));
    let a = post_with_key(&sidecar.url("/v1/charges"), "tls-1", "ok").await;
    assert_eq!(a.status, 200, "{}", a.text());
    let again = post_with_key(&sidecar.url("/v1/charges"), "tls-1", "ok").await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(primary.count(), 1);
}
