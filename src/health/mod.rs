//! Provider health: the circuit breaker, active checks, throttling by the provider, manual drain and
//! slow start, folded into one health score per provider; and from those scores, where a route's
//! traffic goes.
//!
//! [`ProviderState`] is kept by provider name across config reloads ([`States::build`]), so a reload
//! neither closes an open breaker nor forgets a throttle or a drain. Decisions are pure functions of the
//! state and `now` (`breaker`, `checks`, `score`); this module only keeps the state and the metrics.

pub mod breaker;
pub mod checks;
pub mod score;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Snapshot;
use crate::config::{HealthCheck, Provider, Route};
use crate::limits::QuotaGate;
use crate::metrics::Metrics;
use crate::outcome::{BreakerEffect, RetryHint};

use breaker::{Admission, Breaker, BreakerState, CallResult, Transition};
use checks::CheckTracker;
pub use score::PerTarget;
use score::TargetInput;

/// The floor of the slow-start ramp and of the success-rate factor: a provider that is not out gets at
/// least this share of its weight.
const SLOW_START_FLOOR: f64 = 0.1;
/// Throttle window when a provider's 429 has no usable Retry-After.
const DEFAULT_THROTTLE: Duration = Duration::from_secs(1);

/// What one attempt at a provider tells its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It answered (2xx, 3xx, 4xx other than 429): a success for the breaker, declines included.
    Answered,
    /// A technical failure: connect or TLS error, timeout, reset, 5xx.
    Failed,
    /// A 429: the provider asks for less traffic (`Retry-After` if it gave one). Not a failure.
    Throttled(Option<Duration>),
}

struct Inner {
    slow_start: Duration,
    max_throttle: Duration,
    checks_on: bool,
    breaker: Breaker,
    checks: CheckTracker,
    throttled_until: Option<Instant>,
    drained: bool,
    recovered_at: Option<Instant>,
}

/// An attempt the breaker admitted: reports its outcome to the provider's health, or gives back its
/// probe slot if it ends without one (dropped, or with nothing to count).
pub struct Admitted<'a> {
    state: &'a ProviderState,
    probe: bool,
    done: bool,
}

impl<'a> Admitted<'a> {
    /// An attempt `state` admitted, as a probe of a half-open breaker or not.
    pub fn new(state: &'a ProviderState, probe: bool) -> Self {
        Self {
            state,
            probe,
            done: false,
        }
    }

    /// Reports the attempt: what the breaker makes of it, and the provider's retry hint (a 429's
    /// `Retry-After` sets the throttle window).
    pub fn finish(
        mut self,
        effect: BreakerEffect,
        hint: RetryHint,
        elapsed: Duration,
        now: Instant,
    ) {
        self.done = true;
        let outcome = match effect {
            BreakerEffect::Success => Outcome::Answered,
            BreakerEffect::Failure => Outcome::Failed,
            BreakerEffect::Throttled => Outcome::Throttled(match hint {
                RetryHint::After(d) => Some(d),
                _ => None,
            }),
            BreakerEffect::None => {
                if self.probe {
                    self.state.release_probe();
                }
                return;
            }
        };
        self.state.record(now, self.probe, outcome, elapsed);
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if !self.done && self.probe {
            self.state.release_probe();
        }
    }
}

/// One provider's health state.
pub struct ProviderState {
    name: Arc<str>,
    inner: Mutex<Inner>,
    quota: Mutex<Option<Arc<QuotaGate>>>,
    metrics: Metrics,
}

impl std::fmt::Debug for ProviderState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderState")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ProviderState {
    /// A fresh state for `provider`: breaker closed, healthy.
    pub fn new(provider: &Provider, metrics: &Metrics, now: Instant) -> Self {
        let seed = rand::random::<u64>();
        Self {
            name: Arc::clone(&provider.name),
            inner: Mutex::new(Inner {
                slow_start: provider.slow_start,
                max_throttle: provider.max_throttle,
                checks_on: provider.health_check.is_some(),
                breaker: Breaker::new(provider.breaker.clone(), now, seed),
                checks: CheckTracker::default(),
                throttled_until: None,
                drained: false,
                recovered_at: None,
            }),
            quota: Mutex::new(provider.quota.map(|q| Arc::new(QuotaGate::new(q)))),
            metrics: metrics.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The provider's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Applies a reloaded config, keeping breaker state, throttle and drain.
    pub fn reconfigure(&self, provider: &Provider, now: Instant) {
        let mut inner = self.lock();
        inner.slow_start = provider.slow_start;
        inner.max_throttle = provider.max_throttle;
        inner.breaker.reconfigure(provider.breaker.clone(), now);
        if provider.health_check.is_none() {
            inner.checks.clear();
        }
        inner.checks_on = provider.health_check.is_some();
        drop(inner);
        let mut quota = self.quota.lock().unwrap_or_else(|p| p.into_inner());
        let same = match (&*quota, provider.quota) {
            (Some(gate), Some(q)) => gate.quota() == q,
            (None, None) => true,
            _ => false,
        };
        if !same {
            *quota = provider.quota.map(|q| Arc::new(QuotaGate::new(q)));
        }
    }

    /// Has the fleet share this provider's quota through `store` (a gate counted here is replaced; one
    /// already shared stays), this sidecar taking `share` of it while the store cannot answer.
    pub fn share_quota(&self, store: &crate::state::redis::RedisQuota, share: f64) {
        let mut quota = self.quota.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(gate) = quota.as_ref().filter(|g| !g.is_shared()) {
            *quota = Some(Arc::new(QuotaGate::shared(
                gate.quota(),
                Arc::clone(&self.name),
                store.clone(),
                share,
            )));
        }
    }

    /// The provider's quota gate, if it has a quota.
    pub fn quota(&self) -> Option<Arc<QuotaGate>> {
        self.quota.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The health score in [0, 1]: zero while the breaker is not Closed, checks fail, the provider is
    /// drained or throttled; else its recent success rate, scaled by the slow-start ramp.
    pub fn health(&self, now: Instant) -> f64 {
        let inner = self.lock();
        if inner.drained
            || inner.checks.unhealthy()
            || inner.throttled_until.is_some_and(|t| now < t)
            || inner.breaker.state(now) != BreakerState::Closed
        {
            return 0.0;
        }
        // Only the causes above take a provider out; a poor success rate only lowers its share.
        let success = inner
            .breaker
            .success_rate(now)
            .unwrap_or(1.0)
            .max(SLOW_START_FLOOR);
        success * ramp(&inner, now)
    }

    /// Whether the breaker would let a probe through now (and nothing else stops it).
    pub fn probe_ready(&self, now: Instant) -> bool {
        let inner = self.lock();
        !inner.drained && !inner.checks.unhealthy() && inner.breaker.probe_ready(now)
    }

    /// How long until this provider may take traffic again, when something time-bound stops it.
    pub fn retry_in(&self, now: Instant) -> Option<Duration> {
        let inner = self.lock();
        let open = inner.breaker.open_remaining(now);
        let throttled = inner
            .throttled_until
            .and_then(|t| t.checked_duration_since(now));
        match (open, throttled) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether an attempt would be let through now, without asking for one: not drained, checks not
    /// failing, not throttled, and the breaker closed or ready for a probe (the resolver sends an
    /// unknown operation again only to a provider that would take it).
    pub fn would_admit(&self, now: Instant) -> bool {
        let inner = self.lock();
        !inner.drained
            && !inner.checks.unhealthy()
            && inner.throttled_until.is_none_or(|t| now >= t)
            && (inner.breaker.state(now) == BreakerState::Closed || inner.breaker.probe_ready(now))
    }

    /// When the provider last came back (its breaker closed again, its checks passed again, or it
    /// was undrained): the resolver tries again what it tried before.
    pub fn recovered_at(&self) -> Option<Instant> {
        self.lock().recovered_at
    }

    /// Asks the breaker to send one attempt now.
    pub fn admit(&self, now: Instant) -> Admission {
        let (admission, transition) = self.lock().breaker.admit(now);
        self.transitioned(transition);
        admission
    }

    /// Gives back a probe slot whose attempt ended without an answer.
    pub fn release_probe(&self) {
        self.lock().breaker.release_probe();
    }

    /// Records an attempt's outcome.
    pub fn record(&self, now: Instant, probe: bool, outcome: Outcome, elapsed: Duration) {
        let mut inner = self.lock();
        let transition = match outcome {
            Outcome::Answered => inner
                .breaker
                .record(now, probe, CallResult::Success, elapsed),
            Outcome::Failed => inner
                .breaker
                .record(now, probe, CallResult::Failure, elapsed),
            Outcome::Throttled(retry_after) => {
                let window = retry_after
                    .unwrap_or(DEFAULT_THROTTLE)
                    .min(inner.max_throttle);
                let until = now + window;
                inner.throttled_until = Some(inner.throttled_until.map_or(until, |t| t.max(until)));
                if probe {
                    inner.breaker.release_probe();
                }
                None
            }
        };
        if transition.is_some_and(|t| t.to == BreakerState::Closed) {
            inner.recovered_at = Some(now);
        }
        drop(inner);
        self.transitioned(transition);
    }

    /// Records an active check's result.
    pub fn record_check(&self, result: Result<(), String>, cfg: &HealthCheck, now: Instant) {
        let pass = result.is_ok();
        let mut inner = self.lock();
        if !inner.checks_on {
            return;
        }
        let changed = inner.checks.record(result, cfg);
        if changed == Some(true) {
            inner.recovered_at = Some(now);
        }
        let last_error = inner.checks.last_error().map(str::to_owned);
        drop(inner);
        self.metrics
            .health_checks_total
            .with_label_values(&[&*self.name, if pass { "pass" } else { "fail" }])
            .inc();
        match changed {
            Some(false) => {
                tracing::warn!(provider = %self.name, error = last_error.as_deref().unwrap_or(""), "health checks failing: provider unhealthy")
            }
            Some(true) => {
                tracing::info!(provider = %self.name, "health checks passing again: provider healthy")
            }
            None => {}
        }
    }

    /// Drains (no new traffic) or undrains the provider.
    pub fn set_drained(&self, drained: bool, now: Instant) {
        let mut inner = self.lock();
        if inner.drained && !drained {
            inner.recovered_at = Some(now);
        }
        inner.drained = drained;
        tracing::info!(provider = %self.name, drained, "provider drain changed by an operator");
    }

    /// Closes the breaker and clears throttle and check history (the drain stays).
    pub fn reset(&self, now: Instant) {
        let mut inner = self.lock();
        let transition = inner.breaker.reset(now);
        inner.throttled_until = None;
        inner.checks.clear();
        inner.recovered_at = None;
        drop(inner);
        self.transitioned(transition);
    }

    fn transitioned(&self, transition: Option<Transition>) {
        let Some(t) = transition else { return };
        self.metrics
            .breaker_transitions_total
            .with_label_values(&[&*self.name, t.from.as_str(), t.to.as_str()])
            .inc();
        match t.to {
            BreakerState::Open => {
                tracing::warn!(provider = %self.name, from = t.from.as_str(), "circuit breaker opened")
            }
            _ => {
                tracing::info!(provider = %self.name, from = t.from.as_str(), to = t.to.as_str(), "circuit breaker changed")
            }
        }
    }

    /// Sets this provider's gauges.
    fn publish(&self, now: Instant) {
        let health = self.health(now);
        let inner = self.lock();
        let state = inner.breaker.state(now);
        let throttled = inner.throttled_until.is_some_and(|t| now < t);
        let drained = inner.drained;
        drop(inner);
        let name = &*self.name;
        for s in BreakerState::ALL {
            self.metrics
                .breaker_state
                .with_label_values(&[name, s.as_str()])
                .set(i64::from(s == state));
        }
        self.metrics
            .provider_health
            .with_label_values(&[name])
            .set(health);
        self.metrics
            .provider_throttled
            .with_label_values(&[name])
            .set(i64::from(throttled));
        self.metrics
            .provider_drained
            .with_label_values(&[name])
            .set(i64::from(drained));
    }

    /// The state as JSON, for `GET /admin/providers`.
    pub fn view(&self, now: Instant) -> serde_json::Value {
        let health = self.health(now);
        let quota = self.quota().map(|g| {
            let q = g.quota();
            serde_json::json!({ "rps": q.rps, "burst": q.burst, "max_wait_ms": q.max_wait.as_millis() as u64 })
        });
        let inner = self.lock();
        let (passes, failures) = inner.checks.runs();
        serde_json::json!({
            "breaker": inner.breaker.state(now).as_str(),
            "breaker_open_remaining_ms": inner.breaker.open_remaining(now).map(|d| d.as_millis() as u64),
            "health": (health * 1000.0).round() / 1000.0,
            "success_rate": inner.breaker.success_rate(now),
            "checks": if inner.checks_on {
                serde_json::json!({
                    "status": if inner.checks.unhealthy() { "unhealthy" } else { "healthy" },
                    "passes_in_a_row": passes,
                    "failures_in_a_row": failures,
                    "last_error": inner.checks.last_error(),
                })
            } else {
                serde_json::Value::Null
            },
            "throttled_remaining_ms": inner.throttled_until.and_then(|t| t.checked_duration_since(now)).map(|d| d.as_millis() as u64),
            "drained": inner.drained,
            "quota": quota,
        })
    }
}

/// The slow-start factor: from the floor back to 1 over `slow_start` after the latest recovery (a
/// breaker closing, checks passing again, an undrain, or a throttle window ending).
fn ramp(inner: &Inner, now: Instant) -> f64 {
    if inner.slow_start.is_zero() {
        return 1.0;
    }
    let start = match (inner.recovered_at, inner.throttled_until) {
        (Some(r), Some(t)) => r.max(t),
        (r, t) => match r.or(t) {
            Some(s) => s,
            None => return 1.0,
        },
    };
    let since = now.saturating_duration_since(start);
    if since >= inner.slow_start {
        return 1.0;
    }
    (since.as_secs_f64() / inner.slow_start.as_secs_f64()).max(SLOW_START_FLOOR)
}

/// Every provider's state, by name.
#[derive(Debug, Default)]
pub struct States {
    by_name: crate::config::NameMap<Arc<ProviderState>>,
}

impl States {
    /// States for the providers of `snapshot`: those of `previous` with the same name are kept and
    /// reconfigured, the others start fresh.
    pub fn build(
        snapshot: &Snapshot,
        previous: Option<&States>,
        metrics: &Metrics,
        now: Instant,
    ) -> Self {
        let mut by_name = crate::config::NameMap::default();
        for (name, provider) in &snapshot.providers {
            let state = match previous.and_then(|p| p.by_name.get(name)) {
                Some(kept) => {
                    kept.reconfigure(provider, now);
                    Arc::clone(kept)
                }
                None => Arc::new(ProviderState::new(provider, metrics, now)),
            };
            by_name.insert(Arc::clone(name), state);
        }
        Self { by_name }
    }

    /// The state of provider `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<ProviderState>> {
        self.by_name.get(name)
    }

    /// All states.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<ProviderState>> {
        self.by_name.values()
    }
}

fn inputs(route: &Route, states: &States, now: Instant) -> PerTarget<TargetInput> {
    route
        .targets
        .iter()
        .map(|t| TargetInput {
            priority: t.priority,
            weight: t.weight,
            health: states.get(&t.provider).map_or(0.0, |s| s.health(now)),
        })
        .collect()
}

/// Each target's share of `route`'s traffic now.
pub fn route_shares(route: &Route, states: &States, now: Instant) -> Vec<f64> {
    score::shares(&inputs(route, states, now), route.overprovisioning).into_vec()
}

/// The order in which to try `route`'s targets (indexes into `route.targets`): a probe for a provider
/// whose breaker waits for one comes first when it is at least as preferred as the target picked by
/// share; then the target picked by share (`unit` uniform in [0, 1)); then the other targets with a
/// share, then the other healthy ones, by priority (they are where an attempt goes when the one before
/// it was not sent: a breaker refused it or its quota had no slot); then any other provider ready for a
/// probe. `Err(retry_after)` when no target can
/// take the request.
pub fn plan(
    route: &Route,
    states: &States,
    now: Instant,
    unit: f64,
) -> Result<PerTarget<usize>, Duration> {
    let inputs = inputs(route, states, now);
    let shares = score::shares(&inputs, route.overprovisioning);
    let picked = score::pick(&shares, unit);
    let probe_ready = |i: usize| {
        states
            .get(&route.targets[i].provider)
            .is_some_and(|s| s.probe_ready(now))
    };
    let mut order = PerTarget::new();
    let first_probe = (0..route.targets.len())
        .filter(|&i| probe_ready(i))
        .min_by_key(|&i| (route.targets[i].priority, i));
    if let Some(p) = first_probe {
        if picked.is_none_or(|k| route.targets[p].priority <= route.targets[k].priority) {
            order.push(p);
        }
    }
    if let Some(k) = picked {
        order.push(k);
    }
    let mut rest: PerTarget<usize> = (0..route.targets.len())
        .filter(|&i| inputs[i].health > 0.0 && !order.contains(&i))
        .collect();
    rest.sort_by(|&a, &b| {
        route.targets[a]
            .priority
            .cmp(&route.targets[b].priority)
            .then(shares[b].total_cmp(&shares[a]))
    });
    order.extend(rest);
    for i in 0..route.targets.len() {
        if !order.contains(&i) && probe_ready(i) {
            order.push(i);
        }
    }
    if order.is_empty() {
        let retry = route
            .targets
            .iter()
            .filter_map(|t| states.get(&t.provider)?.retry_in(now))
            .min()
            .unwrap_or(Duration::from_secs(1));
        return Err(retry);
    }
    Ok(order)
}

/// Sets every health gauge, and each route target's share, from the current state.
pub fn publish(snapshot: &Snapshot, states: &States, metrics: &Metrics, now: Instant) {
    metrics.breaker_state.reset();
    metrics.provider_health.reset();
    metrics.provider_throttled.reset();
    metrics.provider_drained.reset();
    metrics.route_target_share.reset();
    metrics.route_backup_share.reset();
    for state in states.iter() {
        state.publish(now);
    }
    for route in &snapshot.routes {
        let shares = route_shares(route, states, now);
        let lowest = route.targets.iter().map(|t| t.priority).min().unwrap_or(0);
        let mut backup = 0.0;
        for (t, share) in route.targets.iter().zip(shares) {
            metrics
                .route_target_share
                .with_label_values(&[&*route.name, &*t.provider])
                .set(share);
            if t.priority > lowest {
                backup += share;
            }
        }
        metrics
            .route_backup_share
            .with_label_values(&[&*route.name])
            .set(backup);
        // Zero series for the counters an alert watches, so their first increase is seen.
        metrics
            .retry_budget_exhausted_total
            .with_label_values(&[&*route.name]);
        for t in &route.targets {
            metrics
                .unknown_outcomes_total
                .with_label_values(&[&*route.name, &*t.provider]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let yaml = "providers:\n  a: { url: http://127.0.0.1:1, breaker: { consecutive_failures: 1, open_for: 1s, jitter: 0 }, slow_start: 0s }\n  b: { url: http://127.0.0.1:2, slow_start: 0s }\n  c: { url: http://127.0.0.1:3, slow_start: 0s }\nroutes:\n  - name: r\n    match: {}\n    targets:\n      - { provider: a, priority: 0 }\n      - { provider: b, priority: 1 }\n      - { provider: c, priority: 2 }\n";
        crate::config::load(
            yaml,
            std::path::Path::new("."),
            &crate::config::PlaceholderSecrets,
        )
        .unwrap()
    }

    #[test]
    fn plan_prefers_by_share_then_falls_back_by_priority_then_probes() {
        let snap = snapshot();
        let metrics = Metrics::new();
        let t0 = Instant::now();
        let states = States::build(&snap, None, &metrics, t0);
        let route = &snap.routes[0];
        assert_eq!(
            plan(route, &states, t0, 0.5).map(|p| p.into_vec()),
            Ok(vec![0, 1, 2]),
            "all healthy"
        );

        // A trips: it is left out, B leads, C is the fallback.
        let a = states.get("a").unwrap();
        a.record(t0, false, Outcome::Failed, Duration::ZERO);
        assert_eq!(
            plan(route, &states, t0, 0.5).map(|p| p.into_vec()),
            Ok(vec![1, 2])
        );

        // After open_for, A waits for a probe: it goes first, being the most preferred.
        let later = t0 + Duration::from_secs(2);
        assert_eq!(
            plan(route, &states, later, 0.5).map(|p| p.into_vec()),
            Ok(vec![0, 1, 2])
        );

        // Everything out: no plan, and a Retry-After from the soonest recovery.
        let b = states.get("b").unwrap();
        let c = states.get("c").unwrap();
        b.set_drained(true, t0);
        c.record(
            t0,
            false,
            Outcome::Throttled(Some(Duration::from_millis(300))),
            Duration::ZERO,
        );
        let wait = plan(route, &states, t0, 0.5).unwrap_err();
        assert_eq!(wait, Duration::from_millis(300));
    }

    #[test]
    fn state_is_kept_by_name_across_a_rebuild() {
        let snap = snapshot();
        let metrics = Metrics::new();
        let t0 = Instant::now();
        let first = States::build(&snap, None, &metrics, t0);
        first.get("a").unwrap().set_drained(true, t0);
        let second = States::build(&snap, Some(&first), &metrics, t0);
        assert!(Arc::ptr_eq(
            first.get("a").unwrap(),
            second.get("a").unwrap()
        ));
        assert_eq!(second.get("a").unwrap().health(t0), 0.0);
    }
}
