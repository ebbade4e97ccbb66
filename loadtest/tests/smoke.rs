//! A short run of every scenario, so the tool never rots: small rates, two seconds each, everything on
//! 127.0.0.1 with ports the system picks. The figures are not judged here (a speed belongs in a
//! benchmark, not a test); what is checked is that each run completes, accounts for every request,
//! reads the providers' counters, writes its report and chart, and leaves no process behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clap::Parser;
use loadtest::report::{Report, RunReport};
use loadtest::{fleet, procfs, Options};

/// The switchyard binary of this workspace, built once (in this test's profile) for all tests;
/// `SWITCHYARD_BIN` names a prebuilt one instead.
fn switchyard() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let explicit = std::env::var_os("SWITCHYARD_BIN").map(PathBuf::from);
        fleet::find_switchyard(explicit.as_deref(), !cfg!(debug_assertions), true)
            .unwrap_or_else(|e| panic!("switchyard binary: {e}"))
    })
}

/// A fresh folder for one test's report.
fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loadtest-smoke-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Kills whatever a run left behind (nothing, if the tool works), by the ids in its pid file, and
/// says which were still there.
fn leftovers(out: &Path) -> Vec<String> {
    let pids = std::fs::read_to_string(out.join("work").join("pids")).unwrap_or_default();
    let mut alive = Vec::new();
    for line in pids.lines() {
        let Some((role, pid)) = line.split_once(' ') else {
            continue;
        };
        let Ok(pid) = pid.trim().parse::<u32>() else {
            continue;
        };
        // Only a process of ours: the id may have been reused since.
        let ours = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
            [
                "switchyard",
                "bare-proxy",
                "envoy",
                "haproxy",
                "nginx",
                "redis-server",
            ]
            .iter()
            .any(|name| c.contains(name))
        });
        if procfs::alive(pid) && ours {
            alive.push(format!("{role} {pid}"));
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
    alive
}

fn args(name: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "loadtest",
        "--scenario",
        name,
        "--rate",
        "40",
        "--duration",
        "2s",
        "--warmup",
        "0",
        "--quiet",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(out.display().to_string());
    a.push("--switchyard-bin".into());
    a.push(switchyard().display().to_string());
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Runs the tool in-process with a bound on its time; on any failure the pid file's processes are
/// killed before the test fails.
fn run(name: &str, extra: &[&str]) -> (Report, PathBuf) {
    let out = out_dir(&format!("{name}{}", extra.join("").replace(['-', ','], "")));
    let opts = Options::parse_from(args(name, &out, extra));
    // As the binary runs it by default: one thread, plus the schedule's.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), loadtest::run(&opts)).await
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    let left = leftovers(&out);
    let report = match result {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => panic!("{name}: {e}"),
        Err(_) => panic!("{name}: no report within 60 s"),
    };
    assert!(left.is_empty(), "{name}: processes left running: {left:?}");
    assert!(report.errors.is_empty(), "{name}: {:?}", report.errors);
    (report, out)
}

/// What every run must show, whatever the proxy did.
fn check_run(run: &RunReport, out: &Path) {
    let label = format!("{} / {}", run.scenario, run.target);
    let s = &run.shop;
    assert!(s.requests >= 40, "{label}: {} requests", s.requests);
    assert_eq!(
        s.total.ok + s.total.failed + s.total.key_in_flight,
        s.requests,
        "{label}: every request is accounted for"
    );
    assert_eq!(
        s.failures_by_kind.values().sum::<u64>(),
        s.total.failed,
        "{label}: every failure has a kind"
    );
    assert!(s.latency.p50_ms > 0.0 && s.latency.p50_ms <= s.latency.p999_ms);
    assert!(!s.timeline.is_empty());
    let charges = run
        .charges
        .as_ref()
        .expect("the providers' counters were read");
    assert!(
        charges.primary + charges.backup > 0,
        "{label}: nothing charged"
    );
    if run.target != "direct" {
        let proxy = run.proxy.as_ref().expect("proxy figures from /proc");
        assert!(proxy.peak_rss_mib > 0.0);
    }
    let chart = run.chart.as_ref().expect("a chart");
    let svg = std::fs::read_to_string(out.join(chart)).expect("chart file");
    assert!(svg.starts_with("<svg"), "{label}: not an SVG");
    for (role, pid) in &run.processes {
        assert!(!procfs::alive(*pid), "{label}: {role} {pid} still running");
    }
}

fn check_files(out: &Path) -> serde_json::Value {
    let json = std::fs::read_to_string(out.join("report.json")).expect("report.json");
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(md.contains("| scenario | target |"));
    serde_json::from_str(&json).expect("report.json is JSON")
}

fn scenario(name: &str) -> Report {
    let (report, out) = run(name, &[]);
    assert_eq!(report.runs.len(), 1, "{name}: one run");
    let r = &report.runs[0];
    assert_eq!(r.scenario, name);
    assert_eq!(r.target, "switchyard");
    check_run(r, &out);
    let json = check_files(&out);
    assert_eq!(json["runs"][0]["scenario"], name);
    let _ = std::fs::remove_dir_all(&out);
    report
}

fn fault_window(r: &RunReport) -> (f64, f64) {
    let (a, b) = r.fault_window_s.expect("a fault window");
    assert!(0.5 < a && a < b && b < 2.0, "fault window {a}–{b}");
    (a, b)
}

#[test]
fn steady() {
    let r = scenario("steady");
    assert!(r.runs[0].fault_window_s.is_none());
}

#[test]
fn outage_reaches_the_provider() {
    // Straight to the provider, the outage must show as refused connections during the fault only:
    // the fault injection works, whatever a proxy does about it.
    let (report, out) = run(
        "outage",
        &["--compare", "direct", "--envoy-bin", "/nonexistent"],
    );
    assert_eq!(report.runs.len(), 2);
    for r in &report.runs {
        check_run(r, &out);
        fault_window(r);
    }
    let direct = &report.runs[1];
    assert_eq!(direct.target, "direct");
    assert!(
        direct
            .shop
            .failures_by_kind
            .get("connect_error")
            .copied()
            .unwrap_or(0)
            > 0
    );
    assert!(direct.shop.during_fault.failed > 0);
    assert_eq!(direct.shop.before_fault.failed, 0);
    check_files(&out);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn brownout() {
    fault_window(&scenario("brownout").runs[0]);
}

#[test]
fn slow_primary() {
    fault_window(&scenario("slow-primary").runs[0]);
}

#[test]
fn error500() {
    fault_window(&scenario("error500").runs[0]);
}

/// `reset`: the primary charges and hangs up. The shop sends every key once; the sidecar's unknown
/// operations are watched through its admin API (or the report says why not, for a build without
/// the listing), and the payment rules are checked from the providers' books.
#[test]
fn reset_and_the_resolution_of_unknown_outcomes() {
    let (report, out) = run("reset", &["--resolve-within", "20s"]);
    assert_eq!(report.runs.len(), 1);
    let r = &report.runs[0];
    check_run(r, &out);
    fault_window(r);
    assert!(r.load.contains("re-sends 0 %"), "{}", r.load);
    assert_eq!(r.shop.shop_retries, 0);
    let f = r.resolution.as_ref().expect("resolution figures");
    if f.watched {
        assert!(f.polls > 0, "{f:?}");
        assert!(f.watched_s <= 20.0 + 1.0, "{f:?}");
    } else {
        let why = f.why_not.as_deref().unwrap_or_default();
        assert!(why.contains("does not list unknown operations"), "{why}");
    }
    let charges = r.charges.as_ref().expect("charges");
    assert!(
        charges.primary > 0,
        "the primary charged nothing: {charges:?}"
    );
    assert_eq!(charges.keys_charged_on_both, 0, "{charges:?}");
    let lines = report.resolution_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("0 keys charged on both providers: 0")),
        "{lines:?}"
    );
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(md.contains("## Unknown outcomes resolved"), "{md}");
    let json = check_files(&out);
    assert!(json["runs"][0]["resolution"].is_object(), "{json}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn throttle() {
    fault_window(&scenario("throttle").runs[0]);
}

#[test]
fn reload() {
    let r = scenario("reload");
    let reload = r.runs[0].reload.as_ref().expect("reload figures");
    assert!(reload.rewrites >= 10, "{} rewrites", reload.rewrites);
    assert!(reload.generation.unwrap_or(0) > 1, "the proxy reloaded");
}

#[test]
fn duplicates() {
    let r = scenario("duplicates");
    assert!(r.runs[0].load.contains("re-sends 30 %"));
}

#[test]
fn closed_loop_max() {
    let (report, out) = run("steady", &["--max", "--connections", "4"]);
    let r = &report.runs[0];
    check_run(r, &out);
    assert!(r.load.starts_with("closed loop"));
    let _ = std::fs::remove_dir_all(&out);
}

/// With the proxy `name` installed it runs beside switchyard; without, it is skipped with a clear
/// reason. Through the outage, so that both providers answer and the share per provider is read
/// from the proxy's answers.
fn comparison_skipped_or_run(name: &str) {
    let (report, out) = run("outage", &["--compare", name]);
    match fleet::find_binary(name, None) {
        Some(_) => {
            assert_eq!(report.runs.len(), 2, "{:?}", report.skipped);
            let r = &report.runs[1];
            assert_eq!(r.target, name);
            check_run(r, &out);
            fault_window(r);
            // Every answer a provider gave names it; only the proxy's own answers (failures) may not.
            let by_provider = &r.shop.answers_by_provider;
            let count = |via: &str| by_provider.get(via).copied().unwrap_or(0);
            assert!(count("primary") > 0, "{name}: {by_provider:?}");
            assert!(count("backup") > 0, "{name}: {by_provider:?}");
            assert!(
                count("unknown") <= r.shop.total.failed,
                "{name}: {by_provider:?}"
            );
        }
        None => {
            assert_eq!(report.runs.len(), 1);
            assert!(report.skipped.iter().any(|s| s.starts_with(name)));
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// The bare hyper proxy is built with this package, so it always runs. Through the outage: it has no
/// failover, so the primary's refusals come back as its own 502s during the fault only, and every
/// other answer is the primary's.
#[test]
fn hyper_bare_proxy() {
    let (report, out) = run(
        "outage",
        &[
            "--compare",
            "hyper",
            "--bare-proxy-bin",
            env!("CARGO_BIN_EXE_bare-proxy"),
        ],
    );
    assert_eq!(report.runs.len(), 2, "{:?}", report.skipped);
    let bin = report
        .bare_proxy
        .as_deref()
        .expect("the bare proxy's binary");
    assert!(bin.contains("hyper 1."), "{bin}");
    let r = &report.runs[1];
    assert_eq!(r.target, "hyper");
    check_run(r, &out);
    fault_window(r);
    let proxy = r.proxy.as_ref().expect("proxy figures");
    // The kernel counts CPU in ticks of 10 ms, and the bare proxy serves this smoke load in about
    // that: 0 ticks is a real reading (it failed CI once). That it was read at all is the check.
    assert!(proxy.cpu_s >= 0.0 && proxy.cpu_us_per_request >= 0.0);
    assert!(proxy.peak_rss_mib > 0.0, "{proxy:?}");
    assert!(r.processes.iter().any(|(role, _)| role == "bare-proxy"));
    let local = r
        .shop
        .failures_by_kind
        .get("hyper_local_502")
        .copied()
        .unwrap_or(0);
    assert!(local > 0, "{:?}", r.shop.failures_by_kind);
    assert_eq!(r.shop.before_fault.failed, 0);
    let by_provider = &r.shop.answers_by_provider;
    assert_eq!(by_provider.get("backup"), None, "{by_provider:?}");
    assert!(
        by_provider.get("primary").copied().unwrap_or(0) > 0,
        "{by_provider:?}"
    );
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(md.contains("| outage | hyper (bare) |"), "{md}");
    let json = check_files(&out);
    assert_eq!(json["runs"][1]["target"], "hyper");
    let _ = std::fs::remove_dir_all(&out);
}

/// The fleet scenario, two sidecars with state backend `state`, long enough (6 s at 100/s, 2 s of
/// fault) for the primary's breaker to open at both sidecars while the shop's retries cross over.
fn fleet(state: &str) -> (RunReport, PathBuf) {
    let (report, out) = run(
        "fleet",
        &[
            "--state",
            state,
            "--sidecars",
            "2",
            "--rate",
            "100",
            "--duration",
            "6s",
        ],
    );
    assert_eq!(report.runs.len(), 1, "{:?}", report.skipped);
    let r = report.runs[0].clone();
    assert_eq!(r.scenario, "fleet");
    assert_eq!(r.state.as_deref(), Some(state));
    assert_eq!(r.sidecars, 2);
    check_run(&r, &out);
    let (a, b) = r.fault_window_s.expect("a fault window");
    assert!(1.5 < a && a < b && b < 4.5, "fault window {a}–{b}");
    let sidecars = r
        .processes
        .iter()
        .filter(|(role, _)| role.starts_with("switchyard"))
        .count();
    assert_eq!(sidecars, 2, "{:?}", r.processes);
    // The scenario happened: payments whose outcome was unknown at one sidecar were sent again,
    // with the same key, to the other.
    assert!(r.shop.shop_retries > 0, "no shop retries: {:?}", r.shop);
    assert!(r.shop.unknown_outcomes > 0, "no unknown outcomes");
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(md.contains("## State backends side by side"), "{md}");
    assert!(md.contains(&format!("| fleet | {state} | 2 |")), "{md}");
    (r, out)
}

/// The control: in memory each sidecar knows only its own keys, so a retry of an unknown outcome at
/// the other sidecar, whose breaker is open, goes to the backup. The scenario must catch that, or
/// its 0 with Redis would prove nothing.
#[test]
fn fleet_in_memory_charges_keys_on_both_providers() {
    let (r, out) = fleet("memory");
    let charges = r.charges.as_ref().expect("charges");
    assert!(
        charges.keys_charged_on_both > 0,
        "the fleet scenario did not reproduce the double charge in memory: {charges:?}"
    );
    assert!(r.redis.is_none());
    let _ = std::fs::remove_dir_all(&out);
}

/// Two sidecars on one Redis (started by the run): no key is charged by both providers, and the
/// sidecars did talk to that Redis.
#[test]
fn fleet_on_redis_charges_no_key_on_both_providers() {
    let (r, out) = fleet("redis");
    assert!(
        r.processes.iter().any(|(role, _)| role == "redis-server"),
        "{:?}",
        r.processes
    );
    let redis = r.redis.as_ref().expect("redis figures");
    assert!(
        redis.round_trips_per_request > 0.0,
        "the sidecars never asked Redis: {redis:?}"
    );
    let charges = r.charges.as_ref().expect("charges");
    assert_eq!(charges.keys_charged_on_both, 0, "{charges:?}");
    assert_eq!(charges.keys_charged_twice_on_one, 0, "{charges:?}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn envoy_skipped_or_run() {
    comparison_skipped_or_run("envoy");
}

#[test]
fn haproxy_skipped_or_run() {
    comparison_skipped_or_run("haproxy");
}

#[test]
fn nginx_skipped_or_run() {
    comparison_skipped_or_run("nginx");
}

#[test]
fn command_line() {
    // The binary end to end, with a missing envoy: exit 0, the table on stdout, the skip said.
    let out = out_dir("cli");
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(
            &args(
                "steady",
                &out,
                &["--compare", "envoy", "--envoy-bin", "/nonexistent"],
            )[1..],
        )
        .args(["--duration", "1s"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loadtest binary");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().expect("wait").is_none() {
        let _ = child.kill();
        let _ = child.wait();
        let left = leftovers(&out);
        panic!("loadtest did not finish within 60 s; killed {left:?}");
    }
    let output = child.wait_with_output().expect("output");
    let left = leftovers(&out);
    assert!(left.is_empty(), "processes left running: {left:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("| steady | switchyard |"), "{stdout}");
    assert!(stdout.contains("skipped: envoy"), "{stdout}");
    let json = check_files(&out);
    assert_eq!(json["runs"].as_array().map(Vec::len), Some(1));
    let _ = std::fs::remove_dir_all(&out);
}

/// `abuse`: the webhook flood, idle h2c connections and slow uploads happen in the middle third, the
/// payments are split around them, the sidecar's RSS is sampled, and every goal gets a verdict.
#[test]
fn abuse_runs_and_measures() {
    let (report, out) = run(
        "abuse",
        &[
            "--rate",
            "100",
            "--duration",
            "9s",
            "--abuse-idle",
            "20",
            "--abuse-slow",
            "4",
            "--abuse-webhook-clients",
            "2",
        ],
    );
    assert_eq!(report.runs.len(), 1, "{:?}", report.skipped);
    let r = &report.runs[0];
    check_run(r, &out);
    let a = r.abuse.as_ref().expect("abuse figures");
    let (from, to) = a.window_s;
    assert!(
        2.5 < from && from < 3.5 && 5.5 < to && to < 6.5,
        "window {from}–{to}"
    );
    assert_eq!(r.fault_window_s, Some(a.window_s));
    for (name, p) in [
        ("quiet", &a.quiet),
        ("during", &a.during),
        ("after", &a.after),
    ] {
        assert!(p.requests > 100, "{name}: {p:?}");
        assert!(p.latency.p99_ms > 0.0, "{name}: {p:?}");
    }
    assert_eq!(
        a.quiet.requests + a.during.requests + a.after.requests,
        r.shop.requests
    );
    let c = &a.clients;
    assert_eq!(c.idle_h2_opened, 20, "{c:?}");
    assert_eq!(c.slow_uploads, 4, "{c:?}");
    assert!(c.slow_upload_bytes > 0, "{c:?}");
    // The flood reached the webhook listener, and no event of it was accepted.
    assert!(c.webhook_events > 0, "{c:?}");
    assert!(
        c.webhook_answers.get("401").is_some_and(|n| *n > 0),
        "{c:?}"
    );
    assert!(
        !c.webhook_answers.keys().any(|k| k.starts_with('2')),
        "{c:?}"
    );
    assert_eq!(a.max_buffered_mib, 64);
    assert!(a.rss_quiet_mib.is_some_and(|m| m > 1.0), "{a:?}");
    assert!(a.rss_peak_mib >= a.rss_quiet_mib, "{a:?}");
    assert!(a.rss_after_mib.is_some(), "{a:?}");
    assert!(a.rss_timeline.len() > 50, "{}", a.rss_timeline.len());
    assert_eq!(a.verdicts.len(), 5, "{:?}", a.verdicts);
    // Each phase has the sidecar's own view of the payments and the CPU each process used.
    for (name, p) in [
        ("quiet", &a.quiet),
        ("during", &a.during),
        ("after", &a.after),
    ] {
        let v = p
            .sidecar
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: {p:?}"));
        assert!(v.requests > 100, "{name}: {v:?}");
        assert!(v.p99_le_ms.is_some_and(|b| b > 0.0), "{name}: {v:?}");
        for who in ["sidecar", "load generator", "abuse clients", "machine"] {
            assert!(p.cpu_cores.contains_key(who), "{name}: {who}: {p:?}");
        }
    }
    assert!(a.during.cpu_cores["abuse clients"] > 0.0, "{:?}", a.during);
    assert_eq!((c.nice_asked, c.nice), (19, Some(19)), "{c:?}");
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(md.contains("## Abuse"), "{md}");
    assert!(
        md.contains("peak RSS ≤ max_buffered_bytes + 32 MiB"),
        "{md}"
    );
    assert!(md.contains("sidecar's own p50"), "{md}");
    assert!(md.contains("within 10 % of the control"), "{md}");
}
