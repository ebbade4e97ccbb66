//! Issue 14's measurement: unknown outcomes resolve themselves, without the shop's retry.
//!
//! In `reset`, `brownout` and `outage` the shop never sends a key twice, so an operation whose
//! outcome became unknown during the fault can be settled only by the sidecar's own resolver (it
//! sends the kept request again, with the same key, to the provider the operation is pinned to, once
//! that provider is admitted again). The sidecars' admin API lists those operations
//! (`GET /admin/operations?state=unknown`); it is polled every 100 ms from the start of the measured
//! time until no listed operation is left that the resolver could still settle, or a bound after the
//! fault's end passes. An id that leaves the listing was resolved.
//!
//! [`Tracker`] is that bookkeeping, pure and fed with times, so tests drive it with literal listings;
//! [`watch`] polls; [`Tracker::figures`] turns it into the report's figures and the goal check:
//! every unknown operation whose provider answers on replay is resolved within [`GOAL_WITHIN_S`] of
//! the provider's recovery (the fault's end).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use http::Method;
use serde::{Deserialize, Serialize};

use crate::control::{self, Client};
use crate::{err, Result};

/// How often the listing is read.
pub const POLL_EVERY: Duration = Duration::from_millis(100);
/// The goal: resolved within this many seconds of the provider's recovery.
pub const GOAL_WITHIN_S: f64 = 5.0;
/// The admin API's listing of operations whose outcome is unknown.
pub const OPERATIONS_PATH: &str = "/admin/operations?state=unknown";
/// The counter of the resolver's results, by route, provider and result.
pub const RESOLUTIONS_TOTAL: &str = "switchyard_resolutions_total";
/// What an operation waits for when the resolver cannot send it again at all: its request was not
/// kept (card data in it, or lost with the sidecar that held it) or the shop's credential is gone.
/// Only the shop's retry or a webhook settles it, so the goal does not count it.
pub const NOT_SENDABLE: [&str; 3] = ["card_data", "request_lost", "shop_credential"];
/// What an operation waits for once the resolver stopped trying (the provider may have forgotten
/// its key).
pub const GAVE_UP: &str = "gave_up";

/// One operation of the listing.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Operation {
    /// `route/32 hex`: stable while the operation is listed.
    pub id: String,
    /// The route's name.
    #[serde(default)]
    pub route: String,
    /// The provider the operation is pinned to.
    #[serde(default)]
    pub provider: String,
    /// A digest of the shop's key (never the key).
    #[serde(default)]
    pub key_digest: String,
    /// Seconds since its outcome became unknown.
    #[serde(default)]
    pub age_seconds: Option<f64>,
    /// Times the resolver sent it again.
    #[serde(default)]
    pub resolver_attempts: u64,
    /// Seconds until the resolver's next try.
    #[serde(default)]
    pub next_try_in_seconds: Option<f64>,
    /// Whether the resolver can send it again (when absent: yes, so the goal counts it).
    #[serde(default = "yes")]
    pub resolvable: bool,
    /// What it waits for: `card_data`, `request_lost`, `shop_credential`, `gave_up`, `provider`, or
    /// nothing (its next try is scheduled).
    #[serde(default)]
    pub waiting_for: Option<String>,
}

fn yes() -> bool {
    true
}

impl Operation {
    /// Whether the resolver can send it again at all (else only the shop or a webhook settles it).
    pub fn sendable(&self) -> bool {
        self.resolvable
            && !self
                .waiting_for
                .as_deref()
                .is_some_and(|w| NOT_SENDABLE.contains(&w))
    }

    /// Whether the resolver may still settle it: sendable, and not given up.
    pub fn workable(&self) -> bool {
        self.sendable() && self.waiting_for.as_deref() != Some(GAVE_UP)
    }
}

/// One answer of `GET /admin/operations?state=unknown`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Listing {
    /// The operations listed (at most the sidecar's page size).
    pub operations: Vec<Operation>,
    /// How many there are in all: more than listed when the listing is cut.
    #[serde(default)]
    pub total: Option<u64>,
}

impl Listing {
    /// Whether every operation is listed (an id missing from a cut listing may just be past the cut).
    pub fn complete(&self) -> bool {
        self.total.is_none_or(|t| t <= self.operations.len() as u64)
    }
}

/// Reads the admin API's answer.
pub fn parse_listing(body: &str) -> Result<Listing> {
    serde_json::from_str(body).map_err(|e| err!("GET {OPERATIONS_PATH}: not a listing: {e}"))
}

/// The sum of `switchyard_resolutions_total{…result="resolved"…}` over every route and provider;
/// `None` when the exposition has no such family (a build without the resolver).
pub fn resolved_total(exposition: &str) -> Option<u64> {
    let mut family = false;
    let mut sum = 0.0;
    for line in exposition.lines() {
        if line.starts_with('#') {
            family |= line
                .split_whitespace()
                .nth(2)
                .is_some_and(|n| n == RESOLUTIONS_TOTAL);
            continue;
        }
        let Some(rest) = line.strip_prefix(RESOLUTIONS_TOTAL) else {
            continue;
        };
        let Some((labels, value)) = rest.strip_prefix('{').and_then(|r| r.split_once("} ")) else {
            continue;
        };
        family = true;
        let resolved = labels.split(',').any(|kv| {
            kv.split_once('=').is_some_and(|(k, v)| {
                k.trim() == "result" && v.trim().trim_matches('"') == "resolved"
            })
        });
        if resolved {
            sum += value.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    family.then_some(sum as u64)
}

/// What is known of one operation.
#[derive(Debug, Clone)]
struct Tracked {
    first_seen_s: f64,
    resolved_at_s: Option<f64>,
    sendable: bool,
    waiting_for: Option<String>,
}

/// The ids seen in the listings, when each first appeared and when it left.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    ops: BTreeMap<String, Tracked>,
    polls: u64,
    incomplete_polls: u64,
    peak_listed: u64,
    reappeared: u64,
}

impl Tracker {
    /// One poll, `at_s` seconds after the start of the measured time, of every sidecar: the union
    /// of the listings, and whether it is complete (every sidecar answered, no listing cut). Only a
    /// complete poll marks the ids missing from it as resolved; an id seen again after it left is
    /// unresolved again (and counted). Returns how many listed operations the resolver may still
    /// settle.
    pub fn observe(&mut self, at_s: f64, listed: &[Operation], complete: bool) -> usize {
        self.polls += 1;
        if !complete {
            self.incomplete_polls += 1;
        }
        self.peak_listed = self.peak_listed.max(listed.len() as u64);
        for op in listed {
            let t = self.ops.entry(op.id.clone()).or_insert(Tracked {
                first_seen_s: at_s,
                resolved_at_s: None,
                sendable: true,
                waiting_for: None,
            });
            if t.resolved_at_s.take().is_some() {
                self.reappeared += 1;
            }
            t.sendable = op.sendable();
            t.waiting_for = op.waiting_for.clone();
        }
        if complete {
            let here: std::collections::HashSet<&str> =
                listed.iter().map(|o| o.id.as_str()).collect();
            for (id, t) in &mut self.ops {
                if t.resolved_at_s.is_none() && !here.contains(id.as_str()) {
                    t.resolved_at_s = Some(at_s);
                }
            }
        }
        listed.iter().filter(|o| o.workable()).count()
    }

    /// The figures, with the fault's end at `fault_end_s` and the watch ended at `watched_until_s`
    /// (both in seconds after the start of the measured time).
    pub fn figures(&self, fault_end_s: f64, watched_until_s: f64, bound_s: f64) -> Figures {
        let mut f = Figures {
            watched: true,
            polls: self.polls,
            incomplete_polls: self.incomplete_polls,
            peak_listed: self.peak_listed,
            seen: self.ops.len() as u64,
            reappeared: self.reappeared,
            watched_s: round3(watched_until_s - fault_end_s),
            bound_s,
            ..Figures::default()
        };
        let mut times = Vec::new();
        for t in self.ops.values() {
            let before_end = t.first_seen_s <= fault_end_s;
            match t.resolved_at_s {
                Some(r) if before_end && r <= fault_end_s => {
                    f.resolved_during_fault += 1;
                    continue;
                }
                _ if before_end => f.unknown_at_fault_end += 1,
                _ => f.appeared_after_fault_end += 1,
            }
            match t.resolved_at_s {
                Some(r) => {
                    let after = (r - fault_end_s).max(0.0);
                    times.push(after);
                    f.goal_counted += 1;
                    if after <= GOAL_WITHIN_S {
                        f.goal_within += 1;
                    }
                }
                None => {
                    f.left += 1;
                    let reason = t.waiting_for.clone().unwrap_or_else(|| "next try".into());
                    *f.left_by_reason.entry(reason).or_default() += 1;
                    if t.sendable {
                        f.goal_counted += 1;
                    } else {
                        f.not_sendable += 1;
                    }
                }
            }
        }
        f.resolved = times.len() as u64;
        times.sort_by(f64::total_cmp);
        f.p50_s = nearest_rank(&times, 0.5).map(round3);
        f.max_s = times.last().copied().map(round3);
        f.goal_met = f.goal_within == f.goal_counted;
        f
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The nearest-rank percentile of sorted values.
fn nearest_rank(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied()
}

/// What became of the operations whose outcome was unknown (issue 14's "Measured").
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Figures {
    /// Whether the sidecars' listing was watched (see `why_not`).
    pub watched: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why_not: Option<String>,
    /// Polls made (every sidecar once each).
    pub polls: u64,
    /// Of those, polls in which a sidecar did not answer or cut its listing: they mark nothing
    /// resolved.
    pub incomplete_polls: u64,
    /// Most operations listed at once.
    pub peak_listed: u64,
    /// Distinct operations seen.
    pub seen: u64,
    /// Operations listed again after they had left the listing.
    pub reappeared: u64,
    /// Resolved before the fault ended (the provider answered some replays during it).
    pub resolved_during_fault: u64,
    /// Listed and not resolved when the fault ended (the provider recovered).
    pub unknown_at_fault_end: u64,
    /// First listed after the fault's end.
    pub appeared_after_fault_end: u64,
    /// Of the last two, resolved by the end of the watch.
    pub resolved: u64,
    /// Median time from the fault's end to the resolution, seconds.
    pub p50_s: Option<f64>,
    /// Longest, seconds.
    pub max_s: Option<f64>,
    /// Not resolved by the end of the watch.
    pub left: u64,
    /// Those by what they wait for (`next try` when nothing is named).
    pub left_by_reason: BTreeMap<String, u64>,
    /// Of those left, the ones the resolver cannot send again (not counted by the goal).
    pub not_sendable: u64,
    /// Operations the goal counts: unknown at the fault's end or after it, that the resolver can send.
    pub goal_counted: u64,
    /// Of those, resolved within [`GOAL_WITHIN_S`] of the fault's end.
    pub goal_within: u64,
    /// Whether all of them were.
    pub goal_met: bool,
    /// The watch ended this long after the fault's end, seconds.
    pub watched_s: f64,
    /// Its bound, seconds after the fault's end.
    pub bound_s: f64,
    /// `switchyard_resolutions_total{result="resolved"}` over the run, summed over the sidecars.
    pub metric_resolved: Option<u64>,
}

impl Figures {
    /// The figures of a run whose sidecars were not watched, and why.
    pub fn not_watched(why: String) -> Self {
        Self {
            why_not: Some(why),
            ..Self::default()
        }
    }
}

/// What and how long [`watch`] watches.
#[derive(Debug, Clone)]
pub struct Watch {
    /// The sidecars' admin APIs, `http://host:port`.
    pub admins: Vec<String>,
    /// The start of the measured time: times are counted from it.
    pub t0: Instant,
    /// From here on (the end of the load), the watch ends once no listed operation is workable.
    pub settle_from: Instant,
    /// The watch ends here whatever is listed (the fault's end plus the bound).
    pub deadline: Instant,
}

/// What a watch saw.
#[derive(Debug, Clone)]
pub struct Watched {
    /// The bookkeeping.
    pub tracker: Tracker,
    /// When it ended, seconds after `t0`.
    pub until_s: f64,
    /// The last error of a poll, if any poll failed.
    pub last_error: Option<String>,
}

/// Polls the sidecars' listings every [`POLL_EVERY`] until no operation the resolver may settle is
/// listed after `settle_from`, or until `deadline`. An error when a sidecar has no such listing
/// (404: a build without the resolver).
pub async fn watch(client: &Client, w: &Watch) -> Result<Watched> {
    let mut tracker = Tracker::default();
    let mut last_error = None;
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut listed: Vec<Operation> = Vec::new();
        let mut complete = true;
        for admin in &w.admins {
            let url = format!("{}{OPERATIONS_PATH}", admin.trim_end_matches('/'));
            match control::call(client, Method::GET, &url, None).await {
                Ok((200, body)) => match parse_listing(&body) {
                    Ok(listing) => {
                        complete &= listing.complete();
                        for op in listing.operations {
                            if !listed.iter().any(|o| o.id == op.id) {
                                listed.push(op);
                            }
                        }
                    }
                    Err(e) => {
                        complete = false;
                        last_error = Some(e.to_string());
                    }
                },
                Ok((404, _)) => {
                    return Err(err!(
                        "GET {url}: 404: this switchyard build does not list unknown operations"
                    ))
                }
                Ok((status, body)) => {
                    complete = false;
                    last_error = Some(format!("GET {url}: status {status}: {body}"));
                }
                Err(e) => {
                    complete = false;
                    last_error = Some(e.to_string());
                }
            }
        }
        let now = Instant::now();
        let at_s = now.saturating_duration_since(w.t0).as_secs_f64();
        let workable = tracker.observe(at_s, &listed, complete);
        if now >= w.deadline || (now >= w.settle_from && complete && workable == 0) {
            return Ok(Watched {
                tracker,
                until_s: at_s,
                last_error,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The admin API's answer as the issue describes it.
    const SAMPLE: &str = r#"{"operations":[
        {"id":"payments/0123456789abcdef0123456789abcdef","route":"payments","provider":"primary",
         "key_digest":"0123456789abcdef","age_seconds":12.3,"resolver_attempts":2,
         "next_try_in_seconds":3.1,"resolvable":true,"waiting_for":null},
        {"id":"payments/fedcba9876543210fedcba9876543210","route":"payments","provider":"primary",
         "key_digest":"fedcba9876543210","age_seconds":null,"resolver_attempts":0,
         "next_try_in_seconds":null,"resolvable":false,"waiting_for":"card_data"}
        ], "total": 2}"#;

    fn op(id: &str, waiting_for: Option<&str>) -> Operation {
        Operation {
            id: id.into(),
            route: "payments".into(),
            provider: "primary".into(),
            key_digest: String::new(),
            age_seconds: None,
            resolver_attempts: 0,
            next_try_in_seconds: None,
            resolvable: !waiting_for.is_some_and(|w| NOT_SENDABLE.contains(&w)),
            waiting_for: waiting_for.map(str::to_owned),
        }
    }

    #[test]
    fn parses_the_listing() {
        let l = parse_listing(SAMPLE).unwrap();
        assert_eq!(l.total, Some(2));
        assert!(l.complete());
        let a = &l.operations[0];
        assert_eq!(a.id, "payments/0123456789abcdef0123456789abcdef");
        assert_eq!(a.provider, "primary");
        assert_eq!(a.age_seconds, Some(12.3));
        assert_eq!(a.resolver_attempts, 2);
        assert_eq!(a.next_try_in_seconds, Some(3.1));
        assert!(a.sendable() && a.workable());
        let b = &l.operations[1];
        assert_eq!(b.waiting_for.as_deref(), Some("card_data"));
        assert_eq!((b.age_seconds, b.next_try_in_seconds), (None, None));
        assert!(!b.sendable() && !b.workable());
        let gave_up = op("x", Some("gave_up"));
        assert!(gave_up.sendable() && !gave_up.workable());
        let bare = parse_listing(r#"{"operations":[{"id":"payments/x"}]}"#).unwrap();
        assert!(bare.complete() && bare.operations[0].workable());
        let cut = parse_listing(r#"{"operations":[], "total": 5}"#).unwrap();
        assert!(!cut.complete());
        assert!(parse_listing(r#"{"ops":[]}"#).is_err());
        assert!(parse_listing("not json").is_err());
    }

    #[test]
    fn sums_resolutions_from_the_exposition() {
        let text = "# HELP switchyard_resolutions_total r\n# TYPE switchyard_resolutions_total counter\nswitchyard_resolutions_total{route=\"payments\",provider=\"a\",result=\"resolved\"} 7\nswitchyard_resolutions_total{route=\"payments\",provider=\"b\",result=\"resolved\"} 2\nswitchyard_resolutions_total{route=\"payments\",provider=\"a\",result=\"still_unknown\"} 4\nswitchyard_resolutions_total_x{result=\"resolved\"} 100\n";
        assert_eq!(resolved_total(text), Some(9));
        assert_eq!(
            resolved_total("# TYPE switchyard_resolutions_total counter\n"),
            Some(0)
        );
        assert_eq!(resolved_total("switchyard_requests_total 3\n"), None);
    }

    #[test]
    fn ids_that_leave_the_listing_are_resolved() {
        let mut t = Tracker::default();
        // The fault runs to 10 s. `a` is resolved during it; `b`, `c`, `d` are unknown at its end;
        // `e` appears after it; `f` has card data; `c` stays listed.
        assert_eq!(t.observe(6.0, &[op("a", None), op("b", None)], true), 2);
        assert_eq!(
            t.observe(
                9.0,
                &[
                    op("b", None),
                    op("c", None),
                    op("d", None),
                    op("f", Some("card_data"))
                ],
                true
            ),
            3
        );
        // A cut listing marks nothing resolved: `d` is missing from it, not gone.
        t.observe(
            10.5,
            &[op("b", None), op("c", None), op("f", Some("card_data"))],
            false,
        );
        t.observe(
            11.0,
            &[
                op("c", None),
                op("d", None),
                op("e", None),
                op("f", Some("card_data")),
            ],
            true,
        );
        t.observe(
            14.0,
            &[op("c", Some("provider")), op("f", Some("card_data"))],
            true,
        );
        let f = t.figures(10.0, 14.0, 30.0);
        assert_eq!(f.seen, 6);
        assert_eq!(f.polls, 5);
        assert_eq!(f.incomplete_polls, 1);
        assert_eq!(f.peak_listed, 4);
        assert_eq!(f.resolved_during_fault, 1, "{f:?}");
        assert_eq!(f.unknown_at_fault_end, 4, "b, c, d, f: {f:?}");
        assert_eq!(f.appeared_after_fault_end, 1);
        // b left at 11 s (1 s after the fault's end), d and e at 14 s (4 s).
        assert_eq!(f.resolved, 3);
        assert_eq!(f.p50_s, Some(4.0));
        assert_eq!(f.max_s, Some(4.0));
        assert_eq!(f.left, 2);
        assert_eq!(f.left_by_reason.get("provider"), Some(&1));
        assert_eq!(f.left_by_reason.get("card_data"), Some(&1));
        assert_eq!(f.not_sendable, 1);
        // b, d, e resolved within 5 s; c still listed: 3 of 4, not met.
        assert_eq!((f.goal_within, f.goal_counted), (3, 4));
        assert!(!f.goal_met);
        assert_eq!(f.watched_s, 4.0);

        // Once c leaves, the goal is met even with f left: the resolver cannot send it.
        t.observe(14.5, &[op("f", Some("card_data"))], true);
        let f = t.figures(10.0, 14.5, 30.0);
        assert_eq!((f.goal_within, f.goal_counted), (4, 4));
        assert!(f.goal_met);
        assert_eq!(f.max_s, Some(4.5));
        assert_eq!(f.p50_s, Some(4.0));

        // Later than 5 s after the fault's end is not within the goal.
        let mut late = Tracker::default();
        late.observe(9.0, &[op("x", None), op("y", None)], true);
        late.observe(12.0, &[op("y", None)], true);
        late.observe(15.5, &[], true);
        let f = late.figures(10.0, 15.5, 30.0);
        assert_eq!(f.p50_s, Some(2.0));
        assert_eq!(f.max_s, Some(5.5));
        assert_eq!((f.goal_within, f.goal_counted), (1, 2));
        assert!(!f.goal_met);
    }

    /// A scripted admin API on 127.0.0.1 port 0: the n-th request gets `answers[n]` (the last one
    /// from then on), each on a connection of its own.
    async fn admin(answers: Vec<(u16, &'static str)>) -> (String, tokio::task::JoinHandle<()>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut n = 0;
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => seen.extend_from_slice(&buf[..k]),
                    }
                }
                assert!(
                    seen.starts_with(b"GET /admin/operations?state=unknown "),
                    "{}",
                    String::from_utf8_lossy(&seen)
                );
                let (status, body) = answers[n.min(answers.len() - 1)];
                n += 1;
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
                let _ = conn.shutdown().await;
            }
        });
        (format!("http://{addr}"), server)
    }

    #[tokio::test]
    async fn watches_until_nothing_is_left_to_resolve() {
        let (url, server) = admin(vec![
            (200, r#"{"operations":[{"id":"payments/a","resolvable":true},{"id":"payments/b","resolvable":true}],"total":2}"#),
            (503, "busy"),
            (200, r#"{"operations":[{"id":"payments/b","resolvable":true}],"total":1}"#),
            (200, r#"{"operations":[{"id":"payments/c","resolvable":false,"waiting_for":"card_data"}],"total":1}"#),
        ])
        .await;
        let now = Instant::now();
        let w = Watch {
            admins: vec![url],
            t0: now,
            settle_from: now,
            deadline: now + Duration::from_secs(20),
        };
        let watched = watch(&control::client(2), &w).await.unwrap();
        server.abort();
        // Ends at the fourth poll: only an operation the resolver cannot send is left.
        let f = watched.tracker.figures(0.0, watched.until_s, 20.0);
        assert_eq!(f.polls, 4, "{f:?}");
        assert_eq!(f.incomplete_polls, 1);
        assert!(watched.last_error.is_some_and(|e| e.contains("503")));
        assert_eq!(
            (f.seen, f.resolved, f.left, f.not_sendable),
            (3, 2, 1, 1),
            "{f:?}"
        );
        assert!(f.goal_met, "{f:?}");
    }

    #[tokio::test]
    async fn a_build_without_the_listing_is_said() {
        let (url, server) = admin(vec![(404, "")]).await;
        let now = Instant::now();
        let w = Watch {
            admins: vec![url],
            t0: now,
            settle_from: now,
            deadline: now + Duration::from_secs(20),
        };
        let e = watch(&control::client(2), &w).await.unwrap_err();
        server.abort();
        assert!(e.0.contains("does not list unknown operations"), "{e}");
    }

    #[test]
    fn an_id_listed_again_is_unresolved_again() {
        let mut t = Tracker::default();
        t.observe(9.0, &[op("x", None)], true);
        t.observe(10.5, &[], true);
        t.observe(11.0, &[op("x", None)], true);
        let f = t.figures(10.0, 11.0, 30.0);
        assert_eq!(f.reappeared, 1);
        assert_eq!((f.resolved, f.left), (0, 1));
        assert!(!f.goal_met);
        let empty = Tracker::default().figures(10.0, 10.1, 30.0);
        assert!(empty.goal_met && empty.goal_counted == 0);
        assert_eq!(empty.p50_s, None);
    }
}
