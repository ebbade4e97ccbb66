//! The report: one record per run (scenario × target), printed as a table and written as
//! `report.json` and `report.md`.

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

/// One run: a scenario against one target.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    /// Scenario name.
    pub scenario: String,
    /// `switchyard`, `direct`, `hyper`, `envoy`, `haproxy` or `nginx`.
    pub target: String,
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
    /// master and workers), of them all.
    pub proxy: Option<ProcessFigures>,
    /// Both sandbox providers' CPU per request, µs.
    pub providers_cpu_us_per_request: Option<f64>,
    /// The load generator's own CPU per request, µs (it shares the machine).
    pub loadgen_cpu_us_per_request: Option<f64>,
    /// The reload scenario's figures.
    pub reload: Option<ReloadFigures>,
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
    /// Runs, in order.
    pub runs: Vec<RunReport>,
    /// Runs skipped and why.
    pub skipped: Vec<String>,
    /// Runs that failed and why.
    pub errors: Vec<String>,
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
                TargetKind::label_of(&r.target),
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

    /// For each scenario run through both switchyard and the bare hyper proxy: what switchyard costs
    /// over the stack it is built on (CPU per request, peak RSS, p99), one line each.
    pub fn over_the_stack(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sy in self.runs.iter().filter(|r| r.target == "switchyard") {
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
        ] {
            let _ = writeln!(out, "- {name}: {}", bin.as_deref().unwrap_or("not run"));
        }
        if let Some(r) = self.runs.first() {
            let _ = writeln!(out, "- load: {}", r.load);
        }
        out.push_str("\nLatency is from each request's intended send time to the end of its answer (open model: no coordinated omission). *failures*: answers other than 2xx the shop got, proxy-made or provider-made (409 to a re-sent key still in flight is not counted). *unknown*: answers marked `x-switchyard-outcome: unknown`, and requests without an answer after they may have left. Charges come from the providers' own counters: *charged twice* = keys charged more than once by one provider, *charged on both* = keys charged by both, *charged, no success* = keys charged although no request with that key got a 2xx. *to ≥99 %*: from the fault's start until success stays ≥ 99 % per 100 ms for the rest of the fault. *fail back*: from the fault's end until ≥ 90 % of answers come from the primary in every later 100 ms. CPU and RSS are the proxy's (from /proc) over the measured time: of all its processes for nginx (master and workers; RSS is the sum of their peaks).\n\n");
        out.push_str(&self.table());
        let over = self.over_the_stack();
        if !over.is_empty() {
            out.push_str("\n## What switchyard costs over its stack\n\n");
            for line in over {
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
                TargetKind::label_of(&r.target),
                kinds.join(", ")
            );
        }
        if !any {
            out.push_str("none\n");
        }
        out.push_str("\n## Runs\n\n");
        for r in &self.runs {
            let _ = writeln!(
                out,
                "### {} / {}\n",
                r.scenario,
                TargetKind::label_of(&r.target)
            );
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
                let _ = writeln!(out, "- charges: primary {}, backup {}", c.primary, c.backup);
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
                let _ = writeln!(
                    out,
                    "\n![{} / {}]({chart})",
                    r.scenario,
                    TargetKind::label_of(&r.target)
                );
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
