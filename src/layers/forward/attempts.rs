//! The attempt loop: the providers to try, one attempt after another, until an answer or a reason to
//! stop.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Request, Response};
use tokio::time::Instant;

use super::decide::{breaker_wait, decide, Attempt, OpState, PinReason, Policy, Step, Stop};
use super::operation::{is_idempotent, respond, Operation, Settle};
use crate::audit::{AttemptEnd, AttemptReason, AttemptStart, RecordedBody};
use crate::body::ProxyBody;
use crate::config::Provider;
use crate::error::{ProxyError, Reached};
use crate::health::breaker::Admission;
use crate::health::{self, Admitted, PerTarget};
use crate::idempotency::PinStore;
use crate::idempotency::Store;
use crate::metrics::InFlight;
use crate::outcome::{classify, OutcomeClass, Seen};
use crate::upstream::{AttemptResult, SendAttempt};

impl<S: SendAttempt> Operation<S> {
    /// An operation that stops without a final answer after an attempt that may have reached
    /// `provider` answers the shop that its outcome is unknown: counted, as every such answer is
    /// (the resolver's own tries are not shop answers, and are counted as resolutions).
    pub(super) fn count_unknown(&self, unsettled: bool, provider: &str) {
        if unsettled && !self.resolving {
            self.metrics
                .unknown_outcomes_total
                .with_label_values(&[&*self.route.name, provider])
                .inc();
        }
    }

    /// The request for one attempt at `provider`.
    fn provider_request(&self, provider: &Provider) -> Result<Request<Bytes>, ProxyError> {
        crate::upstream::provider_request(
            provider,
            self.route.strip_prefix.as_deref(),
            &self.parts,
            &self.body,
            self.provider_key(),
        )
    }

    /// The providers to try, in order: the pinned one only, or the route's plan.
    pub(super) fn order(
        &self,
        pinned: Option<&Arc<str>>,
        now: Instant,
    ) -> Result<PerTarget<Arc<str>>, ProxyError> {
        if let Some(p) = pinned {
            return Ok(smallvec::smallvec![Arc::clone(p)]);
        }
        let plan = health::plan(
            &self.route,
            &self.generation.health,
            now.into_std(),
            rand::random(),
        )
        .map_err(|retry_after| ProxyError::NoHealthyProvider { retry_after })?;
        Ok(plan
            .into_iter()
            .map(|i| Arc::clone(&self.route.targets[i].provider))
            .collect())
    }

    /// The attempt loop: each attempt's step is [`decide`]d, and carried out here.
    pub(super) async fn attempts(
        &self,
        resumed: Option<Arc<str>>,
        plan: Result<PerTarget<Arc<str>>, ProxyError>,
        mut prepaid: Option<(Arc<str>, Result<(), std::time::Duration>)>,
        mut settle: Option<&mut Settle<'_>>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let route = &*self.route;
        let g = &*self.generation;
        let deadline = self.deadline;
        let policy = Policy::of(route, self.started, deadline);
        // An operation whose earlier request may have reached a provider stays unsettled until a
        // final answer comes back: failures that send nothing do not settle it.
        let mut unsettled = resumed.is_some();
        if let Some(info) = &self.info {
            info.set_maybe_sent(unsettled);
        }
        let now = Instant::now();
        let mut state = OpState {
            keyed: self.key.is_some(),
            idempotent: is_idempotent(&self.parts.method),
            // An earlier request's outcome at the pinned provider is unknown.
            unknown_before: resumed.is_some(),
            ..OpState::default()
        };
        let mut pin = match resumed {
            Some(p) => {
                state.pinned = Some(PinReason::Resumed);
                Some(p)
            }
            // Follow-ups (capture, refund) go where the payment object lives.
            None => g
                .pins
                .find(self.parts.uri.path(), &self.body)
                .await?
                .filter(|p| g.upstreams.get(p).is_some())
                .inspect(|_| state.pinned = Some(PinReason::PaymentObject)),
        };
        let order = match &pin {
            Some(p) => smallvec::smallvec![Arc::clone(p)],
            // The store cannot vouch that no other sidecar sent this key: its first-priority provider
            // only, never a backup.
            None if self.key.as_ref().is_some_and(|k| k.store.degraded()) => {
                if let Some(info) = &self.info {
                    info.set_state_degraded();
                }
                route
                    .targets
                    .iter()
                    .min_by_key(|t| t.priority)
                    .map(|t| smallvec::smallvec![Arc::clone(&t.provider)])
                    .unwrap_or_default()
            }
            None => plan?,
        };
        let budget = g.retry_budgets.get(&route.name);
        if let Some(b) = budget {
            b.lock()
                .unwrap_or_else(|p| p.into_inner())
                .deposit(now.into_std());
        }

        let mut cursor = 0;
        let mut sent = 0u32;
        let mut skipped: Option<ProxyError> = None;
        let mut failover: Option<(Arc<str>, &'static str)> = None;
        let mut previous: Option<OutcomeClass> = None;
        let mut previous_provider: Option<Arc<str>> = None;
        let mut last: Option<LastAttempt<S::Body>> = None;

        loop {
            let provider = match &pin {
                Some(p) => Arc::clone(p),
                None => match order.get(cursor) {
                    Some(p) => Arc::clone(p),
                    None => break,
                },
            };
            state.more_targets = pin.is_none() && cursor + 1 < order.len();
            let (Some(upstream), Some(health)) =
                (g.upstreams.get(&provider), g.health.get(&provider))
            else {
                match decide(
                    &state,
                    Attempt::Unconfigured,
                    &policy,
                    Instant::now(),
                    no_budget,
                    no_jitter,
                ) {
                    Step::Stop(stop) => {
                        self.count_unknown(unsettled, &provider);
                        return Err(refusal(stop, &provider, Reached::maybe(unsettled)));
                    }
                    _ => {
                        cursor += 1;
                        continue;
                    }
                }
            };
            // Local checks first: a refusal here sends nothing, so another target is safe.
            let now = Instant::now();
            let probe = match health.admit(now.into_std()) {
                Admission::Allowed => false,
                Admission::Probe => true,
                Admission::Rejected { retry_in } => {
                    let refused = Attempt::BreakerOpen { retry_in };
                    match decide(&state, refused, &policy, now, no_budget, no_jitter) {
                        Step::WaitForPinned { after } => {
                            tokio::time::sleep(after).await;
                            continue;
                        }
                        Step::Stop(stop) => {
                            self.count_unknown(unsettled, &provider);
                            return Err(refusal(stop, &provider, Reached::maybe(unsettled)));
                        }
                        Step::NextTarget | Step::Retry { .. } => {
                            skipped = Some(ProxyError::NoHealthyProvider {
                                retry_after: breaker_wait(retry_in),
                            });
                            failover = failover.or(Some((Arc::clone(&provider), "breaker_open")));
                            cursor += 1;
                            continue;
                        }
                    }
                }
            };
            let admitted = Admitted::new(health, probe);
            if let Some(gate) = health.quota() {
                // A slot taken with the claim serves the first attempt at its provider.
                let slot = match prepaid.take_if(|(p, _)| *p == provider) {
                    Some((_, slot)) => slot,
                    None => gate.acquire().await,
                };
                if let Err(wait) = slot {
                    self.metrics
                        .rate_limited_total
                        .with_label_values(&[&*route.name, "provider"])
                        .inc();
                    drop(admitted);
                    let error = |reached| ProxyError::ProviderQuotaExhausted {
                        provider: provider.to_string(),
                        retry_after: wait,
                        reached,
                    };
                    let refused = Attempt::QuotaExhausted;
                    match decide(
                        &state,
                        refused,
                        &policy,
                        Instant::now(),
                        no_budget,
                        no_jitter,
                    ) {
                        Step::Stop(Stop::PinnedQuotaExhausted) => {
                            self.count_unknown(unsettled, &provider);
                            return Err(error(Reached::maybe(unsettled)));
                        }
                        Step::Stop(stop) => {
                            self.count_unknown(unsettled, &provider);
                            return Err(refusal(stop, &provider, Reached::maybe(unsettled)));
                        }
                        _ => {
                            skipped = Some(error(Reached::No));
                            failover = failover.or(Some((Arc::clone(&provider), "quota")));
                            cursor += 1;
                            continue;
                        }
                    }
                }
            }
            let started = Instant::now();
            let remaining = deadline.saturating_duration_since(started);
            if remaining.is_zero() {
                drop(admitted);
                break;
            }

            // Send.
            let reason = if unsettled || (pin.is_some() && previous_provider.is_none()) {
                AttemptReason::Pinned
            } else {
                match &previous_provider {
                    None => AttemptReason::Primary,
                    Some(p) if *p == provider => AttemptReason::Retry,
                    Some(_) => AttemptReason::Failover,
                }
            };
            let request = self.provider_request(&upstream.config)?;
            // Recorded before sent: a sidecar that finds this key later (another one, or this one
            // after a restart) sends it nowhere else. Without the store's word, nothing is sent.
            if let Some(s) = settle.as_deref_mut() {
                if let Err(e) = s.record_attempt(&provider).await {
                    drop(admitted);
                    return Err(e);
                }
            }
            let audited = self.audit.is_enabled().then(|| {
                AttemptStart::new(
                    self.audit.now(),
                    &request,
                    self.key
                        .as_ref()
                        .map(|_| &upstream.config.idempotency_header),
                )
            });
            if let Some(prev) = previous {
                self.metrics
                    .retries_total
                    .with_label_values(&[&*route.name, prev.as_str()])
                    .inc();
            }
            if let Some((from, reason)) = failover.take() {
                if from != provider {
                    self.metrics
                        .failovers_total
                        .with_label_values(&[&*route.name, &*from, &*provider, reason])
                        .inc();
                }
            }
            if let Some(info) = &self.info {
                info.set_provider(Arc::clone(&provider));
                info.add_attempt();
                info.set_maybe_sent(true);
            }
            sent += 1;
            state.sent = sent;
            let in_flight = InFlight::start(self.meter.in_flight(&provider));
            let t0 = Instant::now();
            let mut result = self
                .sender
                .send(upstream, request, upstream.config.timeout.min(remaining))
                .await;
            drop(in_flight);
            // An attempt bounded by the route's deadline (the one instant the deadline layer also
            // waits for) ran out of the route's time, not the provider's.
            if let Err(e) = &mut result {
                if remaining < upstream.config.timeout
                    && matches!(e.error, ProxyError::ProviderTimeout { .. })
                {
                    e.error = ProxyError::DeadlineExceeded {
                        timeout: route.timeout,
                        reached: Reached::Maybe,
                    };
                }
            }
            let c = classify(observed(&result), state.unknown_before, SystemTime::now());
            let answered_at = Instant::now();
            let latency = answered_at.saturating_duration_since(t0);
            admitted.finish(c.breaker, c.hint, latency, answered_at.into_std());
            if let Some(start) = audited {
                self.audit.record(
                    start.finish(AttemptEnd {
                        request_id: self.request_id.to_str().unwrap_or(""),
                        route: &route.name,
                        provider: &provider,
                        attempt: sent,
                        reason,
                        method: &self.parts.method,
                        answer: result.as_ref().ok().map(|r| (r.status(), r.headers())),
                        outcome: c.class,
                        latency,
                        request_body: self
                            .audit
                            .keeps_bodies()
                            .then(|| RecordedBody::new(&self.parts.headers, self.body.clone())),
                    }),
                );
            }
            previous_provider = Some(Arc::clone(&provider));
            self.meter.attempt(&provider, c.class, latency);
            if c.class.reached() == Reached::Maybe {
                unsettled = true;
                if pin.is_none() {
                    pin = Some(Arc::clone(&provider));
                    state.pinned = Some(PinReason::Reached);
                    state.more_targets = false;
                }
                if let Some(s) = settle.as_deref_mut() {
                    // Recorded already; this operation now ends unknown there unless answered.
                    s.may_have_reached(&provider);
                }
            }
            if let Some(info) = &self.info {
                info.set_maybe_sent(unsettled && c.class != OutcomeClass::Processed);
            }

            // The provider's final answer, another target, the same provider again, or stop.
            let withdraw = || {
                budget.is_none_or(|b| {
                    b.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .try_withdraw(answered_at.into_std())
                })
            };
            let sent_attempt = Attempt::Sent {
                class: c.class,
                hint: c.hint,
            };
            let step = decide(
                &state,
                sent_attempt,
                &policy,
                answered_at,
                withdraw,
                rand::random,
            );
            if c.class == OutcomeClass::Unknown {
                state.unknown_before = true;
            }
            if step == Step::Stop(Stop::Answer) {
                let resp = match result {
                    Ok(resp) => resp,
                    Err(e) => return Err(e.error),
                };
                return self.processed(resp, &provider, sent, settle).await;
            }
            last = Some((Arc::clone(&provider), c.class, result));
            previous = Some(c.class);
            match step {
                Step::NextTarget => {
                    failover = Some((Arc::clone(&provider), c.class.as_str()));
                    cursor += 1;
                }
                Step::Retry { after } | Step::WaitForPinned { after } => {
                    state.retries += 1;
                    tokio::time::sleep(after).await;
                }
                Step::Stop(Stop::BudgetExhausted) => {
                    self.metrics
                        .retry_budget_exhausted_total
                        .with_label_values(&[&*route.name])
                        .inc();
                    break;
                }
                Step::Stop(_) => break,
            }
        }

        // Out of attempts, targets, budget or time, without a final answer.
        let Some((provider, class, result)) = last else {
            let error = skipped.unwrap_or(ProxyError::DeadlineExceeded {
                timeout: route.timeout,
                reached: Reached::maybe(unsettled),
            });
            if let Some(p) = &pin {
                self.count_unknown(unsettled, p);
            }
            return Err(error);
        };
        if unsettled {
            // This attempt or an earlier one may have been executed: the shop must not take any of
            // these failures for "nothing happened".
            self.count_unknown(true, &provider);
            if let Some(s) = settle.as_mut() {
                s.finish(s.unknown(&provider)).await;
            }
            return Err(match (class, result) {
                (OutcomeClass::Unknown, Err(e)) => e.error,
                (_, Ok(resp)) => ProxyError::OutcomeUnknown {
                    provider: provider.to_string(),
                    status: Some(resp.status().as_u16()),
                    // The provider's own word on when to ask again (its "still processing" 409
                    // says), within the route's cap.
                    retry_after: crate::outcome::retry_after(resp.headers(), SystemTime::now())
                        .map_or(UNKNOWN_RETRY_AFTER, |d| {
                            d.clamp(
                                UNKNOWN_RETRY_AFTER,
                                policy.retry_after_cap.max(UNKNOWN_RETRY_AFTER),
                            )
                        }),
                },
                (_, Err(_)) => ProxyError::OutcomeUnknown {
                    provider: provider.to_string(),
                    status: None,
                    retry_after: UNKNOWN_RETRY_AFTER,
                },
            });
        }
        // Nothing was executed: the record ends (a pin from before stays), the shop gets the provider's
        // own answer (a 429) or the proxy's.
        match result {
            Ok(resp) => {
                let mut resp = respond(resp);
                self.decorate(&mut resp, &provider, sent);
                Ok(resp)
            }
            Err(e) => Err(e.error),
        }
    }
}

/// When the shop is told to retry an operation whose outcome is unknown, unless the provider said.
const UNKNOWN_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// The provider, class and result of the last attempt sent.
type LastAttempt<B> = (Arc<str>, OutcomeClass, AttemptResult<B>);

/// What one attempt showed, for the classifier.
fn observed<B>(result: &AttemptResult<B>) -> Seen<'_> {
    match result {
        Ok(resp) => Ok((resp.status(), resp.headers())),
        Err(e) => Err(e.failure),
    }
}

/// No retry budget is asked about a refusal that sent nothing.
fn no_budget() -> bool {
    false
}

/// No backoff follows a refusal that sent nothing.
fn no_jitter() -> f64 {
    0.0
}

/// The proxy's answer when a refusal that sent nothing stops the operation: the pinned provider cannot
/// take it, and no other may; `reached` says whether an earlier attempt may have reached it.
fn refusal(stop: Stop, provider: &str, reached: Reached) -> ProxyError {
    let retry_after = match stop {
        Stop::PinnedUnavailable { retry_after } => retry_after,
        _ => std::time::Duration::from_secs(1),
    };
    ProxyError::PinnedProviderUnavailable {
        provider: provider.to_owned(),
        retry_after,
        reached,
    }
}

#[cfg(test)]
mod tests {
    //! The loop over a scripted sender, on paused time: which providers each script reaches, how
    //! often, and what the shop gets.

    use std::collections::{HashMap, VecDeque};
    use std::future::Future;
    use std::path::Path;
    use std::sync::Mutex;
    use std::time::Duration;

    use http::{HeaderValue, Method, StatusCode};
    use http_body_util::Full;
    use tower::Service;

    use super::*;
    use crate::config::PlaceholderSecrets;
    use crate::ctx::RouteCtx;
    use crate::error::ErrorKind;
    use crate::generation::Generation;
    use crate::health::States;
    use crate::idempotency::RouteStores;
    use crate::layers::forward::Forward;
    use crate::limits::RouteLimits;
    use crate::metrics::Metrics;
    use crate::retry::RouteBudgets;
    use crate::state::Stores;
    use crate::upstream::{SendError, SendFailure, Upstream, Upstreams};

    /// What a scripted provider does with one attempt.
    #[derive(Debug, Clone)]
    enum Reply {
        /// Fails this way.
        Fail(SendFailure),
        /// Takes the request and says nothing until the attempt's timeout.
        Hang,
        /// Answers with this status and these headers.
        Answer(u16, &'static [(&'static str, &'static str)]),
    }

    type Replies = HashMap<&'static str, VecDeque<Reply>>;

    /// Each provider's replies in order (200 once its script is done), and every attempt made.
    #[derive(Clone, Default)]
    struct Script(Arc<Mutex<(Replies, Vec<String>)>>, Log);

    /// Sends (`send:a`) and a recording store's calls, in the order they happened.
    type Log = Arc<Mutex<Vec<String>>>;

    impl Script {
        fn new(replies: &[(&'static str, Reply)]) -> Self {
            let s = Self::default();
            for (provider, reply) in replies {
                s.lock()
                    .0
                    .entry(provider)
                    .or_default()
                    .push_back(reply.clone());
            }
            s
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, (Replies, Vec<String>)> {
            self.0.lock().unwrap_or_else(|p| p.into_inner())
        }

        /// The providers the attempts went to, in order.
        fn calls(&self) -> Vec<String> {
            self.lock().1.clone()
        }
    }

    fn failed(f: SendFailure, provider: &str, timeout: Duration) -> AttemptResult<Full<Bytes>> {
        let provider = provider.to_owned();
        let error = match f {
            SendFailure::Connect | SendFailure::BeforeWrite => ProxyError::ProviderUnreachable {
                provider,
                source: "scripted".into(),
            },
            SendFailure::Tls => ProxyError::ProviderTls {
                provider,
                source: "scripted".into(),
            },
            SendFailure::RefusedStream | SendFailure::GoAway => {
                ProxyError::ProviderRefused { provider }
            }
            SendFailure::TimeoutAfterWrite => ProxyError::ProviderTimeout { provider, timeout },
            SendFailure::AfterWrite => ProxyError::ProviderFailed {
                provider,
                source: "scripted".into(),
            },
        };
        Err(SendError { failure: f, error })
    }

    impl SendAttempt for Script {
        type Body = Full<Bytes>;

        fn send(
            &self,
            upstream: &Upstream,
            _: Request<Bytes>,
            timeout: Duration,
        ) -> impl Future<Output = AttemptResult<Full<Bytes>>> + Send {
            let name = upstream.config.name.to_string();
            self.1
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(format!("send:{name}"));
            let reply = {
                let mut s = self.lock();
                s.1.push(name.clone());
                s.0.get_mut(name.as_str()).and_then(VecDeque::pop_front)
            };
            async move {
                match reply {
                    Some(Reply::Fail(f)) => failed(f, &name, timeout),
                    Some(Reply::Hang) => {
                        tokio::time::sleep(timeout).await;
                        failed(SendFailure::TimeoutAfterWrite, &name, timeout)
                    }
                    Some(Reply::Answer(status, headers)) => {
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"{}")));
                        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or_default();
                        for (k, v) in headers {
                            resp.headers_mut().insert(*k, HeaderValue::from_static(v));
                        }
                        Ok(resp)
                    }
                    None => Ok(Response::new(Full::new(Bytes::from_static(b"ok")))),
                }
            }
        }
    }

    /// Providers `a` then `b` (never dialled: the script answers), one route with `extra` lines.
    fn generation(extra: &str, metrics: &Metrics) -> Arc<Generation> {
        let yaml = format!(
            "listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
providers:
  a:
    url: http://127.0.0.1:9
    timeout: 2s
  b:
    url: http://127.0.0.1:9
    timeout: 2s
routes:
  - name: payments
    match: {{ path_prefix: / }}
    timeout: 30s
    targets:
      - {{ provider: a, priority: 0 }}
      - {{ provider: b, priority: 1 }}
{extra}"
        );
        let snapshot = match crate::config::load(&yaml, Path::new("/"), &PlaceholderSecrets) {
            Ok(s) => s,
            Err(e) => panic!("{e}\n{yaml}"),
        };
        let now = std::time::Instant::now();
        let upstreams = match Upstreams::build(&snapshot, None) {
            Ok(u) => u,
            Err(problems) => panic!("{problems:?}"),
        };
        let state = Arc::new(Stores::memory());
        Arc::new(Generation {
            number: 1,
            upstreams,
            health: States::build(&snapshot, None, metrics, now),
            route_limits: RouteLimits::build(&snapshot, None),
            idempotency: RouteStores::build(
                &snapshot,
                None,
                &metrics.idempotency_evictions_total,
                &state,
            ),
            pins: Arc::new(state.pins(snapshot.pins.ttl, snapshot.pins.max_entries)),
            state,
            retry_budgets: RouteBudgets::build(&snapshot, None, now),
            meters: crate::meters::Meters::new(metrics),
            snapshot: Arc::new(snapshot),
            sha256: String::new(),
            loaded_at: std::time::SystemTime::now(),
        })
    }

    /// A POST /v1/charges through the loop with `script`; keyed unless the route turns keys off.
    async fn pay(extra: &str, script: &Script) -> Result<Response<ProxyBody>, ProxyError> {
        send(extra, script, Method::POST).await
    }

    async fn send(
        extra: &str,
        script: &Script,
        method: Method,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let metrics = Metrics::new();
        let generation = generation(extra, &metrics);
        send_on(generation, metrics, script, method).await
    }

    /// A keyed POST through the loop whose route's store logs into the script's log; the store
    /// refuses to record attempts when `refuse_attempts`.
    async fn pay_recorded(
        script: &Script,
        refuse_attempts: bool,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        use crate::idempotency::{Limits, MemoryStore};
        use crate::state::{Recording, Records};
        let metrics = Metrics::new();
        let generation = generation("", &metrics);
        let mut generation = Arc::try_unwrap(generation).unwrap_or_else(|_| unreachable!());
        let recording = Recording {
            inner: MemoryStore::new(Limits {
                ttl: Duration::from_secs(60),
                max_entries: 100,
                max_bytes: 1 << 20,
            }),
            log: Arc::clone(&script.1),
            refuse_attempts: refuse_attempts.into(),
        };
        generation
            .idempotency
            .replace("payments", Arc::new(Records::Recording(recording)));
        send_on(Arc::new(generation), metrics, script, Method::POST).await
    }

    async fn send_on(
        generation: Arc<Generation>,
        metrics: Metrics,
        script: &Script,
        method: Method,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let route = Arc::clone(&generation.snapshot.routes[0]);
        let deadline = Instant::now() + route.timeout;
        let mut req = Request::new(Bytes::from_static(b"amount=100"));
        *req.method_mut() = method;
        *req.uri_mut() = http::Uri::from_static("/v1/charges");
        let mut req = crate::ctx::Req::new(req);
        req.ctx.route = Some(RouteCtx::new(generation, route, deadline));
        Forward::with_sender(metrics, script.clone())
            .call(req)
            .await
    }

    /// The provider that answered the shop.
    fn answered_by(resp: &Response<ProxyBody>) -> &str {
        resp.headers()
            .get("x-switchyard-provider")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    const NO_KEYS: &str = "    idempotency: { mode: off }";
    const NO_FAILOVER_ON_NOT_PROCESSED: &str = "    failover: { on_not_processed: false }";
    const FOUR_ATTEMPTS: &str = "    retry: { attempts: 4 }";

    /// The shared log: sends and store calls.
    fn events(script: &Script) -> Vec<String> {
        script.1.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    #[tokio::test(start_paused = true)]
    async fn every_provider_is_recorded_in_the_store_before_it_is_sent_to() {
        // The claim records the first provider; a move to another is recorded, then sent.
        let script = Script::new(&[("a", Reply::Fail(SendFailure::Connect))]);
        let resp = pay_recorded(&script, false).await.unwrap();
        assert_eq!(answered_by(&resp), "b");
        assert_eq!(
            events(&script),
            ["begin:a", "send:a", "attempt:b", "send:b", "finish:final@b"]
        );
        // Written then reset: the retry goes to the recorded provider with no new record, and the
        // operation ends unknown there.
        let script = Script::new(&[
            ("a", Reply::Fail(SendFailure::AfterWrite)),
            ("a", Reply::Fail(SendFailure::AfterWrite)),
            ("a", Reply::Fail(SendFailure::AfterWrite)),
        ]);
        let e = pay_recorded(&script, false).await.unwrap_err();
        assert_eq!(e.reached(), Reached::Maybe, "{e:?}");
        let log = events(&script);
        assert!(!log.iter().any(|e| e.contains(":b")), "{log:?}");
        assert_eq!(log.last().map(String::as_str), Some("finish:unknown@a"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_provider_the_store_could_not_record_is_never_sent_to() {
        let script = Script::new(&[("a", Reply::Fail(SendFailure::Connect))]);
        let e = pay_recorded(&script, true).await.unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::StateUnavailable, "{e:?}");
        assert_eq!(script.calls(), ["a"], "b was never recorded, so never sent");
        assert_eq!(
            events(&script),
            [
                "begin:a",
                "send:a",
                "attempt-refused:b",
                "finish:nothing_sent"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn connect_refused_moves_to_the_next_target_at_once() {
        let script = Script::new(&[("a", Reply::Fail(SendFailure::Connect))]);
        let t0 = Instant::now();
        let resp = pay("", &script).await.unwrap();
        assert_eq!(script.calls(), ["a", "b"]);
        assert_eq!((resp.status(), answered_by(&resp)), (StatusCode::OK, "b"));
        assert_eq!(t0.elapsed(), Duration::ZERO, "no backoff before a failover");
    }

    #[tokio::test(start_paused = true)]
    async fn written_then_reset_stays_with_the_provider_and_needs_a_key() {
        // Keyed: the same provider again, never another.
        let script = Script::new(&[("a", Reply::Fail(SendFailure::AfterWrite))]);
        let resp = pay("", &script).await.unwrap();
        assert_eq!(script.calls(), ["a", "a"]);
        assert_eq!((resp.status(), answered_by(&resp)), (StatusCode::OK, "a"));
        // Without a key a POST is not sent again: the shop is told the outcome is unknown.
        let script = Script::new(&[("a", Reply::Fail(SendFailure::AfterWrite))]);
        let err = pay(NO_KEYS, &script).await.unwrap_err();
        assert_eq!(script.calls(), ["a"]);
        assert_eq!(err.kind(), ErrorKind::ProviderFailed);
        assert_eq!(
            err.reached(),
            Reached::Maybe,
            "the error says it may have run"
        );
        // ... but an idempotent method is.
        let script = Script::new(&[("a", Reply::Fail(SendFailure::AfterWrite))]);
        let resp = send(NO_KEYS, &script, Method::GET).await.unwrap();
        assert_eq!(script.calls(), ["a", "a"]);
        assert_eq!(resp.status(), StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_after_the_write_retries_the_same_provider_after_its_timeout() {
        let script = Script::new(&[("a", Reply::Hang)]);
        let t0 = Instant::now();
        let resp = pay("", &script).await.unwrap();
        assert_eq!(script.calls(), ["a", "a"]);
        assert_eq!(answered_by(&resp), "a");
        assert!(t0.elapsed() >= Duration::from_secs(2));
        // Every attempt hangs: the shop learns the provider timed out, with the outcome unknown.
        let script = Script::new(&[("a", Reply::Hang), ("a", Reply::Hang), ("a", Reply::Hang)]);
        let err = pay("", &script).await.unwrap_err();
        assert_eq!(script.calls(), ["a", "a", "a"]);
        assert_eq!(err.kind(), ErrorKind::ProviderTimeout);
    }

    #[tokio::test(start_paused = true)]
    async fn refused_streams_and_goaway_below_our_stream_fail_over() {
        for refusal in [SendFailure::RefusedStream, SendFailure::GoAway] {
            let script = Script::new(&[("a", Reply::Fail(refusal))]);
            let resp = pay("", &script).await.unwrap();
            assert_eq!(script.calls(), ["a", "b"], "{refusal:?}");
            assert_eq!(answered_by(&resp), "b");
        }
        // Refused everywhere: nothing ran anywhere, and the error says so.
        for refusal in [SendFailure::RefusedStream, SendFailure::Connect] {
            let no = Reply::Fail(refusal);
            let script = Script::new(&[("a", no.clone()), ("b", no.clone()), ("b", no)]);
            let err = pay("", &script).await.unwrap_err();
            assert_eq!(script.calls(), ["a", "b", "b"], "{refusal:?}");
            assert_eq!(err.reached(), Reached::No, "{refusal:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn goaway_above_our_stream_is_unknown_and_never_fails_over() {
        // The provider's GOAWAY covered our stream, then the connection went: it may have run it.
        let script = Script::new(&[
            ("a", Reply::Fail(SendFailure::AfterWrite)),
            ("a", Reply::Fail(SendFailure::AfterWrite)),
            ("a", Reply::Fail(SendFailure::AfterWrite)),
        ]);
        let err = pay("", &script).await.unwrap_err();
        assert_eq!(script.calls(), ["a", "a", "a"]);
        assert_eq!(err.kind(), ErrorKind::ProviderFailed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_fails_over_or_waits_its_retry_after() {
        const THROTTLED: Reply = Reply::Answer(429, &[("retry-after", "1")]);
        let script = Script::new(&[("a", THROTTLED)]);
        let resp = pay("", &script).await.unwrap();
        assert_eq!(script.calls(), ["a", "b"]);
        assert_eq!(answered_by(&resp), "b");
        // A route that keeps not-executed attempts at their provider waits as it was told.
        let script = Script::new(&[("a", THROTTLED)]);
        let t0 = Instant::now();
        let resp = pay(NO_FAILOVER_ON_NOT_PROCESSED, &script).await.unwrap();
        assert_eq!(script.calls(), ["a", "a"]);
        assert_eq!(answered_by(&resp), "a");
        assert!(t0.elapsed() >= Duration::from_secs(1));
        // Throttled to the end: the shop gets the provider's own 429.
        let script = Script::new(&[("a", THROTTLED), ("a", THROTTLED), ("a", THROTTLED)]);
        let resp = pay(NO_FAILOVER_ON_NOT_PROCESSED, &script).await.unwrap();
        assert_eq!(script.calls(), ["a", "a", "a"]);
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    }

    #[tokio::test(start_paused = true)]
    async fn an_in_progress_409_to_a_retry_of_an_unknown_outcome_stays_with_the_provider() {
        let script = Script::new(&[
            ("a", Reply::Fail(SendFailure::AfterWrite)),
            (
                "a",
                Reply::Answer(
                    409,
                    &[("stripe-should-retry", "true"), ("retry-after", "1")],
                ),
            ),
        ]);
        let resp = pay(FOUR_ATTEMPTS, &script).await.unwrap();
        assert_eq!(script.calls(), ["a", "a", "a"]);
        assert_eq!((resp.status(), answered_by(&resp)), (StatusCode::OK, "a"));
    }

    #[tokio::test(start_paused = true)]
    async fn stripes_idempotency_key_in_use_is_never_the_payments_answer() {
        // Stripe's in-progress 409 has no marker: after an unknown attempt it is still unknown.
        const IN_USE: Reply = Reply::Answer(409, &[]);
        let script = Script::new(&[("a", Reply::Fail(SendFailure::AfterWrite)), ("a", IN_USE)]);
        let resp = pay(FOUR_ATTEMPTS, &script).await.unwrap();
        assert_eq!(script.calls(), ["a", "a", "a"], "retried there, never b");
        assert_eq!((resp.status(), answered_by(&resp)), (StatusCode::OK, "a"));
        // Still processing to the last attempt: unknown, with the provider's Retry-After.
        let script = Script::new(&[
            ("a", Reply::Hang),
            ("a", Reply::Answer(409, &[("retry-after", "2")])),
            ("a", Reply::Answer(409, &[("retry-after", "2")])),
        ]);
        let err = pay("", &script).await.unwrap_err();
        assert_eq!(script.calls(), ["a", "a", "a"]);
        assert_eq!(err.kind(), ErrorKind::OutcomeUnknown);
        assert_eq!(err.reached(), Reached::Maybe);
        assert_eq!(err.retry_after(), Some(Duration::from_secs(2)));
        // A first attempt's 409 is the provider's final answer, passed on.
        let script = Script::new(&[("a", IN_USE)]);
        let resp = pay("", &script).await.unwrap();
        assert_eq!(script.calls(), ["a"]);
        assert_eq!(resp.status(), StatusCode::CONFLICT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_5xx_is_unknown_unless_marked_not_executed() {
        // No marker: the same provider again with the key, never another.
        let script = Script::new(&[("a", Reply::Answer(503, &[]))]);
        let resp = pay("", &script).await.unwrap();
        assert_eq!(script.calls(), ["a", "a"]);
        assert_eq!(answered_by(&resp), "a");
        // Without a key: not sent again; the shop is told the outcome is unknown.
        let script = Script::new(&[("a", Reply::Answer(500, &[]))]);
        let err = pay(NO_KEYS, &script).await.unwrap_err();
        assert_eq!(script.calls(), ["a"]);
        assert!(matches!(
            err,
            ProxyError::OutcomeUnknown {
                status: Some(500),
                ..
            }
        ));
        // Stripe-Should-Retry: false stops, key or not.
        let script = Script::new(&[("a", Reply::Answer(500, &[("stripe-should-retry", "false")]))]);
        let err = pay("", &script).await.unwrap_err();
        assert_eq!(script.calls(), ["a"]);
        assert_eq!(err.kind(), ErrorKind::OutcomeUnknown);
        // Adyen's transient-error: not executed, so another provider may take it at once.
        let script = Script::new(&[("a", Reply::Answer(503, &[("transient-error", "true")]))]);
        let resp = pay("", &script).await.unwrap();
        assert_eq!(script.calls(), ["a", "b"]);
        assert_eq!(answered_by(&resp), "b");
    }

    #[tokio::test(start_paused = true)]
    async fn a_decline_is_the_answer_and_never_retried() {
        let script = Script::new(&[("a", Reply::Answer(402, &[]))]);
        let resp = pay("", &script).await.unwrap();
        assert_eq!(script.calls(), ["a"]);
        assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED);
    }
}
