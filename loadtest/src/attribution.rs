//! Where a payment's time went while the abuse scenario ran: the sidecar's own view of the payments
//! and the CPU each process used, read at the edges of each phase.
//!
//! A client-measured p99 says how late the answers were, not where the time went: on one machine the
//! sidecar, the provider sandbox, the load generator and the attackers share the same cores. The
//! sidecar's `switchyard_request_duration_seconds` histogram, scraped from its admin `/metrics` at
//! each phase's edges, tells what the sidecar measured between a request head and its response head
//! (provider leg included); CPU times from `/proc` tell who was busy meanwhile.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::procfs;

/// The payments of one phase as the sidecar measured them: the delta of
/// `switchyard_request_duration_seconds` for the payments route between the scrapes at the phase's
/// edges (by when each request ended, not when it was planned). Its clock starts when the request
/// head has been read and stops at the response head: time in the kernel's queues, in the shop
/// and in the body transfers is not in it. Percentiles are bucket upper bounds, not values.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SidecarView {
    /// Requests of the route that went to a provider.
    pub requests: u64,
    /// Requests of the route the sidecar answered itself (provider `none`: a concurrent duplicate's
    /// 409, the slow uploads' 504s or 408s, an `overloaded` 503): not in the percentiles.
    pub own_answers: u64,
    /// Upper bound of the bucket holding the median, ms (`None`: over the largest finite bound).
    pub p50_le_ms: Option<f64>,
    /// Upper bound of the bucket holding the 99th percentile, ms (`None`: as above).
    pub p99_le_ms: Option<f64>,
    /// Requests that took the sidecar over [`SLOW_MS`] ms (a bucket bound).
    pub over_slow: u64,
}

/// The latency, ms, over which the shop's and the sidecar's counts of slow payments are compared
/// (a bucket bound of `switchyard_request_duration_seconds`).
pub const SLOW_MS: f64 = 10.0;

/// Cumulative histogram buckets: (upper bound in seconds, `f64::INFINITY` for `+Inf`; count).
pub type Buckets = Vec<(f64, u64)>;

/// The metric the sidecar's view is read from.
pub const DURATION_BUCKET: &str = "switchyard_request_duration_seconds_bucket";

/// The route whose durations are read (the one route of the generated config).
pub const PAYMENTS_ROUTE: &str = "payments";

/// The cumulative buckets of [`DURATION_BUCKET`] for `route` in a Prometheus text exposition,
/// summed over providers: those of requests that went to a provider, and those the proxy answered
/// itself (provider `none`).
pub fn duration_buckets(exposition: &str, route: &str) -> (Buckets, Buckets) {
    let mut sent: BTreeMap<u64, (f64, u64)> = BTreeMap::new();
    let mut own: BTreeMap<u64, (f64, u64)> = BTreeMap::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix(DURATION_BUCKET) else {
            continue;
        };
        let Some((labels, value)) = rest.strip_prefix('{').and_then(|r| r.split_once("} ")) else {
            continue;
        };
        let label = |name: &str| {
            labels.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k.trim() == name).then(|| v.trim().trim_matches('"').to_owned())
            })
        };
        if label("route").as_deref() != Some(route) {
            continue;
        }
        let le = match label("le").as_deref() {
            Some("+Inf") => f64::INFINITY,
            Some(v) => match v.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            },
            None => continue,
        };
        let Ok(count) = value.trim().parse::<f64>() else {
            continue;
        };
        let into = if label("provider").as_deref() == Some("none") {
            &mut own
        } else {
            &mut sent
        };
        // Bounds are positive: their bit patterns sort as the values do.
        into.entry(le.to_bits()).or_insert((le, 0)).1 += count as u64;
    }
    (sent.into_values().collect(), own.into_values().collect())
}

/// `after` minus `before`, bucket by bucket (a bucket missing from `before` counts from 0).
pub fn bucket_delta(after: &Buckets, before: &Buckets) -> Buckets {
    after
        .iter()
        .map(|(le, n)| {
            let was = before.iter().find(|(b, _)| b == le).map_or(0, |(_, n)| *n);
            (*le, n.saturating_sub(was))
        })
        .collect()
}

/// The upper bound of the bucket that holds quantile `q` of the cumulative `buckets`, seconds
/// (`f64::INFINITY`: the `+Inf` bucket); `None` when they hold nothing.
pub fn bucket_bound(buckets: &Buckets, q: f64) -> Option<f64> {
    let total = buckets.iter().map(|(_, n)| *n).max()?;
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    buckets.iter().find(|(_, n)| *n >= rank).map(|(le, _)| *le)
}

/// How many of the cumulative `buckets` are over `bound` seconds (`bound` must be a bucket bound;
/// 0 if it is not one).
pub fn over(buckets: &Buckets, bound: f64) -> u64 {
    let total = buckets.iter().map(|(_, n)| *n).max().unwrap_or(0);
    buckets
        .iter()
        .find(|(le, _)| (*le - bound).abs() < 1e-9)
        .map_or(0, |(_, n)| total - n)
}

/// The sidecar's view of a phase, from its buckets at the phase's start and end.
pub fn sidecar_view(before: &(Buckets, Buckets), after: &(Buckets, Buckets)) -> SidecarView {
    let sent = bucket_delta(&after.0, &before.0);
    let own = bucket_delta(&after.1, &before.1);
    let ms = |s: Option<f64>| s.filter(|s| s.is_finite()).map(|s| (s * 1e6).round() / 1e3);
    SidecarView {
        requests: sent.iter().map(|(_, n)| *n).max().unwrap_or(0),
        own_answers: own.iter().map(|(_, n)| *n).max().unwrap_or(0),
        p50_le_ms: ms(bucket_bound(&sent, 0.5)),
        p99_le_ms: ms(bucket_bound(&sent, 0.99)),
        over_slow: over(&sent, SLOW_MS / 1000.0),
    }
}

/// Whose CPU time a phase reports.
#[derive(Debug, Clone)]
pub enum Cpu {
    /// A process and its descendants (the sidecar).
    Tree(String, u32),
    /// A process alone (a sandbox; the loadtest process, the abuse thread included).
    Process(String, u32),
    /// A thread of this process (the abuse thread), by its id.
    OwnThread(String, u32),
    /// The whole machine's busy time, over all cores.
    Machine(String),
}

impl Cpu {
    /// Its name in the report.
    pub fn name(&self) -> &str {
        match self {
            Cpu::Tree(n, _) | Cpu::Process(n, _) | Cpu::OwnThread(n, _) | Cpu::Machine(n) => n,
        }
    }

    fn read(&self) -> Option<Duration> {
        match self {
            Cpu::Tree(_, pid) => procfs::cpu_time_tree(*pid),
            Cpu::Process(_, pid) => procfs::cpu_time(*pid),
            Cpu::OwnThread(_, tid) => procfs::own_thread_cpu_time(*tid),
            Cpu::Machine(_) => procfs::machine_busy(),
        }
    }
}

/// What was read at one edge of a phase: when, the sidecar's duration buckets, and CPU times.
#[derive(Debug, Clone)]
pub struct Mark {
    /// When it was read.
    pub at: Instant,
    /// The sidecar's buckets (`None`: its metrics could not be read).
    pub buckets: Option<(Buckets, Buckets)>,
    /// CPU time of each of the watched, by name.
    pub cpu: Vec<(String, Option<Duration>)>,
}

/// Reads a [`Mark`] now: the sidecar's `/metrics` at `admin` (`http://host:port`) and the CPU
/// times of `cpu`.
pub async fn mark(client: &crate::control::Client, admin: Option<&str>, cpu: &[Cpu]) -> Mark {
    let at = Instant::now();
    let cpu = cpu
        .iter()
        .map(|c| (c.name().to_owned(), c.read()))
        .collect();
    let buckets = match admin {
        Some(admin) => {
            match crate::control::call(client, http::Method::GET, &format!("{admin}/metrics"), None)
                .await
            {
                Ok((200, text)) => Some(duration_buckets(&text, PAYMENTS_ROUTE)),
                _ => None,
            }
        }
        None => None,
    };
    Mark { at, buckets, cpu }
}

/// CPU used between two marks, in cores, by name; the loadtest process's figure has the abuse
/// thread's taken out of it when both were read (`loadtest` then means the load generator and the
/// tool's other threads), and `other` is the machine's busy time that none of the others used
/// (other processes, interrupts and the kernel's network work done outside any process).
pub fn cpu_between(before: &Mark, after: &Mark) -> BTreeMap<String, f64> {
    let wall = after.at.saturating_duration_since(before.at).as_secs_f64();
    let mut out = BTreeMap::new();
    if wall <= 0.0 {
        return out;
    }
    for ((name, a), (_, b)) in after.cpu.iter().zip(&before.cpu) {
        if let (Some(a), Some(b)) = (a, b) {
            out.insert(name.clone(), a.saturating_sub(*b).as_secs_f64() / wall);
        }
    }
    if let (Some(total), Some(abuse)) = (out.get(CPU_LOADTEST).copied(), out.get(CPU_ABUSE)) {
        out.insert(CPU_LOADTEST.into(), (total - abuse).max(0.0));
    }
    if let Some(machine) = out.get(CPU_MACHINE).copied() {
        let known: f64 = out
            .iter()
            .filter(|(k, _)| k.as_str() != CPU_MACHINE)
            .map(|(_, v)| v)
            .sum();
        out.insert(CPU_OTHER.into(), (machine - known).max(0.0));
    }
    for v in out.values_mut() {
        *v = (*v * 100.0).round() / 100.0;
    }
    out
}

/// Names of the CPU figures.
pub const CPU_SIDECAR: &str = "sidecar";
/// The primary sandbox (the provider every payment goes to).
pub const CPU_PRIMARY: &str = "primary sandbox";
/// The loadtest process without the abuse thread: the load generator.
pub const CPU_LOADTEST: &str = "load generator";
/// The abuse thread.
pub const CPU_ABUSE: &str = "abuse clients";
/// The whole machine.
pub const CPU_MACHINE: &str = "machine";
/// The machine's busy time none of the others used.
pub const CPU_OTHER: &str = "other";

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "# HELP switchyard_request_duration_seconds x\n\
switchyard_request_duration_seconds_bucket{route=\"payments\",provider=\"primary\",le=\"0.001\"} 90\n\
switchyard_request_duration_seconds_bucket{route=\"payments\",provider=\"primary\",le=\"0.0025\"} 98\n\
switchyard_request_duration_seconds_bucket{route=\"payments\",provider=\"primary\",le=\"0.005\"} 100\n\
switchyard_request_duration_seconds_bucket{route=\"payments\",provider=\"primary\",le=\"+Inf\"} 100\n\
switchyard_request_duration_seconds_bucket{route=\"payments\",provider=\"backup\",le=\"0.001\"} 0\n\
switchyard_request_duration_seconds_bucket{route=\"payments\",provider=\"backup\",le=\"0.0025\"} 0\n\
switchyard_request_duration_seconds_bucket{route=\"payments\",provider=\"backup\",le=\"0.005\"} 0\n\
switchyard_request_duration_seconds_bucket{route=\"payments\",provider=\"backup\",le=\"+Inf\"} 10\n\
switchyard_request_duration_seconds_bucket{route=\"payments\",provider=\"none\",le=\"5\"} 0\n\
switchyard_request_duration_seconds_bucket{route=\"payments\",provider=\"none\",le=\"+Inf\"} 3\n\
switchyard_request_duration_seconds_bucket{route=\"other\",provider=\"primary\",le=\"+Inf\"} 999\n\
switchyard_request_duration_seconds_sum{route=\"payments\",provider=\"primary\"} 0.1\n";

    #[test]
    fn reads_the_sidecars_durations() {
        let (sent, own) = duration_buckets(METRICS, PAYMENTS_ROUTE);
        assert_eq!(
            sent,
            vec![
                (0.001, 90),
                (0.0025, 98),
                (0.005, 100),
                (f64::INFINITY, 110)
            ]
        );
        assert_eq!(own, vec![(5.0, 0), (f64::INFINITY, 3)]);
        assert_eq!(bucket_bound(&sent, 0.5), Some(0.001));
        assert_eq!(bucket_bound(&sent, 0.85), Some(0.0025));
        assert_eq!(bucket_bound(&sent, 0.99), Some(f64::INFINITY));
        assert_eq!(over(&sent, 0.0025), 12);
        assert_eq!(over(&sent, 0.003), 0, "not a bound");
        assert_eq!(over(&vec![(0.01, 7), (f64::INFINITY, 9)], 0.01), 2);
        assert_eq!(bucket_bound(&Vec::new(), 0.5), None);
        assert_eq!(
            bucket_bound(&vec![(0.001, 0), (f64::INFINITY, 0)], 0.5),
            None
        );

        // Between two scrapes: only what happened in between counts.
        let before = (
            vec![(0.001, 80), (0.0025, 80), (0.005, 80), (f64::INFINITY, 80)],
            vec![(5.0, 0), (f64::INFINITY, 1)],
        );
        let v = sidecar_view(&before, &(sent, own));
        assert_eq!(
            v,
            SidecarView {
                requests: 30,
                own_answers: 2,
                p50_le_ms: Some(2.5),
                p99_le_ms: None,
                // These buckets have no 10 ms bound.
                over_slow: 0,
            }
        );
        let quiet = sidecar_view(&before, &before);
        assert_eq!(quiet.requests, 0);
        assert_eq!(quiet.p99_le_ms, None);
    }

    #[test]
    fn splits_the_cpu() {
        let at = Instant::now();
        let mark = |secs: f64, cpu: [u64; 5]| Mark {
            at: at + Duration::from_secs_f64(secs),
            buckets: None,
            cpu: [
                CPU_SIDECAR,
                CPU_PRIMARY,
                CPU_LOADTEST,
                CPU_ABUSE,
                CPU_MACHINE,
            ]
            .iter()
            .zip(cpu)
            .map(|(n, ms)| (n.to_string(), Some(Duration::from_millis(ms))))
            .collect(),
        };
        let c = cpu_between(
            &mark(0.0, [0, 0, 0, 0, 0]),
            &mark(2.0, [400, 200, 1000, 600, 1800]),
        );
        assert_eq!(c[CPU_SIDECAR], 0.2);
        assert_eq!(c[CPU_PRIMARY], 0.1);
        assert_eq!(c[CPU_ABUSE], 0.3);
        // The process's 0.5 cores less its abuse thread's 0.3.
        assert_eq!(c[CPU_LOADTEST], 0.2);
        assert_eq!(c[CPU_MACHINE], 0.9);
        assert_eq!(c[CPU_OTHER], 0.1);
    }
}
