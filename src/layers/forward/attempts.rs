//! The attempt loop: the providers to try, one attempt after another, until an answer or a reason to
//! stop.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::decide::{breaker_wait, decide, Attempt, OpState, PinReason, Policy, Step, Stop};
use super::operation::{is_idempotent, respond, Operation, Settle};
use crate::audit::{AttemptEnd, AttemptReason, AttemptStart, RecordedBody};
use crate::body::ProxyBody;
use crate::config::validate::Provider;
use crate::error::ProxyError;
use crate::health::breaker::Admission;
use crate::health::{self, Admitted};
use crate::idempotency::{Finish, Store};
use crate::metrics::InFlight;
use crate::outcome::{classify, Observed, OutcomeClass};
use crate::upstream::{SendError, SendFailure};

impl Operation {
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
    fn order(&self, pinned: Option<&Arc<str>>, now: Instant) -> Result<Vec<Arc<str>>, ProxyError> {
        if let Some(p) = pinned {
            return Ok(vec![Arc::clone(p)]);
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
                .find(self.parts.uri.path(), &self.body, now.into_std())
                .filter(|p| g.upstreams.get(p).is_some())
                .inspect(|_| state.pinned = Some(PinReason::PaymentObject)),
        };
        let order = self.order(pin.as_ref(), now)?;
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
        let mut last: Option<LastAttempt> = None;

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
                    Step::Stop(stop) => return Err(refusal(stop, &provider, None)),
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
                        Step::Stop(stop) => return Err(refusal(stop, &provider, None)),
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
                if let Err(wait) = gate.acquire().await {
                    self.metrics
                        .rate_limited_total
                        .with_label_values(&[&*route.name, "provider"])
                        .inc();
                    drop(admitted);
                    let error = ProxyError::ProviderQuotaExhausted {
                        provider: provider.to_string(),
                        retry_after: wait,
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
                        Step::Stop(stop) => return Err(refusal(stop, &provider, Some(error))),
                        _ => {
                            skipped = Some(error);
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
            let in_flight = InFlight::start(
                self.metrics
                    .upstream_requests_in_flight
                    .with_label_values(&[&*provider]),
            );
            let t0 = Instant::now();
            let mut result = upstream
                .send(request, upstream.config.timeout.min(remaining))
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
                    };
                }
            }
            let c = classify(observed(&result), SystemTime::now());
            let answered_at = Instant::now();
            let latency = answered_at.saturating_duration_since(t0);
            admitted.finish(c.breaker, c.hint, latency, answered_at.into_std());
            self.metrics
                .attempt_duration_seconds
                .with_label_values(&[&*route.name, &*provider])
                .observe(latency.as_secs_f64());
            if let Some(start) = audited {
                self.audit.record(
                    start.finish(AttemptEnd {
                        request_id: &self.request_id,
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
            self.metrics
                .attempts_total
                .with_label_values(&[&*route.name, &*provider, c.class.as_str()])
                .inc();
            if c.class.may_have_reached() {
                unsettled = true;
                if pin.is_none() {
                    pin = Some(Arc::clone(&provider));
                    state.pinned = Some(PinReason::Reached);
                    state.more_targets = false;
                }
                if let (Some(k), Some(_)) = (&self.key, &settle) {
                    k.store.pin(&k.record, &provider);
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
            });
            return Err(error);
        };
        if unsettled {
            // This attempt or an earlier one may have been executed: the shop must not take any of
            // these failures for "nothing happened".
            self.metrics
                .unknown_outcomes_total
                .with_label_values(&[&*route.name, &*provider])
                .inc();
            if let Some(s) = settle.as_mut() {
                s.finish(Finish::Unknown {
                    provider: Arc::clone(&provider),
                });
            }
            return Err(match (class, result) {
                (OutcomeClass::Unknown, Err(e)) => e.error,
                (_, Ok(resp)) => ProxyError::OutcomeUnknown {
                    provider: provider.to_string(),
                    status: Some(resp.status().as_u16()),
                },
                (_, Err(_)) => ProxyError::OutcomeUnknown {
                    provider: provider.to_string(),
                    status: None,
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

/// The provider, class and result of the last attempt sent.
type LastAttempt = (
    Arc<str>,
    OutcomeClass,
    Result<Response<Incoming>, SendError>,
);

/// What one attempt showed, for the classifier.
fn observed(result: &Result<Response<Incoming>, SendError>) -> Observed<'_> {
    match result {
        Ok(resp) => Observed::Response {
            status: resp.status(),
            headers: resp.headers(),
        },
        Err(e) => match e.failure {
            SendFailure::Connect => Observed::ConnectFailed,
            SendFailure::Tls => Observed::TlsFailed,
            SendFailure::BeforeWrite => Observed::FailedBeforeWrite,
            SendFailure::RefusedStream => Observed::RefusedStream,
            SendFailure::GoAway => Observed::GoAwayUnprocessed,
            SendFailure::TimeoutAfterWrite => Observed::TimeoutAfterWrite,
            SendFailure::AfterWrite => Observed::FailedAfterWrite,
        },
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
/// take it, and no other may.
fn refusal(stop: Stop, provider: &str, quota: Option<ProxyError>) -> ProxyError {
    match (stop, quota) {
        (Stop::PinnedQuotaExhausted, Some(error)) => error,
        (Stop::PinnedUnavailable { retry_after }, _) => ProxyError::PinnedProviderUnavailable {
            provider: provider.to_owned(),
            retry_after,
        },
        (_, _) => ProxyError::PinnedProviderUnavailable {
            provider: provider.to_owned(),
            retry_after: std::time::Duration::from_secs(1),
        },
    }
}
