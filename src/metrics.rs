//! Every Prometheus metric family of the proxy, in one explicit [`Registry`] (no global statics).
//!
//! Names follow Prometheus conventions (`_total`, `_seconds`, base units). Label values come only from
//! config names (routes, providers) and closed enums (status codes, error kinds, results): never from a
//! request's path, key, or any value the shop or a provider chose.

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// The `reason` label values of `switchyard_audit_dropped_total`: the writer's queue was full, the trail
/// was closed (shutdown), the file could not be written, the files reached `audit.max_bytes`, or a
/// refused webhook was over its per-second record limit (counted in a summary record instead).
pub const AUDIT_DROP_REASONS: [&str; 5] = [
    "queue_full",
    "closed",
    "write_failed",
    "disk_budget",
    "refused_webhook_limit",
];

/// The `op` label values of the state metrics: one per store call a payment or webhook makes.
/// `begin` claims a key (in flight / 409 / 422 / replay / unknown), `attempt` records "this key goes
/// to provider P" before the first byte is sent, `finish` completes or releases the key, `pin_find` and
/// `pin_remember` read and write payment-object pins, `event_begin` and `event_finish` are webhook
/// dedupe, `quota` takes a slot of a provider's fleet-wide quota, `unknowns` lists the records that
/// may be unknown (the resolver, twice a second per route).
pub const STATE_OPS: [&str; 9] = [
    "begin",
    "attempt",
    "finish",
    "pin_find",
    "pin_remember",
    "event_begin",
    "event_finish",
    "quota",
    "unknowns",
];

/// The `result` label values of `switchyard_state_operations_total`: the store answered (`ok`), failed
/// (`error`: refused, connection lost, a bad reply), did not answer within `state.redis.timeout`
/// (`timeout`: a write may still have been applied), or refused a stale holder's write (`fenced`: its
/// lease had ended and another sidecar took the key).
pub const STATE_RESULTS: [&str; 4] = ["ok", "error", "timeout", "fenced"];

/// Label value used where no route or no provider was involved.
pub const NONE: &str = "none";

/// The proxy's metric families.
/// The proxy's metric families, behind one `Arc`: layers clone the handle per request, and one
/// reference count is cheaper than one per family.
#[derive(Clone)]
pub struct Metrics(std::sync::Arc<Families>);

impl std::ops::Deref for Metrics {
    type Target = Families;
    fn deref(&self) -> &Families {
        &self.0
    }
}

/// Every metric family (reached through [`Metrics`]).
pub struct Families {
    registry: Registry,
    /// Requests answered to the shop, by route, provider and status code.
    pub requests_total: IntCounterVec,
    /// Time from the shop's request to the response head, by route and provider.
    pub request_duration_seconds: HistogramVec,
    /// Requests currently waiting on a provider, by provider.
    pub upstream_requests_in_flight: IntGaugeVec,
    /// Answers the proxy made itself, by route and error kind.
    pub proxy_errors_total: IntCounterVec,
    /// Config reload attempts by result (`success`, `failure`).
    pub config_reloads_total: IntCounterVec,
    /// Unix time of the last config load that was applied.
    pub config_last_reload_success_timestamp_seconds: Gauge,
    /// Generation number of the config in use (1 for the file loaded at start).
    pub config_generation: IntGauge,
    /// Config changes that were not applied because they need a restart (listen addresses, sandbox).
    pub config_restart_required: IntGauge,
    /// Always 1, with the version as a label.
    pub build_info: IntGaugeVec,
    /// 1 for each provider's current breaker state, 0 for the others.
    pub breaker_state: IntGaugeVec,
    /// Breaker state changes.
    pub breaker_transitions_total: IntCounterVec,
    /// Each provider's health score in [0, 1].
    pub provider_health: GaugeVec,
    /// Active health checks by result (`pass`, `fail`).
    pub health_checks_total: IntCounterVec,
    /// Requests refused or given up by a rate limit, by route and scope (`route`, `provider`).
    pub rate_limited_total: IntCounterVec,
    /// 1 while a provider's 429 Retry-After window lasts.
    pub provider_throttled: IntGaugeVec,
    /// The share of a route's traffic each target gets now, from the health scores.
    pub route_target_share: GaugeVec,
    /// 1 while a provider is drained by an operator.
    pub provider_drained: IntGaugeVec,
    /// Attempts sent to providers, by route, provider and outcome class.
    pub attempts_total: IntCounterVec,
    /// Attempts after the first, by route and the previous attempt's outcome class.
    pub retries_total: IntCounterVec,
    /// Attempts moved to another provider, by route, from, to and reason.
    pub failovers_total: IntCounterVec,
    /// Retries refused by the retry budget, by route.
    pub retry_budget_exhausted_total: IntCounterVec,
    /// Requests with an idempotency key, by route and result.
    pub idempotency_total: IntCounterVec,
    /// Idempotency records held.
    pub idempotency_records: IntGauge,
    /// Idempotency records evicted for room (not expiry).
    pub idempotency_evictions_total: prometheus::IntCounter,
    /// Requests answered with an unknown outcome, by route and provider.
    pub unknown_outcomes_total: IntCounterVec,
    /// Records whose outcome is unknown, by route and provider (the resolver counts them; in a fleet
    /// on a shared store, every sidecar reports the same records).
    pub unknown_operations: IntGaugeVec,
    /// The resolver's tries by route, provider and result (`resolved`, `still_unknown`,
    /// `not_admitted`, `gave_up`, `no_request`).
    pub resolutions_total: IntCounterVec,
    /// Time from an outcome becoming unknown to its resolution, by route and provider.
    pub resolution_seconds: HistogramVec,
    /// The share of a route's traffic that goes to targets above its lowest priority (the backup
    /// channel), from the health scores.
    pub route_backup_share: GaugeVec,
    /// 1 when the last config reload attempt was applied (or none was tried), 0 when it was rejected.
    pub config_last_reload_successful: IntGauge,
    /// Time from an attempt's start to the provider's response head (or failure), by route and provider.
    pub attempt_duration_seconds: HistogramVec,
    /// Webhook requests by webhook and result (`forwarded`, `duplicate`, `bad_signature`, ...).
    pub webhooks_total: IntCounterVec,
    /// Audit records written.
    pub audit_records_total: prometheus::IntCounter,
    /// Audit records not written, by reason (see [`AUDIT_DROP_REASONS`]).
    pub audit_dropped_total: IntCounterVec,
    /// Connections and requests refused at a bound, by listener and reason (`connections`,
    /// `buffered_bytes`).
    pub overload_rejections_total: IntCounterVec,
    /// Connections open now, by listener.
    pub listener_connections: IntGaugeVec,
    /// Failed accepts (out of file descriptors and the like), by listener.
    pub accept_errors_total: IntCounterVec,
    /// Request body bytes buffered now, every listener together.
    pub buffered_bytes: IntGauge,
    /// Calls to the payment-state store, by backend, op ([`STATE_OPS`]) and result ([`STATE_RESULTS`]).
    pub state_operations_total: IntCounterVec,
    /// Time of one call to the payment-state store, by backend and op (timeouts included).
    pub state_duration_seconds: HistogramVec,
    /// 1 when the last call to the payment-state store worked, 0 when it failed or timed out, by
    /// backend.
    pub state_up: IntGaugeVec,
    /// Times the shared store was found to have forgotten its data (its epoch key lost or changed: a
    /// restart without persistence, a failover, a FLUSHALL), by backend.
    pub state_epoch_changes_total: IntCounterVec,
    /// 1 while keyed payments are held back from crossing providers, because the shared store forgot
    /// its data (until the records' ttl has passed) or is unavailable under `on_unavailable:
    /// primary_only`.
    pub state_degraded: IntGauge,
}

impl Metrics {
    /// Creates every family and registers it in a new registry.
    pub fn new() -> Self {
        Self::try_new().unwrap_or_else(|e| {
            // Only a duplicate or malformed metric name can fail here: a bug caught by every test.
            panic!("metric registration is static and cannot fail: {e}")
        })
    }

    fn try_new() -> prometheus::Result<Self> {
        Families::try_new().map(|f| Self(std::sync::Arc::new(f)))
    }

    /// The registry, for callers that add families of their own.
    pub fn registry(&self) -> &Registry {
        &self.0.registry
    }

    /// The Prometheus text exposition of every family.
    pub fn encode(&self) -> Vec<u8> {
        self.0.encode()
    }

    /// Creates every series of the state metrics for `backend` (the [`STATE_OPS`] × [`STATE_RESULTS`]
    /// counters at 0, the histograms empty, the epoch counter at 0) and sets `switchyard_state_up` to 1:
    /// called once the store is open (start-up refuses one that cannot be opened), so that alerts and
    /// dashboards see zeros rather than no series before the first payment.
    pub fn state_opened(&self, backend: &str) {
        let f = &*self.0;
        for op in STATE_OPS {
            for result in STATE_RESULTS {
                f.state_operations_total
                    .with_label_values(&[backend, op, result]);
            }
            f.state_duration_seconds.with_label_values(&[backend, op]);
        }
        f.state_epoch_changes_total.with_label_values(&[backend]);
        f.state_up.with_label_values(&[backend]).set(1);
    }

    /// Drops every series labelled with a route, provider or webhook name that `names` does not hold
    /// (any more): after a reload removed them, their series would otherwise be served for ever (a
    /// reload from 200 000 routes back to one kept 26.8 MB on /metrics).
    pub fn forget_names_not_in(&self, names: &ConfigNames<'_>) {
        let f = &*self.0;
        let keep = |label: &str, value: &str| -> bool {
            if value == NONE || value.is_empty() {
                return true;
            }
            match label {
                "route" => names.routes.contains(value),
                "provider" | "from" | "to" => names.providers.contains(value),
                "webhook" => names.webhooks.contains(value),
                _ => true,
            }
        };
        retain(&f.requests_total, &keep);
        retain(&f.request_duration_seconds, &keep);
        retain(&f.upstream_requests_in_flight, &keep);
        retain(&f.proxy_errors_total, &keep);
        retain(&f.breaker_state, &keep);
        retain(&f.breaker_transitions_total, &keep);
        retain(&f.provider_health, &keep);
        retain(&f.health_checks_total, &keep);
        retain(&f.rate_limited_total, &keep);
        retain(&f.provider_throttled, &keep);
        retain(&f.route_target_share, &keep);
        retain(&f.provider_drained, &keep);
        retain(&f.attempts_total, &keep);
        retain(&f.retries_total, &keep);
        retain(&f.failovers_total, &keep);
        retain(&f.retry_budget_exhausted_total, &keep);
        retain(&f.idempotency_total, &keep);
        retain(&f.unknown_outcomes_total, &keep);
        retain(&f.unknown_operations, &keep);
        retain(&f.resolutions_total, &keep);
        retain(&f.resolution_seconds, &keep);
        retain(&f.route_backup_share, &keep);
        retain(&f.attempt_duration_seconds, &keep);
        retain(&f.webhooks_total, &keep);
    }
}

/// The names a config generation defines, for [`Metrics::forget_names_not_in`].
#[derive(Debug, Default)]
pub struct ConfigNames<'a> {
    /// Route names.
    pub routes: std::collections::HashSet<&'a str>,
    /// Provider names.
    pub providers: std::collections::HashSet<&'a str>,
    /// Webhook names.
    pub webhooks: std::collections::HashSet<&'a str>,
}

/// Removes the series of `vec` with a label value `keep` refuses.
fn retain<T: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<T>,
    keep: &impl Fn(&str, &str) -> bool,
) {
    use prometheus::core::Collector;
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels = metric.get_label();
            if labels.iter().all(|l| keep(l.name(), l.value())) {
                continue;
            }
            let by_name: std::collections::HashMap<&str, &str> =
                labels.iter().map(|l| (l.name(), l.value())).collect();
            // Only fails for a series that is already gone.
            let _ = vec.remove(&by_name);
        }
    }
}

impl Families {
    fn try_new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests_total = IntCounterVec::new(
            Opts::new(
                "switchyard_requests_total",
                "Requests answered to the shop, by route, provider and status code.",
            ),
            &["route", "provider", "code"],
        )?;
        let request_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_request_duration_seconds",
                "Time from the shop's request to the response head, by route and provider.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["route", "provider"],
        )?;
        let upstream_requests_in_flight = IntGaugeVec::new(
            Opts::new(
                "switchyard_upstream_requests_in_flight",
                "Requests currently waiting on a provider's answer, by provider.",
            ),
            &["provider"],
        )?;
        let proxy_errors_total = IntCounterVec::new(
            Opts::new(
                "switchyard_proxy_errors_total",
                "Answers the proxy made itself (x-switchyard-error), by route and error kind.",
            ),
            &["route", "kind"],
        )?;
        let config_reloads_total = IntCounterVec::new(
            Opts::new(
                "switchyard_config_reloads_total",
                "Config reload attempts by result.",
            ),
            &["result"],
        )?;
        let config_last_reload_success_timestamp_seconds = Gauge::new(
            "switchyard_config_last_reload_success_timestamp_seconds",
            "Unix time of the last config load that was applied.",
        )?;
        let config_generation = IntGauge::new(
            "switchyard_config_generation",
            "Generation of the config in use; 1 is the file loaded at start.",
        )?;
        let config_restart_required = IntGauge::new(
            "switchyard_config_restart_required",
            "1 when the file on disk changed something that only a restart applies.",
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new("switchyard_build_info", "Always 1; the version is a label."),
            &["version"],
        )?;
        registry.register(Box::new(requests_total.clone()))?;
        registry.register(Box::new(request_duration_seconds.clone()))?;
        registry.register(Box::new(upstream_requests_in_flight.clone()))?;
        registry.register(Box::new(proxy_errors_total.clone()))?;
        registry.register(Box::new(config_reloads_total.clone()))?;
        registry.register(Box::new(
            config_last_reload_success_timestamp_seconds.clone(),
        ))?;
        registry.register(Box::new(config_generation.clone()))?;
        registry.register(Box::new(config_restart_required.clone()))?;
        registry.register(Box::new(build_info.clone()))?;
        let breaker_state = IntGaugeVec::new(
            Opts::new(
                "switchyard_breaker_state",
                "1 for each provider's current circuit breaker state, 0 for the others.",
            ),
            &["provider", "state"],
        )?;
        let breaker_transitions_total = IntCounterVec::new(
            Opts::new(
                "switchyard_breaker_transitions_total",
                "Circuit breaker state changes.",
            ),
            &["provider", "from", "to"],
        )?;
        let provider_health = GaugeVec::new(
            Opts::new(
                "switchyard_provider_health",
                "Each provider's health score in [0, 1].",
            ),
            &["provider"],
        )?;
        let health_checks_total = IntCounterVec::new(
            Opts::new(
                "switchyard_health_checks_total",
                "Active health checks by result.",
            ),
            &["provider", "result"],
        )?;
        let rate_limited_total = IntCounterVec::new(
            Opts::new(
                "switchyard_rate_limited_total",
                "Requests refused or given up by a rate limit, by route and scope (route, provider).",
            ),
            &["route", "scope"],
        )?;
        let provider_throttled = IntGaugeVec::new(
            Opts::new(
                "switchyard_provider_throttled",
                "1 while a provider's 429 Retry-After window lasts.",
            ),
            &["provider"],
        )?;
        let route_target_share = GaugeVec::new(
            Opts::new(
                "switchyard_route_target_share",
                "Share of a route's traffic each target gets now, from the health scores.",
            ),
            &["route", "provider"],
        )?;
        let provider_drained = IntGaugeVec::new(
            Opts::new(
                "switchyard_provider_drained",
                "1 while a provider is drained by an operator.",
            ),
            &["provider"],
        )?;
        registry.register(Box::new(breaker_state.clone()))?;
        registry.register(Box::new(breaker_transitions_total.clone()))?;
        registry.register(Box::new(provider_health.clone()))?;
        registry.register(Box::new(health_checks_total.clone()))?;
        registry.register(Box::new(rate_limited_total.clone()))?;
        registry.register(Box::new(provider_throttled.clone()))?;
        registry.register(Box::new(route_target_share.clone()))?;
        registry.register(Box::new(provider_drained.clone()))?;
        let attempts_total = IntCounterVec::new(
            Opts::new(
                "switchyard_attempts_total",
                "Attempts sent to providers, by route, provider and outcome class.",
            ),
            &["route", "provider", "outcome"],
        )?;
        let retries_total = IntCounterVec::new(
            Opts::new(
                "switchyard_retries_total",
                "Attempts after the first, by route and the outcome class of the attempt before.",
            ),
            &["route", "reason"],
        )?;
        let failovers_total = IntCounterVec::new(
            Opts::new(
                "switchyard_failovers_total",
                "Attempts moved to another provider, by route, from, to and reason.",
            ),
            &["route", "from", "to", "reason"],
        )?;
        let retry_budget_exhausted_total = IntCounterVec::new(
            Opts::new(
                "switchyard_retry_budget_exhausted_total",
                "Retries refused by the route's retry budget.",
            ),
            &["route"],
        )?;
        let idempotency_total = IntCounterVec::new(
            Opts::new(
                "switchyard_idempotency_total",
                "Requests with an idempotency key, by route and result (new, replayed, conflict, mismatch, resumed).",
            ),
            &["route", "result"],
        )?;
        let idempotency_records = IntGauge::new(
            "switchyard_idempotency_records",
            "Idempotency records held.",
        )?;
        let idempotency_evictions_total = prometheus::IntCounter::new(
            "switchyard_idempotency_evictions_total",
            "Idempotency records evicted for room before their ttl.",
        )?;
        let unknown_outcomes_total = IntCounterVec::new(
            Opts::new(
                "switchyard_unknown_outcomes_total",
                "Requests answered with an unknown outcome, by route and provider.",
            ),
            &["route", "provider"],
        )?;
        registry.register(Box::new(attempts_total.clone()))?;
        registry.register(Box::new(retries_total.clone()))?;
        registry.register(Box::new(failovers_total.clone()))?;
        registry.register(Box::new(retry_budget_exhausted_total.clone()))?;
        registry.register(Box::new(idempotency_total.clone()))?;
        registry.register(Box::new(idempotency_records.clone()))?;
        registry.register(Box::new(idempotency_evictions_total.clone()))?;
        registry.register(Box::new(unknown_outcomes_total.clone()))?;
        let unknown_operations = IntGaugeVec::new(
            Opts::new(
                "switchyard_unknown_operations",
                "Idempotency records whose outcome is unknown, by route and provider (a shared store's records are counted by every sidecar).",
            ),
            &["route", "provider"],
        )?;
        let resolutions_total = IntCounterVec::new(
            Opts::new(
                "switchyard_resolutions_total",
                "The resolver's work on unknown outcomes, by route, provider and result (resolved, still_unknown, not_admitted, gave_up, no_request).",
            ),
            &["route", "provider", "result"],
        )?;
        let resolution_seconds = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_resolution_seconds",
                "Time from an outcome becoming unknown to the provider's final answer for it, by route and provider.",
            )
            .buckets(vec![
                1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 21600.0, 86400.0,
            ]),
            &["route", "provider"],
        )?;
        registry.register(Box::new(unknown_operations.clone()))?;
        registry.register(Box::new(resolutions_total.clone()))?;
        registry.register(Box::new(resolution_seconds.clone()))?;
        let route_backup_share = GaugeVec::new(
            Opts::new(
                "switchyard_route_backup_share",
                "Share of a route's traffic going to targets above its lowest priority (the backup channel).",
            ),
            &["route"],
        )?;
        let config_last_reload_successful = IntGauge::new(
            "switchyard_config_last_reload_successful",
            "1 when the last config reload attempt was applied (or none was tried), 0 when it was rejected.",
        )?;
        let attempt_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_attempt_duration_seconds",
                "Time from an attempt's start to the provider's response head or failure, by route and provider.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["route", "provider"],
        )?;
        config_last_reload_successful.set(1);
        registry.register(Box::new(route_backup_share.clone()))?;
        registry.register(Box::new(config_last_reload_successful.clone()))?;
        registry.register(Box::new(attempt_duration_seconds.clone()))?;
        let webhooks_total = IntCounterVec::new(
            Opts::new(
                "switchyard_webhooks_total",
                "Webhook requests by webhook and result.",
            ),
            &["webhook", "result"],
        )?;
        let audit_records_total = prometheus::IntCounter::new(
            "switchyard_audit_records_total",
            "Audit records written.",
        )?;
        let audit_dropped_total = IntCounterVec::new(
            Opts::new(
                "switchyard_audit_dropped_total",
                "Audit records not written, by reason: queue_full, closed, write_failed, disk_budget, refused_webhook_limit.",
            ),
            &["reason"],
        )?;
        for reason in AUDIT_DROP_REASONS {
            audit_dropped_total.with_label_values(&[reason]);
        }
        registry.register(Box::new(webhooks_total.clone()))?;
        registry.register(Box::new(audit_records_total.clone()))?;
        registry.register(Box::new(audit_dropped_total.clone()))?;
        let overload_rejections_total = IntCounterVec::new(
            Opts::new(
                "switchyard_overload_rejections_total",
                "Connections and requests refused at a bound, by listener and reason (connections, buffered_bytes).",
            ),
            &["listener", "reason"],
        )?;
        let listener_connections = IntGaugeVec::new(
            Opts::new(
                "switchyard_listener_connections",
                "Connections open now, by listener.",
            ),
            &["listener"],
        )?;
        let accept_errors_total = IntCounterVec::new(
            Opts::new(
                "switchyard_accept_errors_total",
                "Failed accepts (out of file descriptors and the like), by listener.",
            ),
            &["listener"],
        )?;
        let buffered_bytes = IntGauge::new(
            "switchyard_buffered_bytes",
            "Request body bytes buffered now, every listener together.",
        )?;
        registry.register(Box::new(overload_rejections_total.clone()))?;
        registry.register(Box::new(listener_connections.clone()))?;
        registry.register(Box::new(accept_errors_total.clone()))?;
        registry.register(Box::new(buffered_bytes.clone()))?;
        let state_operations_total = IntCounterVec::new(
            Opts::new(
                "switchyard_state_operations_total",
                "Calls to the payment-state store, by backend, op and result (ok, error, timeout, fenced).",
            ),
            &["backend", "op", "result"],
        )?;
        let state_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_state_duration_seconds",
                "Time of one call to the payment-state store, by backend and op.",
            )
            // From an embedded store's write (tens of microseconds) to a Redis command near its timeout.
            .buckets(vec![
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                0.25, 0.5, 1.0,
            ]),
            &["backend", "op"],
        )?;
        let state_up = IntGaugeVec::new(
            Opts::new(
                "switchyard_state_up",
                "1 when the last call to the payment-state store worked, 0 when it failed or timed out.",
            ),
            &["backend"],
        )?;
        let state_epoch_changes_total = IntCounterVec::new(
            Opts::new(
                "switchyard_state_epoch_changes_total",
                "Times the shared store was found to have forgotten its data (epoch key lost or changed).",
            ),
            &["backend"],
        )?;
        let state_degraded = IntGauge::new(
            "switchyard_state_degraded",
            "1 while keyed payments are held back from crossing providers: the shared store forgot its data, or is unavailable under primary_only.",
        )?;
        registry.register(Box::new(state_operations_total.clone()))?;
        registry.register(Box::new(state_duration_seconds.clone()))?;
        registry.register(Box::new(state_up.clone()))?;
        registry.register(Box::new(state_epoch_changes_total.clone()))?;
        registry.register(Box::new(state_degraded.clone()))?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for result in ["success", "failure"] {
            config_reloads_total.with_label_values(&[result]);
        }
        Ok(Self {
            registry,
            requests_total,
            request_duration_seconds,
            upstream_requests_in_flight,
            proxy_errors_total,
            config_reloads_total,
            config_last_reload_success_timestamp_seconds,
            config_generation,
            config_restart_required,
            build_info,
            breaker_state,
            breaker_transitions_total,
            provider_health,
            health_checks_total,
            rate_limited_total,
            provider_throttled,
            route_target_share,
            provider_drained,
            attempts_total,
            retries_total,
            failovers_total,
            retry_budget_exhausted_total,
            idempotency_total,
            idempotency_records,
            idempotency_evictions_total,
            unknown_outcomes_total,
            unknown_operations,
            resolutions_total,
            resolution_seconds,
            webhooks_total,
            audit_records_total,
            audit_dropped_total,
            overload_rejections_total,
            listener_connections,
            accept_errors_total,
            buffered_bytes,
            route_backup_share,
            config_last_reload_successful,
            attempt_duration_seconds,
            state_operations_total,
            state_duration_seconds,
            state_up,
            state_epoch_changes_total,
            state_degraded,
        })
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        // Text encoding into a Vec only fails on a malformed family, which registration rejects.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts a request as in flight to a provider until dropped, even when the shop goes away first.
#[derive(Debug)]
pub struct InFlight(IntGauge);

impl InFlight {
    /// Counts one more in `gauge` until the guard is dropped.
    pub fn start(gauge: IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod forget_tests {
    use super::*;

    #[test]
    fn series_of_names_a_reload_removed_are_dropped_and_the_rest_kept() {
        let m = Metrics::new();
        for route in ["payments", "gone-route"] {
            for provider in ["psp", "gone-psp"] {
                m.0.attempts_total
                    .with_label_values(&[route, provider, "processed"])
                    .inc();
            }
        }
        m.0.requests_total
            .with_label_values(&[NONE, NONE, "404"])
            .inc();
        m.0.failovers_total
            .with_label_values(&["payments", "gone-psp", "psp", "not_sent"])
            .inc();
        m.0.webhooks_total
            .with_label_values(&["gone-hook", "forwarded"])
            .inc();
        let names = ConfigNames {
            routes: ["payments"].into_iter().collect(),
            providers: ["psp"].into_iter().collect(),
            webhooks: Default::default(),
        };
        m.forget_names_not_in(&names);
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(
            text.contains(r#"provider="psp",route="payments""#),
            "{text}"
        );
        assert!(!text.contains("gone-"), "{text}");
        assert!(text.contains(r#"provider="none",route="none""#), "{text}");
    }
}

#[cfg(test)]
mod state_tests {
    use super::*;

    #[test]
    fn an_opened_store_exports_every_state_series_at_zero_and_up() {
        let m = Metrics::new();
        let before = String::from_utf8(m.encode()).unwrap();
        assert!(
            !before.contains("switchyard_state_operations_total{"),
            "{before}"
        );
        assert!(before.contains("switchyard_state_degraded 0"), "{before}");

        m.state_opened("redis");
        let text = String::from_utf8(m.encode()).unwrap();
        for op in STATE_OPS {
            for result in STATE_RESULTS {
                let series = format!(
                    "switchyard_state_operations_total{{backend=\"redis\",op=\"{op}\",result=\"{result}\"}} 0"
                );
                assert!(text.contains(&series), "{series} missing:\n{text}");
            }
            let bucket = format!(
                "switchyard_state_duration_seconds_bucket{{backend=\"redis\",op=\"{op}\",le=\"0.00005\"}} 0"
            );
            assert!(text.contains(&bucket), "{bucket} missing:\n{text}");
        }
        assert!(
            text.contains("switchyard_state_duration_seconds_bucket{backend=\"redis\",op=\"begin\",le=\"1\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_state_up{backend=\"redis\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_state_epoch_changes_total{backend=\"redis\"} 0"),
            "{text}"
        );

        // A reload that forgets removed names keeps the state series: their labels are no config names.
        m.forget_names_not_in(&ConfigNames::default());
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(
            text.contains("switchyard_state_up{backend=\"redis\"} 1"),
            "{text}"
        );
    }
}
