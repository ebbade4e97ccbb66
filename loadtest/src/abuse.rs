//! The `abuse` scenario: hostile clients beside the shop's payments, and issue 17's goals measured.
//!
//! While payments run at the usual rate, the middle third of the measured time brings three kinds of
//! abuse at once, each from its own sockets on a thread of its own (so the payment generator's timing
//! is not the abuse's):
//! - a **webhook flood**: a few clients post to the sidecar's webhook listener as fast as they go,
//!   one connection per event: unsigned events, events with a wrong signature, events one byte under
//!   `max_body` with a wrong signature (read in full, then refused), and events over `max_body`;
//! - **idle HTTP/2 connections** on the shop listener: half send the h2c preface and an empty SETTINGS
//!   frame, then nothing; half send a partial preface;
//! - **slow uploads**: payments whose declared body is just under the route's `max_body`, sent a few
//!   bytes per second.
//!
//! The sidecar's resident size is sampled every 100 ms from `/proc`, and the payments' latency and
//! failures are split into the quiet phase, the abuse window and the time after it. [`Figures`] holds
//! them with the verdicts against the goals: p99 during ≤ 2× quiet, no failed payment, peak RSS ≤
//! `max_buffered_bytes` + 32 MiB, RSS 10 s after the abuse within 10 % of the quiet RSS, and within
//! 10 % of what a run without abuse would have by then (the control).
//!
//! A client-measured p99 says how late the answers were, not where the time went: on one machine
//! the sidecar, the provider sandbox, the load generator and the attackers share the same cores. So
//! each phase also carries the sidecar's own view of the payments (the delta of its
//! `switchyard_request_duration_seconds` histogram between scrapes at the phase's edges), how late
//! the generator sent them, and the CPU each process used. Real attackers run on other machines: the
//! abuse thread lowers its own scheduling priority (`--abuse-nice`), so its CPU stops competing with
//! the sidecar's while the sidecar's work answering it still counts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::analysis::{histogram, Latency};
use crate::attribution::{cpu_between, sidecar_view, Mark, SidecarView, SLOW_MS};
use crate::load::{Class, Sample};
use crate::procfs;

/// The webhook's path on its own listener.
pub const WEBHOOK_PATH: &str = "/webhooks/abuse";
/// The webhook's `max_body` (written into the config).
pub const WEBHOOK_MAX_BODY: usize = 1 << 20;
/// The route's `max_body` in the generated config (64 KiB); a slow upload declares one byte less.
pub const ROUTE_MAX_BODY: usize = 64 << 10;
/// Bytes a slow upload sends every [`SLOW_EVERY`].
pub const SLOW_CHUNK: usize = 4;
/// How often a slow upload sends [`SLOW_CHUNK`] bytes.
pub const SLOW_EVERY: Duration = Duration::from_millis(500);
/// Events one webhook client sends at most (the window bounds it first, normally).
pub const WEBHOOK_MAX_EVENTS: u64 = 1_000_000;
/// RSS sampling period.
pub const RSS_EVERY: Duration = Duration::from_millis(100);
/// When the "after" RSS is read: this long after the abuse ends.
pub const RSS_AFTER: Duration = Duration::from_secs(10);
/// Slack of the peak RSS goal over `max_buffered_bytes`, MiB.
pub const RSS_SLACK_MIB: f64 = 32.0;
/// Descriptors the loadtest keeps for itself besides the abuse's sockets.
pub const FD_HEADROOM: u64 = 512;

/// How much abuse, and where.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Idle HTTP/2 connections to open (half with a full preface, half with a partial one).
    pub idle_h2: usize,
    /// Slow uploads.
    pub slow_uploads: usize,
    /// Concurrent webhook flood clients.
    pub webhook_clients: usize,
    /// `limits.max_buffered_bytes` of the sidecar, MiB.
    pub max_buffered_mib: u64,
    /// `limits.max_connections` of the sidecar.
    pub max_connections: usize,
    /// The nice value the abuse thread gives itself (0: left as it is).
    pub nice: i32,
}

impl Spec {
    /// The top-level lines the scenario adds to switchyard's config: the limits, and a Stripe webhook
    /// on a listener of its own (port picked by the system) whose secret is in `secret_file`, and
    /// whose events would go to `forward_to` (none does: none is signed right).
    pub fn config_lines(
        &self,
        secret_file: &std::path::Path,
        forward_to: SocketAddr,
    ) -> Vec<String> {
        vec![
            format!(
                "limits: {{ max_connections: {}, max_buffered_bytes: {}MiB }}",
                self.max_connections, self.max_buffered_mib
            ),
            format!(
                "webhooks: [{{ name: abuse, path: {WEBHOOK_PATH}, listen: \"127.0.0.1:0\", forward_to: \"http://{forward_to}/webhook\", max_body: {WEBHOOK_MAX_BODY}, verify: {{ scheme: stripe, secrets_file: [\"{}\"] }} }}]",
                secret_file.display()
            ),
        ]
    }

    /// The idle connections actually opened: at most what the sidecar's `max_connections` leaves
    /// after the slow uploads, the flood and 256 for the payments, and at most what the loadtest's
    /// own open-file limit `fd_limit` allows.
    pub fn idle_bounded(&self, fd_limit: Option<u64>) -> usize {
        let by_sidecar = self
            .max_connections
            .saturating_sub(self.slow_uploads + self.webhook_clients + 256);
        let by_fds = fd_limit.map_or(usize::MAX, |l| {
            l.saturating_sub(FD_HEADROOM + (self.slow_uploads + self.webhook_clients) as u64)
                as usize
        });
        self.idle_h2.min(by_sidecar).min(by_fds)
    }
}

/// Raises this process's soft open-file limit to its hard limit; returns the limit now in force
/// (`None`: unlimited).
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    if current < maximum || (current.is_some() && maximum.is_none()) {
        let raised = Rlimit {
            current: maximum,
            maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return maximum;
        }
    }
    current
}

/// Lowers the calling thread's scheduling priority to nice value `nice` (0: nothing to do), and
/// returns the nice value it runs at. On Linux nice is per thread, and
/// `setpriority(PRIO_PROCESS, gettid())` changes this thread's alone, not the load generator's.
pub fn lower_priority(nice: i32) -> Result<i32, String> {
    use rustix::process::{getpriority_process, setpriority_process};
    let tid = rustix::thread::gettid();
    if nice != 0 {
        setpriority_process(Some(tid), nice).map_err(|e| format!("setpriority({nice}): {e}"))?;
    }
    getpriority_process(Some(tid)).map_err(|e| format!("getpriority: {e}"))
}

/// What the abusive clients did and what they got.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Clients {
    /// The nice value the abuse thread asked for (`--abuse-nice`).
    pub nice_asked: i32,
    /// The nice value it ran at (`None`: it could not be read or set; see `nice_error`).
    pub nice: Option<i32>,
    /// Why the priority could not be lowered.
    pub nice_error: Option<String>,
    /// Idle HTTP/2 connections asked for, and opened (bounded by the limits).
    pub idle_h2_asked: usize,
    /// Idle connections opened (the connect succeeded).
    pub idle_h2_opened: u64,
    /// Idle connections whose connect failed.
    pub idle_h2_connect_failed: u64,
    /// Idle connections the sidecar closed before the window ended (preface or idle timeout, or
    /// over `max_connections`).
    pub idle_h2_closed_by_sidecar: u64,
    /// Slow uploads started.
    pub slow_uploads: u64,
    /// Body bytes the slow uploads sent, all together.
    pub slow_upload_bytes: u64,
    /// Answers the slow uploads got within the window, by status (`closed`: the connection ended
    /// without one).
    pub slow_upload_answers: BTreeMap<String, u64>,
    /// Webhook events posted.
    pub webhook_events: u64,
    /// Bytes of those events.
    pub webhook_bytes: u64,
    /// Their answers, by status (`broken`: the connection failed before an answer).
    pub webhook_answers: BTreeMap<String, u64>,
}

/// Latency and failures of the payments in one phase, as the shop saw them and as the sidecar did,
/// and who used the CPU meanwhile.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Phase {
    /// Payments whose intended send time fell in the phase.
    pub requests: u64,
    /// Of those, non-2xx answers (or none) the shop counts as failures.
    pub failed: u64,
    /// Their latency, from the intended send time to the end of the answer.
    pub latency: Latency,
    /// p99 of how late they left the generator (its schedule, its runtime's queue), ms.
    pub send_lag_p99_ms: f64,
    /// Of the payments, those whose answer took over [`SLOW_MS`] ms (compare with the sidecar's
    /// own count of them, [`SidecarView::over_slow`]).
    pub over_slow: u64,
    /// The sidecar's own view (`None`: its metrics could not be read).
    pub sidecar: Option<SidecarView>,
    /// CPU used in the phase, in cores (CPU seconds per second), by who used it (see
    /// [`crate::attribution::Cpu`]).
    pub cpu_cores: BTreeMap<String, f64>,
}

/// Whether a goal is met.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// The goal, in words.
    pub goal: String,
    /// What was measured, in words.
    pub measured: String,
    /// Met or not.
    pub met: bool,
}

/// The scenario's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    /// The abuse window, seconds from the start of the measured time.
    pub window_s: (f64, f64),
    /// Payments before, during and after the window.
    pub quiet: Phase,
    /// During the window.
    pub during: Phase,
    /// After it.
    pub after: Phase,
    /// `limits.max_buffered_bytes`, MiB.
    pub max_buffered_mib: u64,
    /// `limits.max_connections`.
    pub max_connections: usize,
    /// The sidecar's RSS just before the window, MiB.
    pub rss_quiet_mib: Option<f64>,
    /// Its largest sampled RSS from the window's start to the end of the run, MiB.
    pub rss_peak_mib: Option<f64>,
    /// Its RSS [`RSS_AFTER`] after the window (or at the last sample, if the run ended sooner), MiB.
    pub rss_after_mib: Option<f64>,
    /// When `rss_after_mib` was read, seconds after the window.
    pub rss_after_at_s: Option<f64>,
    /// How fast RSS grew in the second half of the quiet phase, MiB/s: what the payments' own
    /// records (kept 24 h) add, with no abuse at all.
    pub rss_quiet_trend_mib_per_s: Option<f64>,
    /// The control: the quiet RSS carried forward on that trend to when `rss_after_mib` was read,
    /// i.e. what a run of the same length without abuse would have then, MiB.
    pub rss_control_mib: Option<f64>,
    /// `rss_after_mib` minus the control: what the abuse left.
    pub rss_after_over_trend_mib: Option<f64>,
    /// RSS samples: (seconds from the start, MiB).
    pub rss_timeline: Vec<(f64, f64)>,
    /// What the abusive clients did.
    pub clients: Clients,
    /// The goals.
    pub verdicts: Vec<Verdict>,
}

/// Counters the client tasks share.
#[derive(Default)]
struct Counters {
    idle_opened: AtomicU64,
    idle_connect_failed: AtomicU64,
    idle_closed: AtomicU64,
    slow_started: AtomicU64,
    slow_bytes: AtomicU64,
    webhook_events: AtomicU64,
    webhook_bytes: AtomicU64,
    slow_answers: Mutex<BTreeMap<String, u64>>,
    webhook_answers: Mutex<BTreeMap<String, u64>>,
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, key: String) {
    if let Ok(mut m) = map.lock() {
        *m.entry(key).or_default() += 1;
    }
}

/// Where the abuse goes and when.
#[derive(Debug, Clone)]
pub struct Targets {
    /// The shop listener.
    pub shop: SocketAddr,
    /// The webhook listener (no flood without one).
    pub webhook: Option<SocketAddr>,
    /// The sidecar's process id, for its RSS.
    pub pid: u32,
}

/// What the abuse thread hands back: the clients' figures, the window (seconds from the start) and
/// the RSS samples (seconds from the start, MiB).
pub type Run = (Clients, (f64, f64), Vec<(f64, f64)>);

/// Runs the abuse on a thread of its own, at nice value `spec.nice`: RSS sampled from `t0` to
/// `end`, the clients from `start` to `stop`. Returns the thread (which hands back the clients'
/// figures, the actual window in seconds from `t0` and the RSS samples) and its thread id, for its
/// CPU time (`None` if it did not say within a second).
pub fn spawn(
    spec: Spec,
    idle: usize,
    targets: Targets,
    t0: Instant,
    (start, stop, end): (Instant, Instant, Instant),
) -> (std::thread::JoinHandle<crate::Result<Run>>, Option<u32>) {
    let (tid_tx, tid_rx) = std::sync::mpsc::sync_channel(1);
    let handle = std::thread::spawn(move || {
        let _ = tid_tx.send(rustix::thread::gettid().as_raw_pid() as u32);
        let priority = lower_priority(spec.nice);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| crate::err!("abuse runtime: {e}"))?;
        rt.block_on(async move {
            let sampler = tokio::spawn(sample_rss(targets.pid, t0, end));
            tokio::time::sleep_until(start.into()).await;
            let from = t0.elapsed().as_secs_f64();
            let counters = Arc::new(Counters::default());
            let mut tasks = Vec::new();
            for i in 0..idle {
                tasks.push(tokio::spawn(idle_h2(
                    targets.shop,
                    i % 2 == 0,
                    stop,
                    counters.clone(),
                )));
            }
            for i in 0..spec.slow_uploads {
                tasks.push(tokio::spawn(slow_upload(
                    targets.shop,
                    i,
                    stop,
                    counters.clone(),
                )));
            }
            if let Some(webhook) = targets.webhook {
                for k in 0..spec.webhook_clients {
                    tasks.push(tokio::spawn(webhook_flood(
                        webhook,
                        k,
                        stop,
                        counters.clone(),
                    )));
                }
            }
            for t in tasks {
                let _ = t.await;
            }
            // The window is the planned one, even when every client is done early.
            tokio::time::sleep_until(stop.into()).await;
            let to = t0.elapsed().as_secs_f64();
            let rss = sampler.await.unwrap_or_default();
            let c = &counters;
            let map =
                |m: &Mutex<BTreeMap<String, u64>>| m.lock().map(|m| m.clone()).unwrap_or_default();
            Ok((
                Clients {
                    nice_asked: spec.nice,
                    nice: priority.as_ref().ok().copied(),
                    nice_error: priority.err(),
                    idle_h2_asked: spec.idle_h2,
                    idle_h2_opened: c.idle_opened.load(Ordering::Relaxed),
                    idle_h2_connect_failed: c.idle_connect_failed.load(Ordering::Relaxed),
                    idle_h2_closed_by_sidecar: c.idle_closed.load(Ordering::Relaxed),
                    slow_uploads: c.slow_started.load(Ordering::Relaxed),
                    slow_upload_bytes: c.slow_bytes.load(Ordering::Relaxed),
                    slow_upload_answers: map(&c.slow_answers),
                    webhook_events: c.webhook_events.load(Ordering::Relaxed),
                    webhook_bytes: c.webhook_bytes.load(Ordering::Relaxed),
                    webhook_answers: map(&c.webhook_answers),
                },
                (from, to),
                rss,
            ))
        })
    });
    let tid = tid_rx.recv_timeout(Duration::from_secs(1)).ok();
    (handle, tid)
}

async fn sample_rss(pid: u32, t0: Instant, end: Instant) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(RSS_EVERY);
    while Instant::now() < end {
        tick.tick().await;
        if let Some(kib) = procfs::rss_kib(pid) {
            out.push((t0.elapsed().as_secs_f64(), kib as f64 / 1024.0));
        }
    }
    out
}

/// The HTTP/2 connection preface and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

async fn idle_h2(shop: SocketAddr, full: bool, stop: Instant, c: Arc<Counters>) {
    let Ok(mut s) = TcpStream::connect(shop).await else {
        c.idle_connect_failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    c.idle_opened.fetch_add(1, Ordering::Relaxed);
    let preface = if full { H2_PREFACE } else { &H2_PREFACE[..16] };
    if s.write_all(preface).await.is_err() {
        c.idle_closed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    c.idle_closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(_) => {}
            },
            _ = tokio::time::sleep_until(stop.into()) => return,
        }
    }
}

/// The status of the first HTTP/1.1 answer in `head` (`None` if there is none yet).
pub fn status_of(head: &[u8]) -> Option<u16> {
    // Only a whole status line counts: a read may stop in its middle.
    let end = head.iter().position(|b| *b == b'\n')?;
    let text = std::str::from_utf8(&head[..end]).ok()?;
    let mut parts = text.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next().filter(|c| c.len() == 3)?.parse().ok()
}

async fn slow_upload(shop: SocketAddr, i: usize, stop: Instant, c: Arc<Counters>) {
    let Ok(s) = TcpStream::connect(shop).await else {
        bump(&c.slow_answers, "connect_failed".into());
        return;
    };
    let (mut rd, mut wr) = s.into_split();
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let head = format!(
        "POST /v1/payment_intents HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\nIdempotency-Key: abuse-slow-{unix}-{i}\r\nContent-Length: {}\r\n\r\n",
        ROUTE_MAX_BODY - 1
    );
    if wr.write_all(head.as_bytes()).await.is_err() {
        bump(&c.slow_answers, "closed".into());
        return;
    }
    c.slow_started.fetch_add(1, Ordering::Relaxed);
    let mut sent = 0usize;
    let mut tick = tokio::time::interval(SLOW_EVERY);
    let mut buf = vec![0u8; 1024];
    let mut got = Vec::new();
    loop {
        tokio::select! {
            _ = tick.tick(), if sent + SLOW_CHUNK < ROUTE_MAX_BODY => {
                if wr.write_all(&[b' '; SLOW_CHUNK]).await.is_err() {
                    bump(&c.slow_answers, "closed".into());
                    return;
                }
                sent += SLOW_CHUNK;
                c.slow_bytes.fetch_add(SLOW_CHUNK as u64, Ordering::Relaxed);
            }
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    let key = status_of(&got).map_or("closed".into(), |s| s.to_string());
                    bump(&c.slow_answers, key);
                    return;
                }
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if let Some(s) = status_of(&got) {
                        bump(&c.slow_answers, s.to_string());
                        return;
                    }
                }
            },
            _ = tokio::time::sleep_until(stop.into()) => return,
        }
    }
}

/// One event of the flood: its head and body, by its number.
pub fn flood_event(n: u64) -> (String, Vec<u8>) {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let event = |pad: usize| {
        let mut body =
            format!(r#"{{"id":"evt_abuse_{n}","type":"payment_intent.succeeded","pad":""#)
                .into_bytes();
        body.resize(pad.saturating_sub(2).max(body.len()), b'x');
        body.extend_from_slice(b"\"}");
        body
    };
    let bad_sig = format!("Stripe-Signature: t={unix},v1={}\r\n", "0".repeat(64));
    let (signature, body) = match n % 4 {
        0 => (String::new(), event(0)),
        1 => (bad_sig, event(0)),
        2 => (bad_sig, event(WEBHOOK_MAX_BODY - 1)),
        _ => (bad_sig, event(WEBHOOK_MAX_BODY + 1024)),
    };
    let head = format!(
        "POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n{signature}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    (head, body)
}

async fn webhook_flood(webhook: SocketAddr, k: usize, stop: Instant, c: Arc<Counters>) {
    let mut n = k as u64;
    let mut sent = 0;
    while Instant::now() < stop && sent < WEBHOOK_MAX_EVENTS {
        let (head, body) = flood_event(n);
        n += 1;
        sent += 1;
        let deadline = Instant::now() + Duration::from_secs(5);
        let answer = tokio::time::timeout_at(deadline.into(), async {
            let mut s = TcpStream::connect(webhook).await.ok()?;
            // The sidecar may answer and close before the body is in (413): read what came anyway.
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&body).await;
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(m) => {
                        got.extend_from_slice(&buf[..m]);
                        if got.len() > 16 << 10 {
                            break;
                        }
                    }
                }
            }
            status_of(&got)
        })
        .await
        .ok()
        .flatten();
        c.webhook_events.fetch_add(1, Ordering::Relaxed);
        c.webhook_bytes
            .fetch_add((head.len() + body.len()) as u64, Ordering::Relaxed);
        bump(
            &c.webhook_answers,
            answer.map_or("broken".into(), |s| s.to_string()),
        );
    }
}

fn phase<'a>(samples: impl Iterator<Item = &'a Sample>) -> Phase {
    let mut h = histogram();
    let mut lag = histogram();
    let mut p = Phase::default();
    for s in samples {
        p.requests += 1;
        if s.class == Class::Failed {
            p.failed += 1;
        }
        h.saturating_record(s.latency_us.max(1));
        lag.saturating_record(s.lag_us.max(1));
        if s.latency_us as f64 > SLOW_MS * 1000.0 {
            p.over_slow += 1;
        }
    }
    let ms = |v: u64| (v as f64 / 10.0).round() / 100.0;
    if p.requests > 0 {
        p.send_lag_p99_ms = ms(lag.value_at_quantile(0.99));
        p.latency = Latency {
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: (h.mean() / 10.0).round() / 100.0,
        };
    }
    p
}

/// The figures and verdicts, from the payments' samples, the window (seconds from the start),
/// the RSS samples, the clients' counts and the marks read at the start of the measured time, the
/// window's start and end, and the end of the measured time (fewer: no sidecar view and no CPU).
pub fn figures(
    spec: &Spec,
    samples: &[Sample],
    window_s: (f64, f64),
    rss: Vec<(f64, f64)>,
    clients: Clients,
    marks: &[Mark],
) -> Figures {
    let (start, end) = window_s;
    let t = |s: &&Sample| s.intended_us as f64 / 1e6;
    let mut quiet = phase(samples.iter().filter(|s| t(s) < start));
    let mut during = phase(samples.iter().filter(|s| (start..end).contains(&t(s))));
    let mut after = phase(samples.iter().filter(|s| t(s) >= end));
    if let [m0, m1, m2, m3] = marks {
        for (p, (a, b)) in [
            (&mut quiet, (m0, m1)),
            (&mut during, (m1, m2)),
            (&mut after, (m2, m3)),
        ] {
            p.sidecar = match (&a.buckets, &b.buckets) {
                (Some(x), Some(y)) => Some(sidecar_view(x, y)),
                _ => None,
            };
            p.cpu_cores = cpu_between(a, b);
        }
    }
    let rss_quiet_mib = rss.iter().rev().find(|(at, _)| *at < start).map(|x| x.1);
    let rss_peak_mib = rss
        .iter()
        .filter(|(at, _)| *at >= start)
        .map(|x| x.1)
        .reduce(f64::max);
    let after_at = end + RSS_AFTER.as_secs_f64();
    let rss_after = rss
        .iter()
        .find(|(at, _)| *at >= after_at)
        .or_else(|| rss.iter().rev().find(|(at, _)| *at >= end));
    let trend = {
        let quiet: Vec<&(f64, f64)> = rss
            .iter()
            .filter(|(at, _)| *at >= start / 2.0 && *at < start)
            .collect();
        match (quiet.first(), quiet.last()) {
            (Some(a), Some(b)) if b.0 - a.0 >= 1.0 => Some((b.1 - a.1) / (b.0 - a.0)),
            _ => None,
        }
    };
    let last_quiet = rss.iter().rev().find(|(at, _)| *at < start).copied();
    // The control: what a run without abuse would have when "after" was read.
    let control = match (rss_after, last_quiet, trend) {
        (Some(after), Some(q), Some(slope)) => Some(q.1 + slope * (after.0 - q.0)),
        _ => None,
    };
    let over_trend = match (rss_after, control) {
        (Some(after), Some(c)) => Some(((after.1 - c) * 10.0).round() / 10.0),
        _ => None,
    };
    let mut f = Figures {
        window_s,
        quiet,
        during,
        after,
        max_buffered_mib: spec.max_buffered_mib,
        max_connections: spec.max_connections,
        rss_quiet_mib,
        rss_peak_mib,
        rss_after_mib: rss_after.map(|x| x.1),
        rss_after_at_s: rss_after.map(|x| ((x.0 - end) * 10.0).round() / 10.0),
        rss_quiet_trend_mib_per_s: trend.map(|t| (t * 100.0).round() / 100.0),
        rss_control_mib: control.map(|c| (c * 10.0).round() / 10.0),
        rss_after_over_trend_mib: over_trend,
        rss_timeline: rss,
        clients,
        verdicts: Vec::new(),
    };
    f.verdicts = verdicts(&f);
    f
}

/// The goals of issue 17, judged on `f`.
pub fn verdicts(f: &Figures) -> Vec<Verdict> {
    let mut out = Vec::new();
    let (q, d) = (f.quiet.latency.p99_ms, f.during.latency.p99_ms);
    out.push(Verdict {
        goal: "payment p99 during the abuse ≤ 2× the quiet phase".into(),
        measured: format!("{d:.2} ms vs {q:.2} ms ({:.2}×)", d / q.max(1e-9)),
        met: f.during.requests > 0 && f.quiet.requests > 0 && d <= 2.0 * q,
    });
    let failed = f.quiet.failed + f.during.failed + f.after.failed;
    out.push(Verdict {
        goal: "0 failed payments".into(),
        measured: format!(
            "{failed} (quiet {}, during {}, after {})",
            f.quiet.failed, f.during.failed, f.after.failed
        ),
        met: failed == 0,
    });
    let bound = f.max_buffered_mib as f64 + RSS_SLACK_MIB;
    out.push(Verdict {
        goal: format!("peak RSS ≤ max_buffered_bytes + {RSS_SLACK_MIB:.0} MiB ({bound:.0} MiB)"),
        measured: f
            .rss_peak_mib
            .map_or("not measured".into(), |p| format!("{p:.1} MiB")),
        met: f.rss_peak_mib.is_some_and(|p| p <= bound),
    });
    let back = match (f.rss_quiet_mib, f.rss_after_mib) {
        (Some(q), Some(a)) => Verdict {
            goal: format!(
                "RSS {} s after the abuse within 10 % of the quiet RSS",
                RSS_AFTER.as_secs()
            ),
            measured: format!(
                "{a:.1} MiB vs {q:.1} MiB ({:+.0} %), {} s after",
                (a / q - 1.0) * 100.0,
                f.rss_after_at_s.unwrap_or(0.0)
            ),
            met: a <= q * 1.1 && f.rss_after_at_s.unwrap_or(0.0) >= RSS_AFTER.as_secs_f64() - 0.5,
        },
        _ => Verdict {
            goal: "RSS after the abuse within 10 % of the quiet RSS".into(),
            measured: "not measured".into(),
            met: false,
        },
    };
    out.push(back);
    let control = match (f.rss_control_mib, f.rss_after_mib) {
        (Some(c), Some(a)) => Verdict {
            goal: format!(
                "RSS {} s after the abuse within 10 % of the control (no abuse: the quiet RSS carried forward on the quiet phase's own growth)",
                RSS_AFTER.as_secs()
            ),
            measured: format!(
                "{a:.1} MiB vs {c:.1} MiB = {} MiB + {} MiB/s over {:.1} s ({:+.0} %)",
                f.rss_quiet_mib.map_or("?".into(), |q| format!("{q:.1}")),
                f.rss_quiet_trend_mib_per_s
                    .map_or("?".into(), |t| format!("{t:.2}")),
                f.rss_after_at_s.unwrap_or(0.0) + (f.window_s.1 - f.window_s.0),
                (a / c - 1.0) * 100.0
            ),
            met: a <= c * 1.1 && f.rss_after_at_s.unwrap_or(0.0) >= RSS_AFTER.as_secs_f64() - 0.5,
        },
        _ => Verdict {
            goal: "RSS after the abuse within 10 % of the control (no abuse)".into(),
            measured: "not measured (no quiet trend: the quiet phase is under 2 s)".into(),
            met: false,
        },
    };
    out.push(control);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_statuses_and_builds_events() {
        assert_eq!(status_of(b"HTTP/1.1 401 Unauthorized\r\n"), Some(401));
        assert_eq!(status_of(b"HTTP/1.1 4"), None);
        assert_eq!(status_of(b"garbage"), None);
        let (h, b) = flood_event(0);
        assert!(!h.contains("Stripe-Signature"));
        assert!(b.len() < 200);
        let (h, b) = flood_event(2);
        assert!(h.contains("Stripe-Signature: t="));
        assert_eq!(b.len(), WEBHOOK_MAX_BODY - 1);
        assert!(h.contains(&format!("Content-Length: {}", b.len())));
        let (_, b) = flood_event(3);
        assert!(b.len() > WEBHOOK_MAX_BODY);
        assert!(serde_json::from_slice::<serde_json::Value>(&b).is_ok());
    }

    #[test]
    fn bounds_the_idle_connections() {
        let spec = Spec {
            idle_h2: 500,
            slow_uploads: 50,
            webhook_clients: 4,
            max_buffered_mib: 64,
            max_connections: 1024,
            nice: 19,
        };
        assert_eq!(spec.idle_bounded(None), 500);
        assert_eq!(spec.idle_bounded(Some(1024)), 1024 - 512 - 54);
        let tight = Spec {
            max_connections: 600,
            ..spec
        };
        assert_eq!(tight.idle_bounded(None), 600 - 54 - 256);
    }

    #[test]
    fn judges_the_goals() {
        let mut f = Figures {
            quiet: Phase {
                requests: 10,
                failed: 0,
                latency: Latency {
                    p99_ms: 2.0,
                    ..Latency::default()
                },
                ..Phase::default()
            },
            during: Phase {
                requests: 10,
                failed: 0,
                latency: Latency {
                    p99_ms: 3.9,
                    ..Latency::default()
                },
                ..Phase::default()
            },
            max_buffered_mib: 64,
            rss_quiet_mib: Some(20.0),
            rss_peak_mib: Some(96.0),
            rss_after_mib: Some(21.9),
            rss_after_at_s: Some(10.0),
            rss_control_mib: Some(19.95),
            ..Figures::default()
        };
        assert!(verdicts(&f).iter().all(|v| v.met), "{:?}", verdicts(&f));
        assert_eq!(verdicts(&f).len(), 5);
        f.during.latency.p99_ms = 4.1;
        f.after.failed = 1;
        f.rss_peak_mib = Some(96.1);
        f.rss_after_mib = Some(22.1);
        assert!(verdicts(&f).iter().all(|v| !v.met), "{:?}", verdicts(&f));
        // The payments' own growth: far over the quiet RSS, but within 10 % of the control.
        f.rss_control_mib = Some(30.0);
        f.rss_after_mib = Some(32.9);
        let v = verdicts(&f);
        assert!(!v[3].met && v[4].met, "{v:?}");
        f.rss_after_mib = Some(33.1);
        assert!(!verdicts(&f)[4].met);
        f.rss_after_mib = Some(20.0);
        f.rss_after_at_s = Some(4.0);
        let v = verdicts(&f);
        assert!(!v[3].met && !v[4].met, "read too early to judge: {v:?}");
        f.rss_control_mib = None;
        assert!(!verdicts(&f)[4].met, "no control, no verdict");
    }

    #[test]
    fn lowers_only_its_own_thread() {
        let before = lower_priority(0).expect("read this thread's priority");
        let lowered = std::thread::spawn(|| lower_priority(19))
            .join()
            .expect("thread");
        assert_eq!(lowered, Ok(19));
        assert_eq!(lower_priority(0), Ok(before), "the caller's priority moved");
    }
}
