//! From the samples and the providers' counters to the figures of a run: percentiles, failures by kind,
//! charges, recovery and fail-back times, the per-second timeline of the chart.

use std::collections::{BTreeMap, HashMap, HashSet};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::load::{Class, Sample, Via};

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

pub(crate) fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min at 3 significant digits; values past it are clamped, not dropped.
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits is valid"))
    })
}

fn latency(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Latency {
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
        mean_ms: (h.mean()).round() / 1000.0,
    }
}

/// Counts in one phase of the run.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    /// Requests.
    pub requests: u64,
    /// 2xx answers.
    pub ok: u64,
    /// Failures (shop-visible).
    pub failed: u64,
    /// 409s to re-sent keys still in flight.
    pub key_in_flight: u64,
}

/// One second (or bucket) of the timeline.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Bucket {
    /// Start, seconds after the start of the run.
    pub t_s: f64,
    /// Requests intended in it.
    pub requests: u64,
    /// Successes / (successes + failures), in percent (100 when empty).
    pub success_pct: f64,
    /// 99th-percentile latency, ms.
    pub p99_ms: f64,
    /// Share of answers from the primary, percent.
    pub primary_pct: f64,
    /// Share of answers from the backup, percent.
    pub backup_pct: f64,
}

/// Everything the shop saw in a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Shop {
    /// Requests sent.
    pub requests: u64,
    /// Requests per second achieved (requests over the measured time).
    pub achieved_rps: f64,
    /// Latency from the intended send time to the end of the answer.
    pub latency: Latency,
    /// 99th percentile of how late requests actually left (the generator's own lag plus waiting for
    /// an in-flight slot), ms.
    pub send_lag_p99_ms: f64,
    /// All counts, and per phase (before, during, after the fault).
    pub total: Counts,
    /// Before the fault.
    pub before_fault: Counts,
    /// During the fault.
    pub during_fault: Counts,
    /// After the fault.
    pub after_fault: Counts,
    /// Shop-visible failures by kind.
    pub failures_by_kind: BTreeMap<String, u64>,
    /// Answers marked `x-switchyard-outcome: unknown`, plus requests that got no answer after they
    /// may have left.
    pub unknown_outcomes: u64,
    /// Keys whose payment got an unknown outcome and never a 2xx: the shop does not know whether the
    /// customer paid.
    pub keys_left_unknown: u64,
    /// Sends that were the shop's retries of a failed payment (scenarios where the shop retries).
    pub shop_retries: u64,
    /// Answers per provider (`primary`, `backup`, `unknown`).
    pub answers_by_provider: BTreeMap<String, u64>,
    /// Seconds from the fault's start until success stays at ≥ 99 % (per 100 ms) for the rest of the
    /// fault window: 0 when it never dropped, `None` when it did not recover within the window.
    pub time_to_99pct_s: Option<f64>,
    /// Seconds from the fault's end until ≥ 90 % of answers come from the primary in every later
    /// 100 ms; `None` when traffic never left the primary or had not come back by the end.
    pub time_to_fail_back_s: Option<f64>,
    /// Whether traffic moved off the primary during the fault (below 50 % in some 100 ms).
    pub left_primary: bool,
    /// Width of a timeline bucket: 1 s, finer for runs shorter than 10 s.
    pub timeline_bucket_s: f64,
    /// Per second (per bucket).
    pub timeline: Vec<Bucket>,
}

fn via_name(v: Via) -> &'static str {
    match v {
        Via::Primary => "primary",
        Via::Backup => "backup",
        Via::Unknown => "unknown",
    }
}

fn count(c: &mut Counts, s: &Sample) {
    c.requests += 1;
    match s.class {
        Class::Ok => c.ok += 1,
        Class::Failed => c.failed += 1,
        Class::KeyInFlight => c.key_in_flight += 1,
    }
}

fn buckets(samples: &[Sample], width_s: f64, duration_s: f64) -> Vec<Bucket> {
    let width_us = ((width_s * 1e6).round() as u64).max(1);
    let n = ((duration_s / width_s - 1e-9).ceil() as usize).max(1);
    let mut hist: Vec<Histogram<u64>> = (0..n).map(|_| histogram()).collect();
    let mut counts = vec![Counts::default(); n];
    let mut via = vec![[0u64; 3]; n];
    for s in samples {
        let i = ((s.intended_us / width_us) as usize).min(n - 1);
        hist[i].saturating_record(s.latency_us.max(1));
        count(&mut counts[i], s);
        via[i][match s.via {
            Via::Primary => 0,
            Via::Backup => 1,
            Via::Unknown => 2,
        }] += 1;
    }
    (0..n)
        .map(|i| {
            let c = &counts[i];
            let judged = c.ok + c.failed;
            let answered = via[i][0] + via[i][1];
            let pct = |x: u64, of: u64| {
                if of == 0 {
                    0.0
                } else {
                    x as f64 * 100.0 / of as f64
                }
            };
            Bucket {
                t_s: i as f64 * width_s,
                requests: c.requests,
                success_pct: if judged == 0 {
                    100.0
                } else {
                    pct(c.ok, judged)
                },
                p99_ms: if hist[i].is_empty() {
                    0.0
                } else {
                    hist[i].value_at_quantile(0.99) as f64 / 1000.0
                },
                primary_pct: pct(via[i][0], answered),
                backup_pct: pct(via[i][1], answered),
            }
        })
        .collect()
}

/// Summarises what the shop saw. `fault` is the fault window in seconds after the start, if any.
pub fn shop(samples: &[Sample], duration_s: f64, fault: Option<(f64, f64)>) -> Shop {
    let mut out = Shop {
        requests: samples.len() as u64,
        achieved_rps: samples.len() as f64 / duration_s.max(1e-9),
        ..Shop::default()
    };
    let mut all = histogram();
    let mut lag = histogram();
    for s in samples {
        all.saturating_record(s.latency_us.max(1));
        lag.saturating_record(s.lag_us.max(1));
        count(&mut out.total, s);
        let t = s.intended_us as f64 / 1e6;
        let phase = match fault {
            Some((start, _)) if t < start => &mut out.before_fault,
            Some((_, end)) if t < end => &mut out.during_fault,
            Some(_) => &mut out.after_fault,
            None => &mut out.before_fault,
        };
        count(phase, s);
        if let Some(kind) = &s.kind {
            *out.failures_by_kind.entry(kind.clone()).or_default() += 1;
        }
        if s.unknown {
            out.unknown_outcomes += 1;
        }
        *out.answers_by_provider
            .entry(via_name(s.via).to_owned())
            .or_default() += 1;
    }
    out.shop_retries = samples.iter().filter(|s| s.attempt > 0).count() as u64;
    let succeeded: HashSet<u64> = samples
        .iter()
        .filter(|s| s.class == Class::Ok)
        .map(|s| s.key)
        .collect();
    let left_unknown: HashSet<u64> = samples
        .iter()
        .filter(|s| s.unknown && !succeeded.contains(&s.key))
        .map(|s| s.key)
        .collect();
    out.keys_left_unknown = left_unknown.len() as u64;
    out.latency = latency(&all);
    out.send_lag_p99_ms = if lag.is_empty() {
        0.0
    } else {
        lag.value_at_quantile(0.99) as f64 / 1000.0
    };
    out.timeline_bucket_s = timeline_bucket_s(duration_s);
    out.timeline = buckets(samples, out.timeline_bucket_s, duration_s);
    if let Some((start, end)) = fault {
        let fine = buckets(samples, 0.1, duration_s);
        out.time_to_99pct_s = recovery(&fine, start, end);
        let (left, back) = fail_back(&fine, start, end);
        out.left_primary = left;
        out.time_to_fail_back_s = back;
    }
    out
}

/// The timeline's bucket width for a run of `duration_s`: per second, or per 200 ms for short runs.
pub fn timeline_bucket_s(duration_s: f64) -> f64 {
    if duration_s >= 10.0 {
        1.0
    } else {
        0.2
    }
}

/// Seconds from `start` until every later 100 ms bucket that ends within the fault window is at
/// ≥ 99 % success; `None` when the last one is not.
pub fn recovery(fine: &[Bucket], start: f64, end: f64) -> Option<f64> {
    let in_window: Vec<&Bucket> = fine
        .iter()
        .filter(|b| b.t_s + 0.1 > start && b.t_s + 0.1 <= end + 1e-6 && b.requests > 0)
        .collect();
    let last_bad = in_window.iter().rposition(|b| b.success_pct < 99.0);
    match last_bad {
        None => Some(0.0),
        Some(i) if i + 1 == in_window.len() => None,
        Some(i) => Some(((in_window[i].t_s + 0.1 - start).max(0.0) * 1000.0).round() / 1000.0),
    }
}

/// Whether traffic left the primary during the fault, and seconds after its end until ≥ 90 % of
/// answers come from the primary in every later bucket (`None`: not by the end of the run).
pub fn fail_back(fine: &[Bucket], start: f64, end: f64) -> (bool, Option<f64>) {
    let answered = |b: &&Bucket| b.primary_pct + b.backup_pct > 0.0;
    let left = fine
        .iter()
        .filter(answered)
        .any(|b| b.t_s + 0.1 > start && b.t_s < end && b.primary_pct < 50.0);
    if !left {
        return (false, None);
    }
    let after: Vec<&Bucket> = fine
        .iter()
        .filter(answered)
        .filter(|b| b.t_s >= end - 1e-9)
        .collect();
    let back = match after.iter().rposition(|b| b.primary_pct < 90.0) {
        None => after.first().map(|b| b.t_s),
        Some(i) => after.get(i + 1).map(|b| b.t_s),
    }
    .map(|t| ((t - end).max(0.0) * 1000.0).round() / 1000.0);
    (true, back)
}

/// What the providers charged, from their own counters.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Charges {
    /// Payments the primary created in the run.
    pub primary: u64,
    /// Payments the backup created in the run.
    pub backup: u64,
    /// Keys charged more than once by one provider.
    pub keys_charged_twice_on_one: u64,
    /// Keys charged by both providers.
    pub keys_charged_on_both: u64,
    /// Keys charged somewhere although no request with that key got a 2xx: the shop thinks the
    /// payment failed (or does not know), the customer paid.
    pub charged_without_success: u64,
    /// Keys charged somewhere for which the shop got a failure not marked
    /// `x-switchyard-outcome: unknown`: the shop was told the payment failed, and the customer
    /// paid. Must be 0.
    pub charged_failed_not_unknown: u64,
}

/// Counts double charges from the providers' per-key counters. Keys not of this run (without
/// `prefix`) are ignored.
pub fn charges(
    primary: &BTreeMap<String, u64>,
    backup: &BTreeMap<String, u64>,
    prefix: &str,
    samples: &[Sample],
) -> Charges {
    let ours = |m: &BTreeMap<String, u64>| -> HashMap<u64, u64> {
        m.iter()
            .filter_map(|(k, n)| Some((k.strip_prefix(prefix)?.parse::<u64>().ok()?, *n)))
            .collect()
    };
    let (p, b) = (ours(primary), ours(backup));
    let succeeded: HashSet<u64> = samples
        .iter()
        .filter(|s| s.class == Class::Ok)
        .map(|s| s.key)
        .collect();
    let charged: HashSet<u64> = p.keys().chain(b.keys()).copied().collect();
    let failed_known: HashSet<u64> = samples
        .iter()
        .filter(|s| s.class == Class::Failed && !s.unknown)
        .map(|s| s.key)
        .collect();
    Charges {
        primary: p.values().sum(),
        backup: b.values().sum(),
        keys_charged_twice_on_one: charged
            .iter()
            .filter(|k| p.get(k).copied().unwrap_or(0) > 1 || b.get(k).copied().unwrap_or(0) > 1)
            .count() as u64,
        keys_charged_on_both: p.keys().filter(|k| b.contains_key(k)).count() as u64,
        charged_without_success: charged.iter().filter(|k| !succeeded.contains(k)).count() as u64,
        charged_failed_not_unknown: charged.iter().filter(|k| failed_known.contains(k)).count()
            as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_ms: u64, ok: bool, via: Via, key: u64) -> Sample {
        Sample {
            slot: key,
            key,
            duplicate: false,
            intended_us: t_ms * 1000,
            latency_us: 1000 + t_ms,
            lag_us: 10,
            status: if ok { 200 } else { 502 },
            class: if ok { Class::Ok } else { Class::Failed },
            kind: (!ok).then(|| "provider_unreachable".to_owned()),
            via,
            unknown: false,
            sidecar: 0,
            attempt: 0,
        }
    }

    #[test]
    fn recovery_and_fail_back() {
        // 3 s at 100 rps; fault 1–2 s: failures for 300 ms, backup until 2.5 s.
        let mut samples = Vec::new();
        for i in 0..300u64 {
            let t = i * 10;
            let failing = (1000..1300).contains(&t);
            let via = if (1000..2500).contains(&t) {
                Via::Backup
            } else {
                Via::Primary
            };
            samples.push(sample(t, !failing, via, i));
        }
        let s = shop(&samples, 3.0, Some((1.0, 2.0)));
        assert_eq!(s.requests, 300);
        assert_eq!(s.total.failed, 30);
        assert_eq!(s.during_fault.failed, 30);
        assert_eq!(s.failures_by_kind["provider_unreachable"], 30);
        assert_eq!(s.time_to_99pct_s, Some(0.3));
        assert!(s.left_primary);
        assert_eq!(s.time_to_fail_back_s, Some(0.5));
        assert_eq!(s.timeline_bucket_s, 0.2);
        assert_eq!(s.timeline.len(), 15);
        assert_eq!(s.timeline[5].success_pct, 0.0);
        assert!((s.timeline[6].success_pct - 50.0).abs() < 1e-9);
        assert!(s.latency.p50_ms > 1.0);
    }

    #[test]
    fn keys_left_unknown_and_shop_retries() {
        let mut samples = vec![
            sample(0, false, Via::Primary, 1),
            sample(10, true, Via::Primary, 1),
            sample(20, false, Via::Primary, 2),
            sample(30, false, Via::Backup, 2),
            sample(40, false, Via::Primary, 3),
        ];
        // Key 1: unknown, then a 2xx on the retry. Key 2: unknown twice. Key 3: failed, known.
        for i in [0, 2, 3] {
            samples[i].unknown = true;
        }
        for i in [1, 3] {
            samples[i].attempt = 1;
        }
        let s = shop(&samples, 1.0, None);
        assert_eq!(s.keys_left_unknown, 1);
        assert_eq!(s.shop_retries, 2);
        assert_eq!(s.unknown_outcomes, 3);
    }

    #[test]
    fn never_recovered_and_never_left() {
        let samples: Vec<Sample> = (0..300u64)
            .map(|i| sample(i * 10, !(1000..2000).contains(&(i * 10)), Via::Primary, i))
            .collect();
        let s = shop(&samples, 3.0, Some((1.0, 2.0)));
        assert_eq!(s.time_to_99pct_s, None);
        assert!(!s.left_primary);
        assert_eq!(s.time_to_fail_back_s, None);
    }

    #[test]
    fn fail_back_is_for_good() {
        let bucket = |t_s: f64, primary_pct: f64| Bucket {
            t_s,
            requests: 10,
            success_pct: 100.0,
            p99_ms: 1.0,
            primary_pct,
            backup_pct: 100.0 - primary_pct,
        };
        // Back on the primary at 2.0, off again at 2.1–2.4, back for good at 2.5.
        let fine: Vec<Bucket> = (0..30)
            .map(|i| {
                let t = i as f64 / 10.0;
                let on_primary = !(1.0..2.0).contains(&t) && !(2.05..2.45).contains(&t);
                bucket(t, if on_primary { 100.0 } else { 0.0 })
            })
            .collect();
        assert_eq!(fail_back(&fine, 1.0, 2.0), (true, Some(0.5)));
        let never: Vec<Bucket> = (0..30)
            .map(|i| bucket(i as f64 / 10.0, if i < 10 { 100.0 } else { 0.0 }))
            .collect();
        assert_eq!(fail_back(&never, 1.0, 2.0), (true, None));
    }

    #[test]
    fn counts_double_charges() {
        let p: BTreeMap<String, u64> = [
            ("lt1-1", 1),
            ("lt1-2", 2),
            ("lt1-3", 1),
            ("lt1-5", 1),
            ("other", 5),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let b: BTreeMap<String, u64> = [("lt1-3", 1), ("lt1-4", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let mut samples = vec![
            sample(0, true, Via::Primary, 1),
            sample(0, true, Via::Primary, 2),
            sample(0, true, Via::Primary, 3),
            sample(0, false, Via::Backup, 4),
            sample(0, false, Via::Primary, 5),
            sample(0, false, Via::Primary, 6),
        ];
        // Key 4 was charged and its failure said nothing of an unknown outcome; key 5 failed
        // as unknown; key 6 failed and was not charged.
        samples[4].unknown = true;
        let c = charges(&p, &b, "lt1-", &samples);
        assert_eq!(
            c,
            Charges {
                primary: 5,
                backup: 2,
                keys_charged_twice_on_one: 1,
                keys_charged_on_both: 1,
                charged_without_success: 2,
                charged_failed_not_unknown: 1,
            }
        );
    }
}
