//! The report: one record per run (scenario × target), printed as a table and written as
//! `report.json` and `report.md`.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::analysis::{Charges, Shop};
use crate::load::TargetKind;

/// CPU and memory of the proxy under test over the measured time: of its process and every
/// descendant (nginx's workers), summed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcessFigures {
    /// Its process id (nginx: the master's).
    pub pid: u32,
    /// CPU time (user + system, all threads, all processes) over the measured time, seconds.
    pub cpu_s: f64,
    /// CPU time per request, µs.
    pub cpu_us_per_request: f64,
    /// Peak resident set size (VmHWM), MiB; for several processes the sum of their peaks (pages
    /// they share counted once per process).
    pub peak_rss_mib: f64,
}

/// What else the machine did during the measured time: figures from a shared machine are suspect.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MachineFigures {
    /// 1-minute load average when the run started.
    pub load_1m_at_start: Option<f64>,
    /// CPU time the whole machine used over the measured time, seconds (all cores).
    pub busy_cpu_s: Option<f64>,
    /// Of that, what processes other than the proxy, the providers and the load generator used.
    pub others_cpu_s: Option<f64>,
}

/// What the reload scenario did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadFigures {
    /// Config rewrites (or reload calls) made.
    pub rewrites: u64,
    /// Config generation in use at the end (1 = the first load).
    pub generation: Option<u64>,
    /// Reloads the proxy applied (`switchyard_config_reloads_total{result="success"}`).
    pub reloads_applied: Option<u64>,
    /// Reloads the proxy rejected.
    pub reloads_rejected: Option<u64>,
}

/// What the sidecars asked of the shared Redis over the measured time, from the server's own
/// counters (see [`crate::redis`]), per request the shop sent.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RedisFigures {
    /// Requests the server read (one per round trip on a kept connection), per request.
    pub round_trips_per_request: f64,
    /// Commands it ran (a script's own calls included), per request.
    pub commands_per_request: f64,
    /// Commands by name over the measured time.
    pub commands: BTreeMap<String, u64>,
    /// The redis-server's CPU per request, µs.
    pub cpu_us_per_request: Option<f64>,
}

/// One run: a scenario against one target.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    /// Scenario name.
    pub scenario: String,
    /// `switchyard`, `direct`, `hyper`, `envoy`, `haproxy` or `nginx`.
    pub target: String,
    /// The sidecars' state backend (`memory`, `local`, `redis`) when the tool started them.
    pub state: Option<String>,
    /// Sidecars started (0 when the target is not switchyard started by the tool).
    pub sidecars: usize,
    /// The load, in words.
    pub load: String,
    /// The fault, in words.
    pub fault: String,
    /// The fault window, seconds after the start (as applied).
    pub fault_window_s: Option<(f64, f64)>,
    /// Measured time, seconds.
    pub duration_s: f64,
    /// What the shop saw.
    pub shop: Shop,
    /// What the providers charged (when their counters could be read).
    pub charges: Option<Charges>,
    /// The proxy's CPU and memory (none for `direct`); for a proxy of several processes (nginx's
    /// master and workers, several sidecars), of them all.
    pub proxy: Option<ProcessFigures>,
    /// What the sidecars asked of Redis (`--state redis`).
    pub redis: Option<RedisFigures>,
    /// Calls to the payment-state store over the measured time, summed over the sidecars, by
    /// backend and result (`"redis ok"`), from `switchyard_state_operations_total`.
    pub state_operations: BTreeMap<String, u64>,
    /// Both sandbox providers' CPU per request, µs.
    pub providers_cpu_us_per_request: Option<f64>,
    /// The load generator's own CPU per request, µs (it shares the machine).
    pub loadgen_cpu_us_per_request: Option<f64>,
    /// The reload scenario's figures.
    pub reload: Option<ReloadFigures>,
    /// The abuse scenario's phases, memory and verdicts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abuse: Option<crate::abuse::Figures>,
    /// What became of the operations whose outcome was unknown (`reset`, `brownout`, `outage`
    /// through switchyard: issue 14).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution: Option<crate::resolution::Figures>,
    /// The machine meanwhile.
    pub machine: MachineFigures,
    /// The chart, relative to the report's folder.
    pub chart: Option<String>,
    /// Remarks on this run.
    pub notes: Vec<String>,
    /// The processes it started: role and pid.
    pub processes: Vec<(String, u32)>,
}

/// The whole report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The command line.
    pub command: String,
    /// The machine.
    pub machine: String,
    /// The switchyard binary used.
    pub switchyard_bin: Option<String>,
    /// The bare hyper proxy binary and the stack it is built with, when it ran.
    pub bare_proxy: Option<String>,
    /// The Envoy binary and version, when Envoy ran.
    pub envoy: Option<String>,
    /// The HAProxy binary and version, when HAProxy ran.
    pub haproxy: Option<String>,
    /// The nginx binary and version, when nginx ran.
    pub nginx: Option<String>,
    /// The redis-server binary and version, when a run used `--state redis`.
    pub redis_server: Option<String>,
    /// Runs, in order.
    pub runs: Vec<RunReport>,
    /// Runs skipped and why.
    pub skipped: Vec<String>,
    /// Runs that failed and why.
    pub errors: Vec<String>,
}

impl RunReport {
    /// Its target's label in tables and headings: with the state backend and the sidecars when
    /// they are not the single in-memory sidecar (`switchyard (redis, 2 sidecars)`).
    pub fn label(&self) -> String {
        let base = TargetKind::label_of(&self.target);
        match self.state.as_deref() {
            Some(state) if state != "memory" || self.sidecars > 1 => {
                if self.sidecars > 1 {
                    format!("{base} ({state}, {} sidecars)", self.sidecars)
                } else {
                    format!("{base} ({state})")
                }
            }
            _ => base.to_owned(),
        }
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) => format!("{v:.digits$}"),
        None => "—".into(),
    }
}

fn seconds(v: Option<f64>, applies: bool) -> String {
    if !applies {
        return "—".into();
    }
    match v {
        Some(v) => format!("{v:.1} s"),
        None => "never".into(),
    }
}

impl Report {
    /// The summary table (Markdown).
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str("| scenario | target | requests | rate/s | p50 ms | p90 ms | p99 ms | p99.9 ms | failures | unknown | charged twice | charged on both | charged, no success | to ≥99 % | fail back | CPU µs/req | peak RSS MiB |\n");
        out.push_str("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
        for r in &self.runs {
            let s = &r.shop;
            let c = r.charges.as_ref();
            let faulted = r.fault_window_s.is_some();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.scenario,
                r.label(),
                s.requests,
                s.achieved_rps,
                s.latency.p50_ms,
                s.latency.p90_ms,
                s.latency.p99_ms,
                s.latency.p999_ms,
                s.total.failed,
                s.unknown_outcomes,
                c.map(|c| c.keys_charged_twice_on_one.to_string()).unwrap_or("—".into()),
                c.map(|c| c.keys_charged_on_both.to_string()).unwrap_or("—".into()),
                c.map(|c| c.charged_without_success.to_string()).unwrap_or("—".into()),
                seconds(s.time_to_99pct_s, faulted),
                if s.left_primary { seconds(s.time_to_fail_back_s, true) } else { "—".into() },
                opt(r.proxy.as_ref().map(|p| p.cpu_us_per_request), 1),
                opt(r.proxy.as_ref().map(|p| p.peak_rss_mib), 1),
            );
        }
        out
    }

    /// The state backends side by side: one row per switchyard run of a scenario that ran with more
    /// than one backend, or with several sidecars (`fleet`). Empty when there is none.
    pub fn backends_table(&self) -> String {
        let rows: Vec<&RunReport> = self
            .runs
            .iter()
            .filter(|r| r.state.is_some())
            .filter(|r| {
                r.sidecars > 1
                    || self
                        .runs
                        .iter()
                        .filter(|o| o.scenario == r.scenario && o.state.is_some())
                        .count()
                        > 1
            })
            .collect();
        if rows.is_empty() {
            return String::new();
        }
        let mut out = String::new();
        out.push_str("| scenario | state | sidecars | requests | shop retries | charged on both | charged twice | unknown | keys left unknown | p50 ms | p99 ms | sidecars CPU µs/req | Redis round trips/req | Redis commands/req | redis CPU µs/req |\n");
        out.push_str("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
        for r in rows {
            let s = &r.shop;
            let c = r.charges.as_ref();
            let redis = r.redis.as_ref();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {} | {} | {} | {} |",
                r.scenario,
                r.state.as_deref().unwrap_or("—"),
                r.sidecars,
                s.requests,
                s.shop_retries,
                c.map(|c| c.keys_charged_on_both.to_string()).unwrap_or("—".into()),
                c.map(|c| c.keys_charged_twice_on_one.to_string()).unwrap_or("—".into()),
                s.unknown_outcomes,
                s.keys_left_unknown,
                s.latency.p50_ms,
                s.latency.p99_ms,
                opt(r.proxy.as_ref().map(|p| p.cpu_us_per_request), 1),
                opt(redis.map(|x| x.round_trips_per_request), 2),
                opt(redis.map(|x| x.commands_per_request), 2),
                opt(redis.and_then(|x| x.cpu_us_per_request), 1),
            );
        }
        out
    }

    /// For each switchyard run with a state backend other than memory, and a memory run of the same
    /// scenario and sidecars: what the backend costs over memory, one line each.
    pub fn over_memory(&self) -> Vec<String> {
        let mut out = Vec::new();
        for r in self
            .runs
            .iter()
            .filter(|r| r.state.as_deref().is_some_and(|s| s != "memory"))
        {
            let Some(mem) = self.runs.iter().find(|m| {
                m.state.as_deref() == Some("memory")
                    && m.scenario == r.scenario
                    && m.sidecars == r.sidecars
            }) else {
                continue;
            };
            let (Some(a), Some(b)) = (&r.proxy, &mem.proxy) else {
                continue;
            };
            let redis = r
                .redis
                .as_ref()
                .map(|x| {
                    format!(
                        ", {:.2} Redis round trips/request ({:.2} commands), redis-server {} µs CPU/request",
                        x.round_trips_per_request,
                        x.commands_per_request,
                        opt(x.cpu_us_per_request, 1)
                    )
                })
                .unwrap_or_default();
            out.push(format!(
                "{}: {} over memory ({} sidecar{}): sidecar CPU {:+.1} µs/request ({:.1} against {:.1}), p99 {:+.2} ms ({:.2} against {:.2}){redis}",
                r.scenario,
                r.state.as_deref().unwrap_or("?"),
                r.sidecars,
                if r.sidecars == 1 { "" } else { "s" },
                a.cpu_us_per_request - b.cpu_us_per_request,
                a.cpu_us_per_request,
                b.cpu_us_per_request,
                r.shop.latency.p99_ms - mem.shop.latency.p99_ms,
                r.shop.latency.p99_ms,
                mem.shop.latency.p99_ms,
            ));
        }
        out
    }

    /// For each scenario run through both switchyard and the bare hyper proxy: what switchyard costs
    /// over the stack it is built on (CPU per request, peak RSS, p99), one line each.
    pub fn over_the_stack(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sy in self
            .runs
            .iter()
            .filter(|r| r.target == "switchyard" && r.label() == "switchyard")
        {
            let Some(bare) = self
                .runs
                .iter()
                .find(|r| r.target == "hyper" && r.scenario == sy.scenario)
            else {
                continue;
            };
            let (Some(a), Some(b)) = (&sy.proxy, &bare.proxy) else {
                continue;
            };
            out.push(format!(
                "{}: switchyard over the bare hyper proxy: CPU {:+.1} µs/request ({:.1} against {:.1}), peak RSS {:+.1} MiB ({:.1} against {:.1}), p99 {:+.2} ms",
                sy.scenario,
                a.cpu_us_per_request - b.cpu_us_per_request,
                a.cpu_us_per_request,
                b.cpu_us_per_request,
                a.peak_rss_mib - b.peak_rss_mib,
                a.peak_rss_mib,
                b.peak_rss_mib,
                sy.shop.latency.p99_ms - bare.shop.latency.p99_ms,
            ));
        }
        out
    }

    /// The abuse scenario's figures and verdicts, a few lines per run that has them.
    pub fn abuse_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for r in &self.runs {
            let Some(a) = &r.abuse else { continue };
            let phase = |name: &str, p: &crate::abuse::Phase| {
                format!(
                    "{name}: {} payments, p50 {:.2} ms, p99 {:.2} ms, {} failed",
                    p.requests, p.latency.p50_ms, p.latency.p99_ms, p.failed
                )
            };
            let mib = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.1} MiB"));
            out.push(format!(
                "abuse / {}: window {:.1}–{:.1} s; {}; {}; {}",
                r.label(),
                a.window_s.0,
                a.window_s.1,
                phase("quiet", &a.quiet),
                phase("during", &a.during),
                phase("after", &a.after)
            ));
            out.push(format!(
                "abuse / {}: RSS quiet {}, peak {}, after {} ({} s after the window; the quiet phase's own growth {} MiB/s; control, i.e. no abuse, at that moment {}; after minus control {}); limits.max_buffered_bytes {} MiB, max_connections {}",
                r.label(),
                mib(a.rss_quiet_mib),
                mib(a.rss_peak_mib),
                mib(a.rss_after_mib),
                a.rss_after_at_s.map_or("?".into(), |s| format!("{s:.1}")),
                a.rss_quiet_trend_mib_per_s.map_or("?".into(), |s| format!("{s:.2}")),
                mib(a.rss_control_mib),
                mib(a.rss_after_over_trend_mib),
                a.max_buffered_mib,
                a.max_connections
            ));
            // Where the time went: the sidecar's own view and who used the CPU, phase by phase.
            for (name, p) in [
                ("quiet", &a.quiet),
                ("during", &a.during),
                ("after", &a.after),
            ] {
                let bound = |v: Option<f64>| v.map_or("over 30 s".into(), |v| format!("≤ {v} ms"));
                let sidecar = match &p.sidecar {
                    Some(v) if v.requests > 0 => format!(
                        "sidecar's own p50 {}, p99 {} (bucket bounds; {} to a provider, {} answered itself); over {} ms: shop {}, sidecar {}",
                        bound(v.p50_le_ms),
                        bound(v.p99_le_ms),
                        v.requests,
                        v.own_answers,
                        crate::attribution::SLOW_MS,
                        p.over_slow,
                        v.over_slow
                    ),
                    Some(v) => format!("sidecar saw none ({} answered itself)", v.own_answers),
                    None => "sidecar's metrics not read".into(),
                };
                let cpu = if p.cpu_cores.is_empty() {
                    "not read".into()
                } else {
                    p.cpu_cores
                        .iter()
                        .map(|(k, v)| format!("{k} {v:.2}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                out.push(format!(
                    "abuse / {}: {name}: client p99 {:.2} ms (send lag p99 {:.2} ms); {sidecar}; CPU in cores: {cpu}",
                    r.label(),
                    p.latency.p99_ms,
                    p.send_lag_p99_ms,
                ));
            }
            let c = &a.clients;
            out.push(format!(
                "abuse / {}: the abuse clients' thread ran at nice {} (asked {}{})",
                r.label(),
                c.nice.map_or("?".into(), |n| n.to_string()),
                c.nice_asked,
                c.nice_error
                    .as_ref()
                    .map_or(String::new(), |e| format!("; not lowered: {e}"))
            ));
            let answers = |m: &BTreeMap<String, u64>| {
                m.iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            out.push(format!(
                "abuse / {}: idle h2 {} of {} opened ({} connect failed, {} closed by the sidecar in the window); slow uploads {} ({} bytes; answers: {}); webhook events {} ({:.0} MiB; answers: {})",
                r.label(),
                c.idle_h2_opened,
                c.idle_h2_asked,
                c.idle_h2_connect_failed,
                c.idle_h2_closed_by_sidecar,
                c.slow_uploads,
                c.slow_upload_bytes,
                if c.slow_upload_answers.is_empty() { "none".into() } else { answers(&c.slow_upload_answers) },
                c.webhook_events,
                c.webhook_bytes as f64 / 1048576.0,
                answers(&c.webhook_answers)
            ));
            for v in &a.verdicts {
                out.push(format!(
                    "abuse / {}: {} {}: {}",
                    r.label(),
                    if v.met { "MET" } else { "NOT MET" },
                    v.goal,
                    v.measured
                ));
            }
        }
        out
    }

    /// Issue 14's figures and goals, a few lines per run that measures them (`reset`, `brownout`,
    /// `outage` through switchyard): the unknown operations and their resolution, keys charged on
    /// both providers, and failures the shop saw for charged keys without being told the outcome was
    /// unknown.
    pub fn resolution_lines(&self) -> Vec<String> {
        let verdict = |met: bool| if met { "MET" } else { "NOT MET" };
        let secs = |v: Option<f64>| v.map_or("—".into(), |v| format!("{v:.2} s"));
        let mut out = Vec::new();
        for r in &self.runs {
            let Some(f) = &r.resolution else { continue };
            let head = format!("{} / {}", r.scenario, r.label());
            if f.watched {
                let left = if f.left_by_reason.is_empty() {
                    String::new()
                } else {
                    format!(
                        " ({})",
                        f.left_by_reason
                            .iter()
                            .map(|(k, v)| format!("{k} {v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                out.push(format!(
                    "{head}: unknown operations at the fault's end {}, {} more after it ({} resolved during the fault, at most {} listed at once); resolved {}: p50 {}, max {} after the fault's end; left unresolved {}{left}; {}{{result=\"resolved\"}} {}; watched {:.1} s after the fault's end (bound {:.0} s, {} polls)",
                    f.unknown_at_fault_end,
                    f.appeared_after_fault_end,
                    f.resolved_during_fault,
                    f.peak_listed,
                    f.resolved,
                    secs(f.p50_s),
                    secs(f.max_s),
                    f.left,
                    crate::resolution::RESOLUTIONS_TOTAL,
                    f.metric_resolved.map_or("not read".into(), |m| format!("+{m}")),
                    f.watched_s,
                    f.bound_s,
                    f.polls,
                ));
                let counted = if f.goal_counted == 0 {
                    "no unknown operation to resolve".to_owned()
                } else {
                    format!("{} of {}", f.goal_within, f.goal_counted)
                };
                let excluded = if f.not_sendable > 0 {
                    format!(
                        "; {} the resolver cannot send again, not counted",
                        f.not_sendable
                    )
                } else {
                    String::new()
                };
                out.push(format!(
                    "{head}: {} 100 % of unknown operations whose provider answers on replay resolved within {} s of the provider's recovery: {counted}{excluded}",
                    verdict(f.goal_met),
                    crate::resolution::GOAL_WITHIN_S
                ));
            } else {
                out.push(format!(
                    "{head}: NOT MEASURED unknown operations resolved: {}",
                    f.why_not.as_deref().unwrap_or("not watched")
                ));
            }
            match &r.charges {
                Some(c) => {
                    out.push(format!(
                        "{head}: {} 0 keys charged on both providers: {}",
                        verdict(c.keys_charged_on_both == 0),
                        c.keys_charged_on_both
                    ));
                    out.push(format!(
                        "{head}: {} 0 shop-visible failures for keys a provider charged that were not marked `x-switchyard-outcome: unknown`: {}",
                        verdict(c.charged_failed_not_unknown == 0),
                        c.charged_failed_not_unknown
                    ));
                }
                None => out.push(format!(
                    "{head}: NOT MEASURED charges: the providers' books were not read"
                )),
            }
        }
        out
    }

    /// The full Markdown report.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        out.push_str("# switchyard loadtest\n\n");
        let _ = writeln!(out, "- command: `{}`", self.command);
        let _ = writeln!(out, "- machine: {}", self.machine);
        if let Some(b) = &self.switchyard_bin {
            let _ = writeln!(out, "- switchyard: `{b}`");
        }
        for (name, bin) in [
            ("hyper (bare)", &self.bare_proxy),
            ("envoy", &self.envoy),
            ("haproxy", &self.haproxy),
            ("nginx", &self.nginx),
            ("redis-server", &self.redis_server),
        ] {
            let _ = writeln!(out, "- {name}: {}", bin.as_deref().unwrap_or("not run"));
        }
        if let Some(r) = self.runs.first() {
            let _ = writeln!(out, "- load: {}", r.load);
        }
        out.push_str("\nLatency is from each request's intended send time to the end of its answer (open model: no coordinated omission). *failures*: answers other than 2xx the shop got, proxy-made or provider-made (409 to a re-sent key still in flight is not counted). *unknown*: answers marked `x-switchyard-outcome: unknown`, and requests without an answer after they may have left. Charges come from the providers' own counters: *charged twice* = keys charged more than once by one provider, *charged on both* = keys charged by both, *charged, no success* = keys charged although no request with that key got a 2xx. *to ≥99 %*: from the fault's start until success stays ≥ 99 % per 100 ms for the rest of the fault. *fail back*: from the fault's end until ≥ 90 % of answers come from the primary in every later 100 ms. CPU and RSS are the proxy's (from /proc) over the measured time: of all its processes for nginx (master and workers; RSS is the sum of their peaks).\n\n");
        out.push_str(&self.table());
        let backends = self.backends_table();
        if !backends.is_empty() {
            out.push_str("\n## State backends side by side\n\n*charged on both*: keys both providers charged (from their own records). *shop retries*: sends the shop repeated, with the same key, at the next sidecar. *unknown*: answers marked unknown (or none after the request may have left); *keys left unknown*: of those, keys that never got a 2xx. *sidecars CPU*: all sidecars' CPU over the requests sent to them. *Redis round trips / commands*: from the server's own counters (requests read; commands run, a script's own calls included), per request.\n\n");
            out.push_str(&backends);
            for line in self.over_memory() {
                let _ = writeln!(out, "- {line}");
            }
        }
        let over = self.over_the_stack();
        if !over.is_empty() {
            out.push_str("\n## What switchyard costs over its stack\n\n");
            for line in over {
                let _ = writeln!(out, "- {line}");
            }
        }
        let abuse = self.abuse_lines();
        if !abuse.is_empty() {
            out.push_str("\n## Abuse: issue 17's goals\n\nPayments split by their intended send time into the quiet phase, the abuse window and the time after it; the sidecar's RSS (`VmRSS`, sampled every 100 ms) just before the window, its largest sample from the window on, and 10 s after the window. Per phase, where the time went: the shop's p99 and how late the generator sent, the sidecar's own p50/p99 from its `switchyard_request_duration_seconds` histogram (bucket upper bounds, scraped at the phase's edges), and the CPU each process used, in cores.\n\n");
            for line in abuse {
                let _ = writeln!(out, "- {line}");
            }
        }
        let resolution = self.resolution_lines();
        if !resolution.is_empty() {
            out.push_str("\n## Unknown outcomes resolved: issue 14's goals\n\nThe shop sends every key once and never retries. The sidecars' `GET /admin/operations?state=unknown` is read every 100 ms from the start of the measured time until no listed operation is left that the resolver could still settle (after the load's end), or until the bound after the fault's end; an operation that leaves the listing was resolved, at the first poll that no longer lists it. Times are counted from the fault's end, when the provider recovers. The goal counts the operations unknown at the fault's end or after it, but not those the resolver cannot send again (card data, request lost, shop credential gone). Charges are read from the providers' books after the watch, since the resolver may charge a payment that the fault left uncharged.\n\n");
            for line in resolution {
                let _ = writeln!(out, "- {line}");
            }
        }
        out.push_str("\n## Failures by kind\n\n");
        let mut any = false;
        for r in &self.runs {
            if r.shop.failures_by_kind.is_empty() {
                continue;
            }
            any = true;
            let kinds: Vec<String> = r
                .shop
                .failures_by_kind
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            let _ = writeln!(
                out,
                "- {} / {}: {}",
                r.scenario,
                r.label(),
                kinds.join(", ")
            );
        }
        if !any {
            out.push_str("none\n");
        }
        out.push_str("\n## Runs\n\n");
        for r in &self.runs {
            let _ = writeln!(out, "### {} / {}\n", r.scenario, r.label());
            let _ = writeln!(out, "- fault: {}", r.fault);
            if let Some((a, b)) = r.fault_window_s {
                let _ = writeln!(out, "- fault window: {a:.2} s – {b:.2} s");
            }
            let s = &r.shop;
            let _ = writeln!(
                out,
                "- answers: {} ok, {} failed, {} key-in-flight (409); by provider: {}",
                s.total.ok,
                s.total.failed,
                s.total.key_in_flight,
                s.answers_by_provider
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if r.fault_window_s.is_some() {
                let _ = writeln!(
                    out,
                    "- failures before / during / after the fault: {} / {} / {}",
                    s.before_fault.failed, s.during_fault.failed, s.after_fault.failed
                );
            }
            if let Some(c) = &r.charges {
                let _ = writeln!(
                    out,
                    "- charges: primary {}, backup {}; charged keys with a failure not marked unknown: {}",
                    c.primary, c.backup, c.charged_failed_not_unknown
                );
            }
            if s.shop_retries > 0 || s.keys_left_unknown > 0 {
                let _ = writeln!(
                    out,
                    "- shop retries at the next sidecar: {}; keys left unknown: {}",
                    s.shop_retries, s.keys_left_unknown
                );
            }
            if !r.state_operations.is_empty() {
                let _ = writeln!(
                    out,
                    "- state store calls (switchyard_state_operations_total, all sidecars): {}",
                    r.state_operations
                        .iter()
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            if let Some(x) = &r.redis {
                let _ = writeln!(
                    out,
                    "- redis: {:.2} round trips and {:.2} commands per request ({}); redis-server {} µs CPU/request",
                    x.round_trips_per_request,
                    x.commands_per_request,
                    x.commands
                        .iter()
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    opt(x.cpu_us_per_request, 1)
                );
            }
            if let Some(p) = &r.proxy {
                let _ = writeln!(
                    out,
                    "- proxy (pid {}): {:.2} s CPU, {:.1} µs/request, peak RSS {:.1} MiB",
                    p.pid, p.cpu_s, p.cpu_us_per_request, p.peak_rss_mib
                );
            }
            if let Some(v) = r.providers_cpu_us_per_request {
                let _ = writeln!(out, "- sandbox providers: {v:.1} µs CPU/request");
            }
            if let Some(v) = r.loadgen_cpu_us_per_request {
                let _ = writeln!(
                    out,
                    "- load generator: {v:.1} µs CPU/request; send lag p99 {:.2} ms",
                    s.send_lag_p99_ms
                );
            }
            if let (Some(busy), Some(others)) = (r.machine.busy_cpu_s, r.machine.others_cpu_s) {
                let _ = writeln!(
                    out,
                    "- machine: {busy:.1} s CPU busy over the run, {others:.1} s of it by other processes; load average {} at the start",
                    opt(r.machine.load_1m_at_start, 2)
                );
            }
            if let Some(rl) = &r.reload {
                let _ = writeln!(
                    out,
                    "- reload: {} rewrites; generation {}; applied {}, rejected {}",
                    rl.rewrites,
                    rl.generation.map(|g| g.to_string()).unwrap_or("—".into()),
                    rl.reloads_applied
                        .map(|g| g.to_string())
                        .unwrap_or("—".into()),
                    rl.reloads_rejected
                        .map(|g| g.to_string())
                        .unwrap_or("—".into()),
                );
            }
            for n in &r.notes {
                let _ = writeln!(out, "- note: {n}");
            }
            if let Some(chart) = &r.chart {
                let _ = writeln!(out, "\n![{} / {}]({chart})", r.scenario, r.label());
            }
            out.push('\n');
        }
        if !self.skipped.is_empty() {
            out.push_str("## Skipped\n\n");
            for s in &self.skipped {
                let _ = writeln!(out, "- {s}");
            }
            out.push('\n');
        }
        if !self.errors.is_empty() {
            out.push_str("## Errors\n\n");
            for s in &self.errors {
                let _ = writeln!(out, "- {s}");
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_an_empty_and_a_filled_report() {
        let mut report = Report {
            command: "loadtest".into(),
            machine: "m".into(),
            ..Report::default()
        };
        assert!(report.markdown().contains("| scenario |"));
        let mut run = RunReport {
            scenario: "outage".into(),
            target: "switchyard".into(),
            fault_window_s: Some((1.0, 2.0)),
            ..RunReport::default()
        };
        run.shop
            .failures_by_kind
            .insert("provider_unreachable".into(), 3);
        report.runs.push(run);
        report.runs.push(RunReport {
            scenario: "outage".into(),
            target: "hyper".into(),
            ..RunReport::default()
        });
        report.bare_proxy = Some("/x/bare-proxy (bare-proxy 0.1.0: hyper 1.12.0)".into());
        report.skipped.push("envoy: no binary".into());
        let md = report.markdown();
        assert!(md.contains("| outage | switchyard |"));
        assert!(md.contains("| outage | hyper (bare) |"));
        assert!(md.contains("### outage / hyper (bare)"));
        assert!(md.contains("- hyper (bare): /x/bare-proxy (bare-proxy 0.1.0: hyper 1.12.0)"));
        assert!(md.contains("provider_unreachable 3"));
        assert!(md.contains("## Skipped"));
        assert!(serde_json::to_string(&report).is_ok());
        assert!(
            report.over_the_stack().is_empty(),
            "no CPU figures, no comparison"
        );
        assert!(report.backends_table().is_empty());
    }

    #[test]
    fn backends_side_by_side() {
        let run = |state: &str, both: u64, cpu: f64, p99: f64| {
            let mut r = RunReport {
                scenario: "fleet".into(),
                target: "switchyard".into(),
                state: Some(state.into()),
                sidecars: 2,
                charges: Some(Charges {
                    keys_charged_on_both: both,
                    ..Charges::default()
                }),
                proxy: Some(ProcessFigures {
                    cpu_us_per_request: cpu,
                    ..ProcessFigures::default()
                }),
                ..RunReport::default()
            };
            r.shop.latency.p99_ms = p99;
            r
        };
        let mut redis = run("redis", 0, 130.0, 2.0);
        redis.redis = Some(RedisFigures {
            round_trips_per_request: 1.9,
            commands_per_request: 6.0,
            commands: [("evalsha".to_owned(), 10)].into_iter().collect(),
            cpu_us_per_request: Some(20.0),
        });
        let report = Report {
            runs: vec![
                run("memory", 3, 100.0, 1.5),
                run("local", 2, 104.0, 1.6),
                redis,
            ],
            ..Report::default()
        };
        let table = report.backends_table();
        assert!(table.contains("| fleet | memory | 2 |"), "{table}");
        assert!(table.contains("| fleet | redis | 2 |"), "{table}");
        assert_eq!(table.lines().count(), 5);
        assert_eq!(report.runs[2].label(), "switchyard (redis, 2 sidecars)");
        let over = report.over_memory();
        assert_eq!(over.len(), 2);
        assert!(
            over[1]
                .starts_with("fleet: redis over memory (2 sidecars): sidecar CPU +30.0 µs/request"),
            "{}",
            over[1]
        );
        assert!(
            over[1].contains("1.90 Redis round trips/request"),
            "{}",
            over[1]
        );
        let md = report.markdown();
        assert!(md.contains("## State backends side by side"));
        assert!(
            md.contains("| fleet | switchyard (local, 2 sidecars) |"),
            "{md}"
        );
    }

    #[test]
    fn resolution_lines_and_verdicts() {
        use crate::resolution::Figures;
        let run = |scenario: &str, resolution: Figures, both: u64, failed_known: u64| RunReport {
            scenario: scenario.into(),
            target: "switchyard".into(),
            state: Some("memory".into()),
            sidecars: 1,
            charges: Some(Charges {
                keys_charged_on_both: both,
                charged_failed_not_unknown: failed_known,
                ..Charges::default()
            }),
            resolution: Some(resolution),
            ..RunReport::default()
        };
        let watched = Figures {
            watched: true,
            unknown_at_fault_end: 40,
            appeared_after_fault_end: 2,
            resolved: 41,
            p50_s: Some(1.2),
            max_s: Some(6.25),
            left: 1,
            left_by_reason: [("card_data".to_owned(), 1)].into_iter().collect(),
            not_sendable: 1,
            goal_counted: 41,
            goal_within: 40,
            goal_met: false,
            watched_s: 7.0,
            bound_s: 30.0,
            polls: 170,
            metric_resolved: Some(41),
            ..Figures::default()
        };
        let report = Report {
            runs: vec![
                run("reset", watched, 0, 0),
                run(
                    "outage",
                    Figures::not_watched(
                        "GET x: 404: this switchyard build does not list unknown operations".into(),
                    ),
                    1,
                    2,
                ),
                RunReport {
                    scenario: "steady".into(),
                    target: "switchyard".into(),
                    ..RunReport::default()
                },
            ],
            ..Report::default()
        };
        let lines = report.resolution_lines();
        assert_eq!(lines.len(), 7, "{lines:#?}");
        assert!(
            lines[0].starts_with(
                "reset / switchyard: unknown operations at the fault's end 40, 2 more after it"
            ),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("resolved 41: p50 1.20 s, max 6.25 s after the fault's end; left unresolved 1 (card_data 1)"), "{}", lines[0]);
        assert!(
            lines[0].contains("switchyard_resolutions_total{result=\"resolved\"} +41"),
            "{}",
            lines[0]
        );
        assert_eq!(lines[1], "reset / switchyard: NOT MET 100 % of unknown operations whose provider answers on replay resolved within 5 s of the provider's recovery: 40 of 41; 1 the resolver cannot send again, not counted");
        assert_eq!(
            lines[2],
            "reset / switchyard: MET 0 keys charged on both providers: 0"
        );
        assert!(
            lines[3].starts_with("reset / switchyard: MET 0 shop-visible failures"),
            "{}",
            lines[3]
        );
        assert!(
            lines[4].starts_with(
                "outage / switchyard: NOT MEASURED unknown operations resolved: GET x: 404"
            ),
            "{}",
            lines[4]
        );
        assert_eq!(
            lines[5],
            "outage / switchyard: NOT MET 0 keys charged on both providers: 1"
        );
        assert!(
            lines[6].contains("NOT MET") && lines[6].ends_with(": 2"),
            "{}",
            lines[6]
        );
        let md = report.markdown();
        assert!(
            md.contains("## Unknown outcomes resolved: issue 14's goals"),
            "{md}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["runs"][0]["resolution"]["goal_within"], 40);
        assert!(json["runs"][2].get("resolution").is_none());
    }

    #[test]
    fn switchyard_is_set_against_the_bare_proxy_of_the_same_scenario() {
        let run = |scenario: &str, target: &str, cpu: f64, rss: f64, p99: f64| {
            let mut r = RunReport {
                scenario: scenario.into(),
                target: target.into(),
                proxy: Some(ProcessFigures {
                    cpu_us_per_request: cpu,
                    peak_rss_mib: rss,
                    ..ProcessFigures::default()
                }),
                ..RunReport::default()
            };
            r.shop.latency.p99_ms = p99;
            r
        };
        let report = Report {
            runs: vec![
                run("steady", "switchyard", 95.7, 26.5, 1.57),
                run("steady", "hyper", 68.4, 10.6, 1.28),
                run("steady", "envoy", 151.1, 72.5, 2.54),
                run("outage", "switchyard", 120.0, 19.8, 0.5),
            ],
            ..Report::default()
        };
        let lines = report.over_the_stack();
        assert_eq!(
            lines,
            ["steady: switchyard over the bare hyper proxy: CPU +27.3 µs/request (95.7 against 68.4), peak RSS +15.9 MiB (26.5 against 10.6), p99 +0.29 ms"]
        );
        assert!(report
            .markdown()
            .contains("## What switchyard costs over its stack"));
    }
}
