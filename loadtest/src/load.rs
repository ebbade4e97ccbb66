//! The load generator: payment POSTs at a fixed rate (open model) or back to back (closed loop), and
//! what the shop saw for each.
//!
//! In the open model each request has an intended send time on a fixed schedule, kept by a thread of
//! its own (finer than the async timer), and its latency is counted from that time: a proxy that
//! stalls makes every request scheduled during the stall late, and that lateness is in the figures.
//! There is no coordinated omission: the schedule never waits for answers.
//!
//! In front of several sidecars the requests are spread over them round robin (the two requests of
//! a concurrent pair land on two of them). In a scenario where the shop retries
//! ([`crate::scenario::ShopRetry`]), a payment that failed is sent again with the same key, after a
//! short wait, to the next sidecar: as a job queue, or a load balancer in front of the shop's
//! replicas, would. Each send is a sample of its own, its latency counted from when it was sent.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use tokio::sync::Semaphore;

use crate::bare_proxy;
use crate::configs::UPSTREAM_HEADER;
use crate::control::Client;
use crate::plan::{amount, Plan, Slot, SlotKind};
use crate::scenario::ShopRetry;

/// Header with which switchyard marks the answers it made itself.
pub const X_SWITCHYARD_ERROR: &str = "x-switchyard-error";
/// Header with which switchyard names the provider that answered.
pub const X_SWITCHYARD_PROVIDER: &str = "x-switchyard-provider";
/// Header with which switchyard says it cannot know whether the payment went through.
pub const X_SWITCHYARD_OUTCOME: &str = "x-switchyard-outcome";
/// Envoy's header on answers that came from an upstream (absent on its own answers).
pub const X_ENVOY_UPSTREAM_SERVICE_TIME: &str = "x-envoy-upstream-service-time";

/// Which provider answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Via {
    /// The answer did not say.
    Unknown,
    /// The primary provider.
    Primary,
    /// The backup provider.
    Backup,
}

/// What kind of proxy (or none) is in front of the providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetKind {
    /// switchyard.
    Switchyard,
    /// Straight to the primary sandbox.
    Direct,
    /// The bare hyper proxy (`bare-proxy`) to the primary.
    Hyper,
    /// Envoy.
    Envoy,
    /// HAProxy.
    Haproxy,
    /// nginx.
    Nginx,
}

impl TargetKind {
    /// Every target.
    pub const ALL: [TargetKind; 6] = [
        TargetKind::Switchyard,
        TargetKind::Direct,
        TargetKind::Hyper,
        TargetKind::Envoy,
        TargetKind::Haproxy,
        TargetKind::Nginx,
    ];

    /// Its name in the command line, file names, failure kinds and `report.json`.
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Switchyard => "switchyard",
            TargetKind::Direct => "direct",
            TargetKind::Hyper => "hyper",
            TargetKind::Envoy => "envoy",
            TargetKind::Haproxy => "haproxy",
            TargetKind::Nginx => "nginx",
        }
    }

    /// Its label in tables, headings and charts (`hyper (bare)`, else the name).
    pub fn label(self) -> &'static str {
        match self {
            TargetKind::Hyper => "hyper (bare)",
            other => other.name(),
        }
    }

    /// The label of the target named `name` (`name` itself when no target has it).
    pub fn label_of(name: &str) -> &str {
        Self::ALL
            .iter()
            .find(|t| t.name() == name)
            .map_or(name, |t| t.label())
    }

    /// For a proxy that marks the answers it makes itself, the header that marks them: an answer
    /// with it was made by the proxy.
    pub fn local_mark(self) -> Option<&'static str> {
        match self {
            TargetKind::Hyper => Some(bare_proxy::ERROR_HEADER),
            _ => None,
        }
    }

    /// For a general-purpose proxy, the header that is on every answer an upstream gave and absent
    /// from the proxy's own: an answer without it was made by the proxy.
    pub fn upstream_mark(self) -> Option<&'static str> {
        match self {
            TargetKind::Envoy => Some(X_ENVOY_UPSTREAM_SERVICE_TIME),
            TargetKind::Haproxy | TargetKind::Nginx => Some(UPSTREAM_HEADER),
            TargetKind::Switchyard | TargetKind::Direct | TargetKind::Hyper => None,
        }
    }
}

/// How to tell from an answer which provider gave it.
#[derive(Debug, Clone)]
pub struct ViaRule {
    /// The header to read (none: every answer comes from `default`).
    pub header: Option<&'static str>,
    /// Header values and the provider each one means.
    pub values: Vec<(String, Via)>,
    /// The provider when the header is absent or unknown.
    pub default: Via,
}

impl ViaRule {
    fn via(&self, headers: &HeaderMap) -> Via {
        let Some(name) = self.header else {
            return self.default;
        };
        let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) else {
            return self.default;
        };
        self.values
            .iter()
            .find(|(v, _)| v == value)
            .map(|(_, via)| *via)
            .unwrap_or(self.default)
    }
}

/// How the shop would judge an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 2xx: the payment went through (or was replayed).
    Ok,
    /// 409 to a re-sent key whose first request is still being processed: the expected answer,
    /// neither a success nor a failure.
    KeyInFlight,
    /// Anything else.
    Failed,
}

/// What the shop saw for one request.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The plan slot it belongs to.
    pub slot: u64,
    /// Its key (the slot that first used it).
    pub key: u64,
    /// Whether its key is sent by another request too (a late re-send, either request of a
    /// concurrent pair, or the first request of a key a later slot re-sends, when it got a 409):
    /// a 409 "key in flight" is then the expected answer.
    pub duplicate: bool,
    /// Intended send time, µs after the start of the run.
    pub intended_us: u64,
    /// From the intended send time to the end of the answer's body, µs.
    pub latency_us: u64,
    /// How late it actually left (schedule lag plus waiting for an in-flight slot), µs.
    pub lag_us: u64,
    /// HTTP status (0: no answer).
    pub status: u16,
    /// How the shop judges it.
    pub class: Class,
    /// Failure kind (see [`classify`]).
    pub kind: Option<String>,
    /// Which provider answered.
    pub via: Via,
    /// Whether the answer says the outcome is unknown, or no answer came after the request may have
    /// left.
    pub unknown: bool,
    /// Which target (sidecar) it went to: an index into [`Load::bases`].
    pub sidecar: usize,
    /// 0 for the first send of a request, 1, 2… for the shop's retries of it.
    pub attempt: u32,
}

/// Whether the shop sends a payment again after this answer: no answer, a 5xx (the proxy's own, or a
/// provider's), 409 (the key is in flight elsewhere) or 429. A 2xx or another 4xx is final.
pub fn shop_retries_after(status: u16) -> bool {
    status == 0 || status >= 500 || status == 409 || status == 429
}

/// What went wrong below HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// No connection: nothing was sent.
    Connect,
    /// The connection failed after the request may have been sent.
    Broken,
    /// No answer before the shop's timeout.
    Timeout,
}

/// Judges an answer (or its absence) as the shop would: the class, the failure kind, and whether the
/// outcome is unknown.
///
/// Kinds: the proxy's own `x-switchyard-error` value; `hyper_local_NNN`, `envoy_local_NNN`,
/// `haproxy_local_NNN`, `nginx_local_NNN` for an answer the bare proxy, Envoy, HAProxy or nginx
/// made itself; `provider_NNN` for a
/// provider's non-2xx answer; `connect_error`, `connection_broken`, `client_timeout` below HTTP.
pub fn classify(
    answer: Result<(u16, &HeaderMap), Transport>,
    duplicate: bool,
    target: TargetKind,
) -> (Class, Option<String>, bool) {
    let (status, headers) = match answer {
        Err(Transport::Connect) => return (Class::Failed, Some("connect_error".into()), false),
        Err(Transport::Broken) => return (Class::Failed, Some("connection_broken".into()), true),
        Err(Transport::Timeout) => return (Class::Failed, Some("client_timeout".into()), true),
        Ok(a) => a,
    };
    let unknown = headers
        .get(X_SWITCHYARD_OUTCOME)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"unknown"));
    if (200..300).contains(&status) {
        return (Class::Ok, None, unknown);
    }
    if status == 409 && duplicate {
        return (Class::KeyInFlight, None, unknown);
    }
    let kind = if let Some(kind) = headers
        .get(X_SWITCHYARD_ERROR)
        .and_then(|v| v.to_str().ok())
    {
        kind.to_owned()
    } else if target
        .upstream_mark()
        .is_some_and(|mark| !headers.contains_key(mark))
        || target
            .local_mark()
            .is_some_and(|mark| headers.contains_key(mark))
    {
        format!("{}_local_{status}", target.name())
    } else {
        format!("provider_{status}")
    };
    (Class::Failed, Some(kind), unknown)
}

/// Everything a request needs; cheap to clone.
#[derive(Clone)]
pub struct Load {
    /// The client.
    pub client: Client,
    /// Base URLs of the target, `http://host:port`: one, or one per sidecar.
    pub bases: Arc<[Arc<str>]>,
    /// The round robin over `bases`.
    pub next_base: Arc<AtomicUsize>,
    /// How the shop retries a failed payment (`None`: it does not).
    pub shop_retry: Option<ShopRetry>,
    /// Which target it is.
    pub target: TargetKind,
    /// How to tell which provider answered.
    pub via: Arc<ViaRule>,
    /// The request plan.
    pub plan: Plan,
    /// Prefix of every key of this run (`lt<tag>-`).
    pub key_prefix: Arc<str>,
    /// Most requests in flight (open model).
    pub in_flight: Arc<Semaphore>,
    /// How long the shop waits for an answer.
    pub request_timeout: Duration,
}

impl Load {
    /// The Idempotency-Key of key number `key`.
    pub fn key_name(&self, key: u64) -> String {
        format!("{}{key}", self.key_prefix)
    }

    /// Sends one request of `slot` to the next target of the round robin and, while the shop
    /// retries and the answer calls for it, again to the target after that; one sample per send.
    async fn send_retrying(
        &self,
        slot: &Slot,
        duplicate: bool,
        intended: Instant,
        t0: Instant,
    ) -> Vec<Sample> {
        let n = self.bases.len().max(1);
        let mut sidecar = self.next_base.fetch_add(1, Ordering::Relaxed) % n;
        let mut sample = self.send(slot, duplicate, intended, t0, sidecar, 0).await;
        let Some(retry) = self.shop_retry else {
            return vec![sample];
        };
        let mut out = Vec::new();
        for attempt in 1..retry.attempts.max(1) {
            let again = shop_retries_after(sample.status);
            out.push(sample);
            if !again {
                return out;
            }
            tokio::time::sleep(retry.delay).await;
            sidecar = (sidecar + 1) % n;
            sample = self
                .send(slot, true, Instant::now(), t0, sidecar, attempt)
                .await;
        }
        out.push(sample);
        out
    }

    async fn send(
        &self,
        slot: &Slot,
        duplicate: bool,
        intended: Instant,
        t0: Instant,
        sidecar: usize,
        attempt: u32,
    ) -> Sample {
        let base = self.bases.get(sidecar).cloned().unwrap_or_default();
        let deadline = intended + self.request_timeout;
        let mut lag = Duration::ZERO;
        let outcome = tokio::time::timeout_at(deadline.into(), async {
            let _permit = self.in_flight.acquire().await;
            lag = intended.elapsed();
            let req = Request::builder()
                .method(Method::POST)
                .uri(format!("{base}/v1/payment_intents"))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("idempotency-key", self.key_name(slot.key))
                .body(Full::new(Bytes::from(format!(
                    "amount={}&currency=eur",
                    amount(slot.key)
                ))))
                .map_err(|_| Transport::Connect)?;
            let resp = self.client.request(req).await.map_err(|e| {
                if e.is_connect() {
                    Transport::Connect
                } else {
                    Transport::Broken
                }
            })?;
            let (parts, body) = resp.into_parts();
            body.collect().await.map_err(|_| Transport::Broken)?;
            Ok::<_, Transport>((parts.status.as_u16(), parts.headers))
        })
        .await
        .unwrap_or(Err(Transport::Timeout));
        let latency = intended.elapsed();
        // The first request of a key that a later slot re-sends may meet that re-send in flight
        // (or be overtaken by it): its 409 is the expected answer too.
        let duplicate =
            duplicate || (matches!(&outcome, Ok((409, _))) && self.plan.is_resent(slot.key));
        let (status, class, kind, unknown, via) = match &outcome {
            Ok((status, headers)) => {
                let (class, kind, unknown) =
                    classify(Ok((*status, headers)), duplicate, self.target);
                (*status, class, kind, unknown, self.via.via(headers))
            }
            Err(t) => {
                let (class, kind, unknown) = classify(Err(*t), duplicate, self.target);
                (0, class, kind, unknown, Via::Unknown)
            }
        };
        Sample {
            slot: slot.index,
            key: slot.key,
            duplicate,
            intended_us: intended.saturating_duration_since(t0).as_micros() as u64,
            latency_us: latency.as_micros() as u64,
            lag_us: lag.as_micros() as u64,
            status,
            class,
            kind,
            via,
            unknown,
            sidecar,
            attempt,
        }
    }

    /// Sends one slot's requests (two at once for a pair) as planned at `intended`.
    pub async fn run_slot(&self, slot: Slot, intended: Instant, t0: Instant) -> Vec<Sample> {
        match slot.kind {
            SlotKind::Fresh => self.send_retrying(&slot, false, intended, t0).await,
            SlotKind::Resend => self.send_retrying(&slot, true, intended, t0).await,
            SlotKind::Pair => {
                let (mut a, mut b) = tokio::join!(
                    self.send_retrying(&slot, true, intended, t0),
                    self.send_retrying(&slot, true, intended, t0)
                );
                a.append(&mut b);
                a
            }
        }
    }
}

/// Open model: slots at a fixed rate (`rate` requests per second, on average) from `t0` for
/// `duration`. Returns every request's sample once all have answered or timed out.
pub async fn open_loop(load: &Load, rate: f64, t0: Instant, duration: Duration) -> Vec<Sample> {
    let slot_rate = rate / load.plan.requests_per_slot();
    let slots = (duration.as_secs_f64() * slot_rate).round() as u64;
    let interval_ns = 1e9 / slot_rate;
    let runtime = tokio::runtime::Handle::current();
    let driver = load.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_if_abandoned = StopOnDrop(Arc::clone(&stop));
    // The schedule runs on a thread of its own: std's sleep wakes within ~50 µs, tokio's timer
    // only on millisecond ticks.
    let scheduled = tokio::task::spawn_blocking(move || {
        let mut handles = Vec::with_capacity(slots as usize);
        for i in 0..slots {
            let intended = t0 + Duration::from_nanos((i as f64 * interval_ns) as u64);
            let now = Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let load = driver.clone();
            let slot = load.plan.slot(i);
            handles.push(runtime.spawn(async move { load.run_slot(slot, intended, t0).await }));
        }
        handles
    })
    .await
    .unwrap_or_default();
    let mut samples = Vec::with_capacity(scheduled.len());
    for handle in scheduled {
        if let Ok(mut s) = handle.await {
            samples.append(&mut s);
        }
    }
    samples
}

/// Sets a flag when dropped: tells the schedule thread to stop when its run is abandoned.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Closed loop: `workers` tasks each send the next slot as soon as the last one answered, from `t0`
/// for `duration`. Latency is counted from the actual send.
pub async fn closed_loop(
    load: &Load,
    workers: usize,
    t0: Instant,
    duration: Duration,
) -> Vec<Sample> {
    let next = Arc::new(AtomicU64::new(0));
    let end = t0 + duration;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (load, next, stop) = (load.clone(), Arc::clone(&next), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(t0.into()).await;
            let mut samples = Vec::new();
            loop {
                let now = Instant::now();
                if now >= end || stop.load(Ordering::Relaxed) {
                    break;
                }
                let slot = load.plan.slot(next.fetch_add(1, Ordering::Relaxed));
                samples.append(&mut load.run_slot(slot, now, t0).await);
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for task in tasks {
        if let Ok(mut s) = task.await {
            samples.append(&mut s);
        }
    }
    stop.store(true, Ordering::Relaxed);
    samples.sort_by_key(|s| (s.intended_us, s.slot));
    samples
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn classifies_answers() {
        let none = headers(&[]);
        assert_eq!(
            classify(Ok((200, &none)), false, TargetKind::Switchyard),
            (Class::Ok, None, false)
        );
        let proxy = headers(&[("x-switchyard-error", "provider_unreachable")]);
        assert_eq!(
            classify(Ok((502, &proxy)), false, TargetKind::Switchyard).1,
            Some("provider_unreachable".into())
        );
        let unknown = headers(&[
            ("x-switchyard-error", "provider_timeout"),
            ("x-switchyard-outcome", "unknown"),
        ]);
        assert!(classify(Ok((504, &unknown)), false, TargetKind::Switchyard).2);
        assert_eq!(
            classify(Ok((409, &none)), true, TargetKind::Direct).0,
            Class::KeyInFlight
        );
        assert_eq!(
            classify(Ok((409, &none)), false, TargetKind::Direct).1,
            Some("provider_409".into())
        );
        assert_eq!(
            classify(Ok((503, &none)), false, TargetKind::Envoy).1,
            Some("envoy_local_503".into())
        );
        let upstream = headers(&[("x-envoy-upstream-service-time", "3")]);
        assert_eq!(
            classify(Ok((503, &upstream)), false, TargetKind::Envoy).1,
            Some("provider_503".into())
        );
        assert_eq!(
            classify(Ok((503, &none)), false, TargetKind::Haproxy).1,
            Some("haproxy_local_503".into())
        );
        assert_eq!(
            classify(Ok((502, &none)), false, TargetKind::Nginx).1,
            Some("nginx_local_502".into())
        );
        assert_eq!(
            classify(Ok((503, &none)), false, TargetKind::Hyper).1,
            Some("provider_503".into())
        );
        let bare = headers(&[("x-bare-proxy-error", "upstream_request_failed")]);
        assert_eq!(
            classify(Ok((502, &bare)), false, TargetKind::Hyper).1,
            Some("hyper_local_502".into())
        );
        let named = headers(&[("x-upstream", "primary")]);
        assert_eq!(
            classify(Ok((503, &named)), false, TargetKind::Nginx).1,
            Some("provider_503".into())
        );
        assert_eq!(
            classify(Ok((503, &named)), false, TargetKind::Haproxy).1,
            Some("provider_503".into())
        );
        assert_eq!(
            classify(Err(Transport::Timeout), false, TargetKind::Direct),
            (Class::Failed, Some("client_timeout".into()), true)
        );
        assert!(!classify(Err(Transport::Connect), false, TargetKind::Direct).2);
    }

    #[test]
    fn the_shop_retries_what_is_not_final() {
        for status in [0, 500, 502, 503, 504, 409, 429] {
            assert!(shop_retries_after(status), "{status}");
        }
        for status in [200, 201, 400, 402, 404, 422] {
            assert!(!shop_retries_after(status), "{status}");
        }
    }

    #[test]
    fn tells_the_provider() {
        let rule = ViaRule {
            header: Some(X_SWITCHYARD_PROVIDER),
            values: vec![("a".into(), Via::Primary), ("b".into(), Via::Backup)],
            default: Via::Unknown,
        };
        assert_eq!(
            rule.via(&headers(&[("x-switchyard-provider", "b")])),
            Via::Backup
        );
        assert_eq!(rule.via(&headers(&[])), Via::Unknown);
    }

    #[test]
    fn names_and_labels() {
        for t in TargetKind::ALL {
            assert_eq!(TargetKind::label_of(t.name()), t.label());
        }
        assert_eq!(TargetKind::Hyper.name(), "hyper");
        assert_eq!(TargetKind::label_of("hyper"), "hyper (bare)");
        assert_eq!(TargetKind::label_of("envoy"), "envoy");
        assert_eq!(TargetKind::label_of("other"), "other");
    }
}
