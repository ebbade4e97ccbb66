//! The shipped alert rules on real traffic: a real Prometheus server (Debian's `prometheus` package)
//! scrapes a real sidecar every second while the sidecar's primary provider goes down and comes back
//! (`outage`), then charges and drops the connection before answering and comes back (`reset`), and
//! its HTTP API must show `ProviderCircuitOpen` and `UnknownOutcomesStuck` fire and resolve as
//! `dashboards/RUNBOOK.md` says. promtool's unit tests (`alerts_test.yaml`) check the rules against
//! synthetic series; this checks them against the series the sidecar really exports, as Prometheus
//! really scrapes and evaluates them.
//!
//! The rules are the shipped `alerts.yaml` rendered by [`scaled_rules`], which only shortens `for:`
//! durations (a minute becomes a second, at most [`MAX_SCALED_FOR`]); the shipped file is never edited.
//! Everything runs on 127.0.0.1: the sidecar on port 0, Prometheus on a port found free (it cannot
//! listen on port 0), its storage in a temporary folder; both are killed by PID on drop.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use switchyard::sandbox::{Mode, ModeSpec, Sandbox};

use crate::support::client;

const SIDECAR_BIN: &str = env!("CARGO_BIN_EXE_switchyard");
/// Where Debian's `prometheus` package installs the server; `PATH` is searched after it.
const PROMETHEUS_BIN: &str = "/usr/bin/prometheus";
/// The longest `for:` in the rendered rules: long enough to be a real pending period over several
/// 1 s evaluations, short enough to keep the test well under a minute.
const MAX_SCALED_FOR: Duration = Duration::from_secs(4);
const PAY: &str = "/v1/payment_intents";
const FORM: &str = "amount=1000&currency=eur";

// --- the rule-file template ------------------------------------------------------------------------

/// A Prometheus duration (`90s`, `15m`, `1h30m`, `500ms`) in milliseconds.
fn duration_ms(text: &str) -> Option<u64> {
    let mut rest = text;
    let mut total = 0u64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        let after = &rest[digits..];
        let unit_len = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let unit: u64 = match &after[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "y" => 365 * 86_400_000,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
        rest = &after[unit_len..];
    }
    Some(total)
}

/// `ms` as a Prometheus duration.
fn format_ms(ms: u64) -> String {
    if ms % 1_000 == 0 {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

/// The rule file `shipped` with every `for:` duration scaled down: a minute becomes a second, capped
/// at [`MAX_SCALED_FOR`] (`2m` -> `2s`, `15m` -> `4s`). Nothing else changes, so the expressions,
/// labels and annotations under test are the shipped ones. An unreadable duration is an error.
fn scaled_rules(shipped: &str) -> Result<String, String> {
    let cap = u64::try_from(MAX_SCALED_FOR.as_millis()).unwrap_or(u64::MAX);
    let mut out = String::with_capacity(shipped.len());
    for (n, line) in shipped.lines().enumerate() {
        let trimmed = line.trim_start();
        match trimmed.strip_prefix("for:") {
            Some(value) => {
                let value = value.split('#').next().unwrap_or_default().trim();
                let ms = duration_ms(value)
                    .ok_or_else(|| format!("line {}: `for: {value}` is not a duration", n + 1))?;
                let indent = &line[..line.len() - trimmed.len()];
                out.push_str(&format!("{indent}for: {}", format_ms((ms / 60).min(cap))));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    Ok(out)
}

#[test]
fn the_template_scales_for_durations_and_nothing_else() {
    let rules = "\
groups:
  - name: g
    rules:
      - alert: A
        expr: up == 0   # for: 10m in a comment is not a `for:`
        for: 2m
        annotations:
          description: >-
            For 15m nothing happened.
      - alert: B
        expr: up == 0
        for: 15m
      - alert: C
        for: 1h30m  # a comment
      - alert: D
        for: 30s
";
    let scaled = scaled_rules(rules).unwrap();
    let changed: Vec<(&str, &str)> = rules
        .lines()
        .zip(scaled.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(
        changed,
        [
            ("        for: 2m", "        for: 2s"),
            ("        for: 15m", "        for: 4s"),
            ("        for: 1h30m  # a comment", "        for: 4s"),
            ("        for: 30s", "        for: 500ms"),
        ]
    );
    assert_eq!(rules.lines().count(), scaled.lines().count());
    assert!(scaled_rules("      for: soon\n").is_err());
    assert!(scaled_rules("      for: 5x\n").is_err());
    assert_eq!(duration_ms("1h30m"), Some(5_400_000));
    assert_eq!(duration_ms("250ms"), Some(250));
    assert_eq!(duration_ms("m"), None);
    assert_eq!(duration_ms(""), None);

    // The shipped file renders, and only its `for:` lines change.
    let shipped = shipped_rules();
    let scaled = scaled_rules(&shipped).unwrap();
    assert_eq!(shipped.lines().count(), scaled.lines().count());
    let changed = shipped
        .lines()
        .zip(scaled.lines())
        .filter(|(a, b)| a != b)
        .inspect(|(a, _)| assert!(a.trim_start().starts_with("for:"), "{a}"))
        .count();
    assert!(changed > 0, "no for: in alerts.yaml?");
}

fn shipped_rules() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dashboards/prometheus/alerts.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// --- processes ---------------------------------------------------------------------------------------

/// A child process, killed by its PID and reaped on drop, and everything it wrote to stderr.
struct Spawned {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Spawned {
    /// Spawns `command` with stderr piped; its lines also arrive on the returned channel.
    fn start(mut command: Command) -> (Self, mpsc::Receiver<String>) {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{command:?} does not start: {e}"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let pipe = child.stderr.take().expect("stderr is piped");
        let all = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                all.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        (Self { child, stderr }, rx)
    }

    /// Whether the process has ended.
    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// The last `n` lines it wrote to stderr.
    fn tail(&self, n: usize) -> String {
        let all = self.stderr.lock().unwrap();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// `switchyard run` as a process, with the addresses it reported once serving.
struct SidecarProcess {
    process: Spawned,
    listen: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl SidecarProcess {
    /// Writes `yaml` to a temporary folder and runs the sidecar on it; returns once it serves.
    fn start(yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("routes.yaml");
        std::fs::write(&config, yaml).unwrap();
        let mut command = Command::new(SIDECAR_BIN);
        command
            .args(["run", "--log-format", "json", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .env("SWITCHYARD_WORKERS", "1");
        let (process, lines) = Spawned::start(command);
        let end = Instant::now() + Duration::from_secs(15);
        let serving = loop {
            let left = end.saturating_duration_since(Instant::now());
            let Ok(line) = lines.recv_timeout(left) else {
                panic!("the sidecar did not start:\n{}", process.tail(50));
            };
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
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
        Self {
            listen: addr("listen"),
            admin: addr("admin"),
            process,
            _dir: dir,
        }
    }
}

/// A GET that returns `None` on a transport error or after 5 s, instead of panicking.
async fn try_get(url: &str) -> Option<(u16, Bytes)> {
    let req = Request::get(url).body(Full::default()).ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client().request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, body))
}

/// The query string form of `text`.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An alert as `GET /api/v1/alerts` lists it: pending or firing (resolved ones are not listed).
#[derive(Debug, Clone)]
struct ActiveAlert {
    labels: BTreeMap<String, String>,
    state: String,
}

impl ActiveAlert {
    fn is(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.labels.get("alertname").map(String::as_str) == Some(name)
            && labels
                .iter()
                .all(|(k, v)| self.labels.get(*k).map(String::as_str) == Some(*v))
    }
    fn firing(&self) -> bool {
        self.state == "firing"
    }
}

/// A Prometheus server scraping one sidecar every second, evaluating the scaled shipped rules every
/// second, storing in a temporary folder.
struct PrometheusServer {
    /// Killed on drop.
    _process: Spawned,
    addr: SocketAddr,
    /// Holds the config, the rules and the TSDB; removed after the process is killed.
    _dir: tempfile::TempDir,
}

impl PrometheusServer {
    async fn start(binary: &Path, rules: &str, target: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("alerts.yaml"), rules).unwrap();
        let config = dir.path().join("prometheus.yml");
        // The job name is the shipped one: SidecarDown selects up{job="switchyard"}.
        std::fs::write(
            &config,
            format!(
                "\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - alerts.yaml
scrape_configs:
  - job_name: switchyard
    metrics_path: /metrics
    static_configs:
      - targets: [\"{target}\"]
"
            ),
        )
        .unwrap();
        let tsdb = dir.path().join("data");
        // Prometheus cannot listen on port 0: take a port the system calls free, release it, and
        // start again on another one if something else took it in between.
        let mut failures = Vec::new();
        for _ in 0..5 {
            let addr = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap();
            let mut command = Command::new(binary);
            command
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", tsdb.display()))
                .arg(format!("--web.listen-address={addr}"))
                .current_dir(dir.path());
            let (mut process, lines) = Spawned::start(command);
            let end = Instant::now() + Duration::from_secs(30);
            loop {
                if process.exited() {
                    break;
                }
                let ready = try_get(&format!("http://{addr}/-/ready")).await;
                if matches!(ready, Some((200, _))) {
                    let server = Self {
                        _process: process,
                        addr,
                        _dir: dir,
                    };
                    server.assert_is_ours(&tsdb).await;
                    return server;
                }
                assert!(
                    Instant::now() < end,
                    "prometheus was not ready in 30 s:\n{}",
                    process.tail(30)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // The reader thread ends at the pipe's end: let it finish, so the log is complete.
            let end = Instant::now() + Duration::from_secs(2);
            while lines
                .recv_timeout(end.saturating_duration_since(Instant::now()))
                .is_ok()
            {}
            let log = process.tail(30);
            assert!(
                log.contains("address already in use"),
                "prometheus exited:\n{log}"
            );
            failures.push(log);
        }
        panic!(
            "prometheus found no free port in 5 tries:\n{}",
            failures.join("\n---\n")
        );
    }

    /// The server answering on our port is the one we started (not another process that took the
    /// port while it was free).
    async fn assert_is_ours(&self, tsdb: &Path) {
        let flags = self.api("/api/v1/status/flags").await;
        assert_eq!(
            flags["storage.tsdb.path"].as_str(),
            tsdb.to_str(),
            "another Prometheus answers on {}",
            self.addr
        );
    }

    /// `GET path` on the HTTP API: its `data`, or `Null` when the call failed.
    async fn api(&self, path: &str) -> Value {
        match try_get(&format!("http://{}{path}", self.addr)).await {
            Some((200, body)) => serde_json::from_slice::<Value>(&body)
                .map(|v| v["data"].clone())
                .unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }

    /// An instant query's result, as JSON text (for messages).
    async fn query(&self, promql: &str) -> String {
        self.api(&format!("/api/v1/query?query={}", encode(promql)))
            .await
            .to_string()
    }

    /// Pending and firing alerts.
    async fn alerts(&self) -> Vec<ActiveAlert> {
        let data = self.api("/api/v1/alerts").await;
        data["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| ActiveAlert {
                labels: a["labels"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect(),
                state: a["state"].as_str().unwrap_or_default().to_owned(),
            })
            .collect()
    }

    /// The alerting rules as loaded: name -> `for:` duration in seconds.
    async fn alerting_rules(&self) -> BTreeMap<String, f64> {
        let data = self.api("/api/v1/rules?type=alert").await;
        let mut out = BTreeMap::new();
        for group in data["groups"].as_array().into_iter().flatten() {
            for rule in group["rules"].as_array().into_iter().flatten() {
                if let (Some(name), Some(d)) = (rule["name"].as_str(), rule["duration"].as_f64()) {
                    out.insert(name.to_owned(), d);
                }
            }
        }
        out
    }

    /// What Prometheus and the sidecar know now, for a failure message.
    async fn report(&self, sidecar: &SidecarProcess, shop: Option<&Shop>) -> String {
        let mut out = String::new();
        if let Some(shop) = shop {
            out.push_str(&format!("the shop's answers: {:?}\n", shop.answers()));
        }
        out.push_str(&format!(
            "targets: {}\n",
            self.api("/api/v1/targets").await["activeTargets"]
        ));
        out.push_str(&format!(
            "alerts: {:?}\n",
            self.alerts()
                .await
                .iter()
                .map(|a| (&a.labels, &a.state))
                .collect::<Vec<_>>()
        ));
        for q in [
            "switchyard_breaker_state == 1",
            "switchyard_unknown_outcomes_total",
            "switchyard_unknown_operations",
            "switchyard_resolutions_total",
        ] {
            out.push_str(&format!("{q}: {}\n", self.query(q).await));
        }
        out.push_str(&format!(
            "sidecar log (last lines):\n{}\n",
            sidecar.process.tail(20)
        ));
        out
    }

    /// Polls the alerts until `check` holds, or panics after `limit` saying `what` and what
    /// Prometheus and the sidecar knew then.
    async fn wait_for(
        &self,
        (sidecar, shop): (&SidecarProcess, &Shop),
        limit: Duration,
        what: &str,
        check: impl Fn(&[ActiveAlert]) -> bool,
    ) -> Vec<ActiveAlert> {
        let end = Instant::now() + limit;
        loop {
            let alerts = self.alerts().await;
            if check(&alerts) {
                return alerts;
            }
            if Instant::now() >= end {
                panic!(
                    "after {limit:?}, still not: {what}\n{}",
                    self.report(sidecar, Some(shop)).await
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The shop: one payment at a time, each with a new idempotency key, every 50 ms, until dropped. It
/// never retries a key: whatever resolves an unknown outcome here is the sidecar's doing.
struct Shop {
    task: tokio::task::JoinHandle<()>,
    /// Answers by status, `unknown` after those marked `x-switchyard-outcome: unknown` (status 0: no
    /// answer at the transport).
    answers: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Drop for Shop {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shop {
    fn start(sidecar: SocketAddr) -> Self {
        let answers = Arc::new(Mutex::new(BTreeMap::new()));
        let counts = Arc::clone(&answers);
        let task =
            tokio::spawn(async move {
                let client = client();
                for n in 0u64.. {
                    let req = Request::post(format!("http://{sidecar}{PAY}"))
                        .header("idempotency-key", format!("e2e-{n}"))
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(Full::new(Bytes::from_static(FORM.as_bytes())))
                        .expect("a valid request");
                    let answer =
                        match tokio::time::timeout(Duration::from_secs(10), client.request(req))
                            .await
                        {
                            Ok(Ok(resp)) => {
                                let unknown = resp
                                    .headers()
                                    .get("x-switchyard-outcome")
                                    .is_some_and(|v| v == "unknown");
                                let status = resp.status().as_u16();
                                let _ = resp.into_body().collect().await;
                                if unknown {
                                    format!("{status} unknown")
                                } else {
                                    status.to_string()
                                }
                            }
                            _ => "0".to_owned(),
                        };
                    *counts.lock().unwrap().entry(answer).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        Self { task, answers }
    }

    fn answers(&self) -> BTreeMap<String, u64> {
        self.answers.lock().unwrap().clone()
    }

    /// Answers that said the outcome is unknown.
    fn unknown(&self) -> u64 {
        self.answers()
            .iter()
            .filter(|(k, _)| k.ends_with(" unknown"))
            .map(|(_, n)| n)
            .sum()
    }
}

fn mode(mode: Mode) -> ModeSpec {
    ModeSpec {
        mode,
        ..ModeSpec::default()
    }
}

/// A line on the test's output (shown when it fails): where it got to, and when.
fn progress(started: Instant, what: &str) {
    eprintln!("prometheus_e2e: {what} after {:.1?}", started.elapsed());
}

/// The Prometheus server binary: Debian's, else the first on `PATH`.
fn prometheus_binary() -> Option<PathBuf> {
    let debian = PathBuf::from(PROMETHEUS_BIN);
    if debian.is_file() {
        return Some(debian);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("prometheus"))
        .find(|p| p.is_file())
}

// --- the test ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_circuit_open_and_unknown_outcomes_stuck_fire_and_resolve_on_real_traffic() {
    let Some(prometheus) = prometheus_binary() else {
        // CI installs Debian's prometheus package (.ci/run, need_tools), so there a missing binary is
        // a failure; on a developer's machine without it the test says loudly that it did not run.
        let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
        assert!(
            !ci,
            "CI is set and there is no prometheus binary ({PROMETHEUS_BIN} or on PATH): \
             install Debian's prometheus package (.ci/run does)"
        );
        eprintln!(
            "\n========== SKIPPED prometheus_e2e: no prometheus binary ({PROMETHEUS_BIN} or on \
             PATH); apt-get install prometheus to run it (CI does) ==========\n"
        );
        return;
    };

    let started = Instant::now();
    let primary = Sandbox::start("psp-primary", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let backup = Sandbox::start("psp-backup", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // A breaker that opens after one payment's failed attempts, probes again within 2 s and forgets
    // failures after 2 s; a primary that takes the route's traffic again as soon as its breaker
    // closes (no slow start, no share spilled to the backup for a low health score); the memory
    // store, because what is under test is the alert path, not a backend (the conformance suite
    // covers those).
    let sidecar = SidecarProcess::start(&format!(
        "\
listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
drain_timeout: 1s
providers:
  psp-primary:
    url: http://{primary}
    connect_timeout: 500ms
    timeout: 2s
    breaker: {{ consecutive_failures: 3, window: 2s, open_for: 1s, max_open_for: 2s, half_open_probes: 1, jitter: 0 }}
    slow_start: 0s
  psp-backup:
    url: http://{backup}
    timeout: 2s
routes:
  - name: payments
    match: {{ path_prefix: /v1/ }}
    targets:
      - {{ provider: psp-primary, priority: 0 }}
      - {{ provider: psp-backup, priority: 1 }}
    timeout: 5s
    overprovisioning: 10
    retry: {{ attempts: 3, backoff: 1ms, max_backoff: 5ms, pinned_wait: 0s }}
state: {{ backend: memory }}
",
        primary = primary.addr(),
        backup = backup.addr(),
    ));

    let rules = scaled_rules(&shipped_rules()).expect("alerts.yaml renders");
    let prom = PrometheusServer::start(&prometheus, &rules, sidecar.admin).await;
    let loaded = prom.alerting_rules().await;
    assert_eq!(
        loaded.get("ProviderCircuitOpen"),
        Some(&2.0),
        "the shipped rules, scaled (for: 2m -> 2s): {loaded:?}"
    );
    assert_eq!(
        loaded.get("UnknownOutcomesStuck"),
        Some(&4.0),
        "the shipped rules, scaled (for: 15m -> 4s): {loaded:?}"
    );
    let end = Instant::now() + Duration::from_secs(15);
    while prom.api("/api/v1/targets").await["activeTargets"][0]["health"] != "up" {
        assert!(
            Instant::now() < end,
            "prometheus does not scrape the sidecar:\n{}",
            prom.report(&sidecar, None).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    progress(started, "prometheus scrapes the sidecar");
    let shop = Shop::start(sidecar.listen);
    let instance = sidecar.admin.to_string();

    // A healthy sidecar taking payments fires nothing, not even pending, over a few evaluations
    // (its counters are created at 0 with its config: no "first one" alert for them).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let alerts = prom.alerts().await;
    assert!(
        alerts.is_empty(),
        "alerts on a healthy sidecar: {alerts:?}\n{}",
        prom.report(&sidecar, Some(&shop)).await
    );
    assert!(
        shop.answers().get("200").is_some_and(|n| *n > 0),
        "{:?}",
        shop.answers()
    );
    let circuit_open = [("provider", "psp-primary"), ("instance", instance.as_str())];

    // outage: the primary refuses connections while payments run. Its breaker opens and stays not
    // closed (open, probes in half-open, open again): ProviderCircuitOpen fires after its `for:`,
    // for the primary only, as a ticket.
    primary.set_mode(mode(Mode::Down));
    let alerts = prom
        .wait_for(
            (&sidecar, &shop),
            Duration::from_secs(20),
            "ProviderCircuitOpen fires for psp-primary while it is down",
            |alerts| {
                alerts
                    .iter()
                    .any(|a| a.is("ProviderCircuitOpen", &circuit_open) && a.firing())
            },
        )
        .await;
    progress(started, "ProviderCircuitOpen fired");
    let fired: Vec<_> = alerts
        .iter()
        .filter(|a| a.is("ProviderCircuitOpen", &[]))
        .collect();
    assert_eq!(
        fired.len(),
        1,
        "the backup's breaker stays closed: {fired:?}"
    );
    assert_eq!(fired[0].labels["severity"], "ticket");
    assert_eq!(fired[0].labels["job"], "switchyard");
    assert_eq!(primary.mode().mode, Mode::Down);
    assert!(
        backup.stats().charges > 0,
        "the payments fail over to the backup: {:?}",
        shop.answers()
    );

    // The primary is back: its next half-open probe succeeds, the breaker closes, and the alert
    // resolves at the next evaluation (RUNBOOK.md, ProviderCircuitOpen: "has not closed").
    primary.set_mode(mode(Mode::Ok));
    prom.wait_for(
        (&sidecar, &shop),
        Duration::from_secs(20),
        "ProviderCircuitOpen resolves once psp-primary is back",
        |alerts| !alerts.iter().any(|a| a.is("ProviderCircuitOpen", &[])),
    )
    .await;
    progress(started, "ProviderCircuitOpen resolved");
    // Refused connections are never unknown outcomes; a payment caught on a connection as the
    // primary went down could be one, and the resolver settles it now that the primary is back.
    prom.wait_for(
        (&sidecar, &shop),
        Duration::from_secs(45),
        "no UnknownOutcomesStuck before the reset phase",
        |alerts| !alerts.iter().any(|a| a.is("UnknownOutcomesStuck", &[])),
    )
    .await;

    // reset: the primary charges, then drops the connection without answering. Those payments end
    // unknown (x-switchyard-outcome: unknown) and stay pinned to the primary; its breaker opens and
    // every probe payment adds one more.
    primary.set_mode(mode(Mode::Reset));
    let unknown = [("route", "payments"), ("provider", "psp-primary")];
    let end = Instant::now() + Duration::from_secs(10);
    while shop.unknown() == 0 {
        assert!(
            Instant::now() < end,
            "the shop got no unknown outcome from a resetting primary: {:?}",
            shop.answers()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    progress(started, "the shop gets unknown outcomes");
    // The resolver's tries meet the same reset (or a primary not admitted): the operations stay
    // unknown, and UnknownOutcomesStuck fires after its `for:` while the primary keeps resetting.
    // NEEDS the resolver's gauge switchyard_unknown_operations (issue 14).
    let alerts = prom
        .wait_for(
            (&sidecar, &shop),
            Duration::from_secs(20),
            "UnknownOutcomesStuck fires while psp-primary keeps resetting \
             (needs switchyard_unknown_operations from issue 14's resolver)",
            |alerts| {
                alerts
                    .iter()
                    .any(|a| a.is("UnknownOutcomesStuck", &unknown) && a.firing())
            },
        )
        .await;
    progress(started, "UnknownOutcomesStuck fired");
    assert_eq!(primary.mode().mode, Mode::Reset);
    let stuck: Vec<_> = alerts
        .iter()
        .filter(|a| a.is("UnknownOutcomesStuck", &[]))
        .collect();
    assert_eq!(stuck.len(), 1, "{stuck:?}");
    assert_eq!(stuck[0].labels["severity"], "ticket");
    assert_eq!(
        stuck[0].labels.get("instance"),
        None,
        "one alert per route and provider, not per sidecar"
    );
    // UnknownOutcomes (about new ones, no `for:`) fires beside it. NEEDS every answer marked unknown
    // counted in switchyard_unknown_outcomes_total: today a payment whose retry meets the breaker
    // the resets opened gets 503 pinned_provider_unavailable, marked unknown but not counted.
    prom.wait_for(
        (&sidecar, &shop),
        Duration::from_secs(5),
        "UnknownOutcomes fires for the new unknown outcomes at psp-primary \
         (needs switchyard_unknown_outcomes_total to count every answer marked unknown)",
        |alerts| {
            alerts
                .iter()
                .any(|a| a.is("UnknownOutcomes", &unknown) && a.firing())
        },
    )
    .await;

    // The primary is healthy again. Nobody retries those keys: the resolver sends each kept request
    // again with its key, the primary answers from its idempotency store, the gauge falls to 0, and
    // the alert resolves (RUNBOOK.md, UnknownOutcomesStuck). The issue asks for resolution within
    // 5 s of the recovery; the limit here leaves room for the resolver's 30 s step on a slow machine.
    // NEEDS issue 14's resolver.
    primary.set_mode(mode(Mode::Ok));
    let alerts = prom
        .wait_for(
            (&sidecar, &shop),
            Duration::from_secs(40),
            "UnknownOutcomesStuck resolves once psp-primary is healthy (needs issue 14's resolver)",
            |alerts| !alerts.iter().any(|a| a.is("UnknownOutcomesStuck", &[])),
        )
        .await;
    progress(started, "UnknownOutcomesStuck resolved");
    assert!(
        !alerts.iter().any(|a| a.is("UnknownOutcomesAbandoned", &[])),
        "nothing is past its idempotency_retention: {alerts:?}"
    );

    // What the alerts watch over: no payment was charged by both providers.
    let (at_primary, at_backup) = (primary.stats(), backup.stats());
    let both: Vec<&String> = at_primary
        .charges_by_key
        .keys()
        .filter(|k| at_backup.charges_by_key.contains_key(*k))
        .collect();
    assert!(both.is_empty(), "charged at both providers: {both:?}");
    drop(shop);
    drop(prom);
}
