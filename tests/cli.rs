//! The `switchyard` binary: `check` (exit codes, line numbers, secrets never printed), `sandbox` (its
//! announced addresses and control API) and `run` (serving, logs free of credentials and card numbers,
//! exit 0 after SIGTERM). Every child process is killed and reaped, also when a test fails.

#[path = "integration/support.rs"]
mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use switchyard::sandbox::Sandbox;

use support::{get, post, send};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn switchyard() -> Command {
    let mut cmd = Command::new(BIN);
    // Logs at a known level, whatever the developer's environment says.
    cmd.env_remove("RUST_LOG");
    cmd
}

fn run_check(args: &[&str], env: &[(&str, &str)], unset: &[&str]) -> Output {
    let mut cmd = switchyard();
    cmd.arg("check").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    for k in unset {
        cmd.env_remove(k);
    }
    cmd.output().expect("switchyard runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write_config(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("routes.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// A name no other process has set.
fn unique_var(stem: &str) -> String {
    format!("SWITCHYARD_TEST_{stem}_{}", std::process::id())
}

#[test]
fn check_accepts_the_shipped_routes_yaml() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("routes.yaml");
    let out = run_check(&["--config", path.to_str().unwrap()], &[], &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    for expected in ["OK", "payments", "psp-primary", "psp-backup"] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn a_bad_worker_count_is_refused_with_its_name() {
    let out = switchyard()
        .args(["run", "--config", "does-not-matter.yaml"])
        .env("SWITCHYARD_WORKERS", "many")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("--workers") && err.contains("many"), "{err}");
}

#[test]
fn check_names_the_path_and_line_of_an_unknown_provider() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "\
listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
providers:
  psp-primary:
    url: http://127.0.0.1:9101
  psp-backup:
    url: http://127.0.0.1:9102
routes:
  - name: payments
    match:
      path_prefix: /v1/
    targets:
      - provider: psp-primary
        priority: 0
      - provider: psp-bakup
        priority: 1
";
    let line = yaml.lines().position(|l| l.contains("psp-bakup")).unwrap() + 1;
    let path = write_config(dir.path(), yaml);
    let out = run_check(&["--config", path.to_str().unwrap()], &[], &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}\n{}", stderr(&out));
    let expected =
        format!("routes[0].targets[1].provider (line {line}): unknown provider \"psp-bakup\"");
    assert!(text.contains(&expected), "missing {expected:?} in:\n{text}");
    assert!(text.contains("INVALID"), "{text}");
}

#[test]
fn check_refuses_a_file_too_deep_or_too_large_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let deep = format!("listen: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let path = write_config(dir.path(), &deep);
    let out = run_check(&["--config", path.to_str().unwrap()], &[], &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}\n{}", stderr(&out));
    assert!(text.contains("INVALID"), "{text}");
    assert!(
        text.contains("line 1: mappings and lists nest deeper than the limit of 64 levels"),
        "{text}"
    );

    std::fs::write(&path, vec![b'#'; (4 << 20) + 1]).unwrap();
    let out = run_check(&["--config", path.to_str().unwrap()], &[], &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}\n{}", stderr(&out));
    assert!(text.contains("INVALID"), "{text}");
    assert!(
        text.contains("more than the limit of 4194304 bytes (4 MiB)"),
        "{text}"
    );

    let mut not_utf8 = b"listen: 127.0.0.1:0\nroutes:\n  - name: caf".to_vec();
    not_utf8.extend_from_slice(b"\xe9\n");
    std::fs::write(&path, not_utf8).unwrap();
    let out = run_check(&["--config", path.to_str().unwrap()], &[], &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}\n{}", stderr(&out));
    assert!(text.contains("line 3: not UTF-8"), "{text}");
}

#[test]
fn check_lists_the_webhooks() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("whsec"), "whsec_test\n").unwrap();
    let yaml = format!(
        "\
listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
providers:
  psp-primary:
    url: http://127.0.0.1:9101
routes:
  - name: payments
    match: {{ path_prefix: /v1/ }}
    timeout: 1500ms
    targets:
      - {{ provider: psp-primary }}
webhooks:
  - name: stripe-events
    path: /webhooks/stripe
    forward_to: http://127.0.0.1:3000/payments/webhook?token=hidden
    verify: {{ scheme: stripe, secrets_file: [\"{}\"] }}
    forward_authorization: false
",
        dir.path().join("whsec").display()
    );
    let path = write_config(dir.path(), &yaml);
    let out = run_check(&["--config", path.to_str().unwrap()], &[], &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    for expected in [
        "webhooks (1):",
        "stripe-events",
        "POST /webhooks/stripe",
        "-> http://127.0.0.1:3000/payments/webhook ",
        "verify stripe (1 key)",
        "Authorization not forwarded",
        "timeout 1.5s",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains("hidden"), "{text}");
}

fn config_with_auth_env(var: &str) -> String {
    format!(
        "\
listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
providers:
  psp-primary:
    url: http://127.0.0.1:9101
    auth: {{ value_env: {var} }}
routes:
  - name: payments
    match: {{ path_prefix: /v1/ }}
    targets:
      - {{ provider: psp-primary }}
"
    )
}

#[test]
fn check_reports_a_missing_secret_and_never_prints_a_secret_value() {
    let dir = tempfile::tempdir().unwrap();
    let var = unique_var("UNSET_PROVIDER_KEY");
    let path = write_config(dir.path(), &config_with_auth_env(&var));
    let config = path.to_str().unwrap();

    // Missing: invalid, naming the variable.
    let out = run_check(&["--config", config], &[], &[&var]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}\n{}", stderr(&out));
    assert!(text.contains(&var), "the variable is not named:\n{text}");

    // Missing but allowed: valid, and the summary says where the secret comes from.
    let out = run_check(
        &["--config", config, "--allow-missing-secrets"],
        &[],
        &[&var],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    let secrets = text
        .split_once("secrets read")
        .unwrap_or_else(|| panic!("no \"secrets read\" section:\n{text}"))
        .1;
    assert!(secrets.contains(&var), "{text}");
    assert!(
        secrets.contains("providers.psp-primary.auth.value_env"),
        "{text}"
    );
    assert!(
        !text.contains("placeholder"),
        "a value was printed:\n{text}"
    );

    // Set: valid, and its value appears nowhere.
    let value = "sk_live_CHECKSECRET987";
    let out = run_check(&["--config", config], &[(&var, value)], &[]);
    let (text, err) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{text}\n{err}");
    assert!(text.contains(&var), "{text}");
    assert!(
        !text.contains(value) && !err.contains(value),
        "the secret was printed:\n{text}\n{err}"
    );
}

#[test]
fn check_names_the_state_store_and_never_prints_the_redis_password() {
    let dir = tempfile::tempdir().unwrap();
    let base = "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nproviders:\n  psp: { url: http://127.0.0.1:9101 }\nroutes:\n  - name: payments\n    targets: [{ provider: psp }]\n";

    let path = write_config(dir.path(), base);
    let out = run_check(&["--config", path.to_str().unwrap()], &[], &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    let folder = dir.path().join("state");
    assert!(
        text.contains(&format!("state: local in {}", folder.display())),
        "{text}"
    );

    let var = unique_var("REDIS_URL");
    let yaml = format!("{base}state:\n  backend: redis\n  redis: {{ url_env: {var} }}\n");
    let path = write_config(dir.path(), &yaml);
    let url = "redis://app:s3cr3t-REDIS-pw@127.0.0.1:6379/2";
    let out = run_check(&["--config", path.to_str().unwrap()], &[(&var, url)], &[]);
    let (text, err) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{text}\n{err}");
    assert!(
        text.contains("state: redis at redis://app:***@127.0.0.1:6379/2, timeout 100ms, on_unavailable fail_closed"),
        "{text}"
    );
    assert!(text.contains("state.redis.url_env"), "{text}");
    assert!(
        !text.contains("s3cr3t") && !err.contains("s3cr3t"),
        "the password was printed:\n{text}\n{err}"
    );

    // The same URL written in the file is refused, naming the key and line, without the password.
    let yaml = format!("{base}state:\n  backend: redis\n  redis: {{ url: \"{url}\" }}\n");
    let path = write_config(dir.path(), &yaml);
    let out = run_check(&["--config", path.to_str().unwrap()], &[], &[]);
    let (text, err) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{text}\n{err}");
    assert!(text.contains("state.redis.url (line 11)"), "{text}");
    assert!(
        !text.contains("s3cr3t") && !err.contains("s3cr3t"),
        "the password was printed:\n{text}\n{err}"
    );
}

/// A child process, killed and reaped on drop; its output lines are collected by reader threads.
struct Child {
    child: std::process::Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    stderr_all: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Child {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("switchyard starts");
        let stderr_all = Arc::new(Mutex::new(String::new()));
        let (out_tx, stdout) = mpsc::channel();
        let (err_tx, stderr) = mpsc::channel();
        let readers = vec![
            read_lines(child.stdout.take().unwrap(), out_tx, None),
            read_lines(
                child.stderr.take().unwrap(),
                err_tx,
                Some(Arc::clone(&stderr_all)),
            ),
        ];
        Self {
            child,
            stdout,
            stderr,
            stderr_all,
            readers,
        }
    }

    /// The first line of `stream` for which `pick` returns a value, within `limit`.
    fn wait_for<T>(
        stream: &mpsc::Receiver<String>,
        limit: Duration,
        mut pick: impl FnMut(&str) -> Option<T>,
    ) -> Option<T> {
        let end = Instant::now() + limit;
        loop {
            let left = end.checked_duration_since(Instant::now())?;
            let line = stream.recv_timeout(left).ok()?;
            if let Some(found) = pick(&line) {
                return Some(found);
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits up to `limit` for the process to exit.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything written to stderr; kills the process first if it still runs, then drains the pipes.
    fn finish_stderr(&mut self) -> String {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        self.stderr_all.lock().unwrap().clone()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn read_lines(
    pipe: impl Read + Send + 'static,
    tx: mpsc::Sender<String>,
    all: Option<Arc<Mutex<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Some(all) = &all {
                let mut all = all.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
            let _ = tx.send(line);
        }
    })
}

const STARTUP: Duration = Duration::from_secs(10);

#[tokio::test]
async fn sandbox_announces_its_addresses_and_serves_payments_and_control() {
    let mut cmd = switchyard();
    cmd.args([
        "sandbox",
        "--listen",
        "127.0.0.1:0",
        "--name",
        "psp-x",
        "--control",
        "127.0.0.1:0",
    ]);
    let mut child = Child::spawn(cmd);
    let listen = Child::wait_for(&child.stdout, STARTUP, |l| {
        l.strip_prefix("sandbox psp-x listening on ")
            .map(str::to_owned)
    })
    .expect("the sandbox prints its address");
    let control = Child::wait_for(&child.stdout, STARTUP, |l| {
        l.strip_prefix("sandbox control on ").map(str::to_owned)
    })
    .expect("the sandbox prints its control address");
    let listen: std::net::SocketAddr = listen.trim().parse().unwrap();
    let control: std::net::SocketAddr = control.trim().parse().unwrap();
    assert!(listen.ip().is_loopback() && listen.port() != 0);
    assert!(control.ip().is_loopback() && control.port() != 0);

    let answer = post(
        &format!("http://{listen}/v1/payment_intents"),
        "amount=1000&currency=eur",
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let payment = answer.json();
    assert_eq!(payment["provider"], "psp-x");
    assert_eq!(payment["amount"], 1000);

    let view = get(&format!("http://{control}/admin/sandbox/psp-x")).await;
    assert_eq!(view.status, 200, "{}", view.text());
    let view = view.json();
    assert_eq!(view["charges"], 1);
    assert_eq!(view["listen"], listen.to_string());

    // It stops on SIGINT (Ctrl-C) with exit code 0.
    child.signal("INT");
    let status = child.wait_exit(Duration::from_secs(5));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{status:?}");
}

#[tokio::test]
async fn run_serves_keeps_secrets_and_card_numbers_out_of_the_logs_and_exits_0_on_sigterm() {
    const SHOP_CREDENTIAL: &str = "sk_live_SECRETVALUE123";
    const PROVIDER_CREDENTIAL: &str = "sk_live_PROVIDERVALUE456";
    const CARD: &str = "4242424242424242";

    // The provider runs in this test process; the sidecar also starts a sandbox of its own.
    let provider = Sandbox::start("psp-cli", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let var = unique_var("RUN_PROVIDER_KEY");
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "\
listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
drain_timeout: 2s
providers:
  psp-cli:
    url: http://{}
    auth: {{ value_env: {var} }}
routes:
  - name: payments
    match: {{ path_prefix: /v1/ }}
    targets:
      - {{ provider: psp-cli }}
sandbox:
  - {{ name: psp-local, listen: 127.0.0.1:0 }}
",
        provider.addr()
    );
    let path = write_config(dir.path(), &yaml);

    let mut cmd = switchyard();
    // `--log-format` goes after the subcommand: before it, clap refuses it (see the report).
    cmd.args(["run", "--log-format", "json", "--config"])
        .arg(&path)
        .env("RUST_LOG", "debug")
        .env("SWITCHYARD_WORKERS", "2")
        .env(&var, PROVIDER_CREDENTIAL);
    let mut child = Child::spawn(cmd);
    let listen = Child::wait_for(&child.stderr, STARTUP, |line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        if v["message"] != "switchyard is serving" {
            return None;
        }
        assert_eq!(
            v["workers"], 2,
            "SWITCHYARD_WORKERS sets the worker threads: {line}"
        );
        v["listen"].as_str().map(str::to_owned)
    })
    .unwrap_or_else(|| {
        panic!(
            "no \"switchyard is serving\" line:\n{}",
            child.finish_stderr()
        )
    });
    let listen: std::net::SocketAddr = listen.parse().unwrap();

    let body = format!("amount=1000&currency=eur&card[number]={CARD}&card[cvc]=123");
    let answer = send(
        Request::post(format!("http://{listen}/v1/payment_intents"))
            .header("authorization", format!("Bearer {SHOP_CREDENTIAL}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("idempotency-key", "cli-order-1")
            .body(Full::new(Bytes::from(body)))
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("x-switchyard-provider"), Some("psp-cli"));
    assert_eq!(answer.json()["amount"], 1000);
    assert_eq!(provider.stats().charges, 1);

    child.signal("TERM");
    let status = child.wait_exit(Duration::from_secs(5));
    let logs = child.finish_stderr();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{status:?}\n{logs}");
    // The request was logged (the access log line), so the check below is not vacuous.
    assert!(logs.contains(r#""method":"POST""#), "{logs}");
    for secret in [SHOP_CREDENTIAL, PROVIDER_CREDENTIAL, CARD] {
        assert!(
            !logs.contains(secret),
            "{secret} appears in the logs:\n{logs}"
        );
    }
}
