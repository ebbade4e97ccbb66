//! The resolver: operations whose outcome is unknown are sent again, with the same key, to the
//! provider they may have reached, until the provider gives its final answer for them. The shop's
//! next retry of such a key is then a replay (`x-switchyard-attempts: 0`), and nobody has to look the
//! payment up by hand in the provider's dashboard.
//!
//! - **What it sends.** The request the record kept ([`crate::idempotency::KeptRequest`]), through the
//!   same operation code as a shop's retry of the key: claimed in the store under a lease (a sidecar of
//!   the fleet works an item at a time), pinned to the recorded provider, one attempt, the provider's
//!   credential as configured (or the shop's, held in memory). Only a record in the store with its
//!   outcome unknown is sent: a record gone (its ttl) is never sent as a new payment.
//! - **When.** 1 s, 5 s, 30 s, 2 min and 10 min after the outcome became unknown, then every 30 min,
//!   only while the provider would take it (breaker closed or ready for a probe, not drained, not
//!   throttled). A provider that comes back (its breaker closes again) has everything it holds tried
//!   again at once. The resolver stops before `providers.NAME.idempotency_retention` ends: after it,
//!   the provider would take the resend for a new payment.
//! - **What settles it.** Only the provider's own final answer, stored as if the shop had got it. A
//!   provider that answers 5xx again (Stripe replays a stored 500), "still processing", or refuses the
//!   credential leaves it unknown, listed and alerted (`switchyard_unknown_operations`).
//! - **Asked now.** `POST /admin/operations/{id}/retry`, and a verified webhook that names the key of
//!   an unknown operation ([`Resolver::resolve_matching`]), try it at once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::HeaderName;
use tokio::sync::{Notify, Semaphore};

use crate::audit::Audit;
use crate::config::Route;
use crate::ctx::RouteCtx;
use crate::error::ProxyError;
use crate::generation::{Current, Generation};
use crate::idempotency::{self, Finish, Kept, KeptRequest, Store, UnknownOp, GAVE_UP};
use crate::metrics::Metrics;

/// How often the stores are looked through.
const TICK: Duration = Duration::from_millis(500);
/// Most records listed per route and look (those due first): the gauge counts up to this many.
const LISTED: usize = 1_000;
/// Most resends in flight at once.
const CONCURRENT: usize = 32;
/// How many attempts the proxy made for an answer: 0 for its own replay of a stored answer (a
/// provider's replay carries `Idempotent-Replayed` too, and is the answer the resolver asked for).
const ATTEMPTS: HeaderName = HeaderName::from_static("x-switchyard-attempts");

/// The result of one try, as `switchyard_resolutions_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tried {
    /// The provider's final answer is stored (`status`).
    Resolved(u16),
    /// The record already had its final answer (resolved by a webhook, the shop or another sidecar).
    AlreadyFinal,
    /// The try left the outcome unknown.
    StillUnknown,
    /// The provider would not take it now: nothing was sent.
    NotAdmitted,
    /// Another request or sidecar holds the record now.
    Busy,
    /// The record is gone, or not unknown any more: nothing to send.
    Gone,
    /// The store could not be reached.
    StateUnavailable,
    /// Past the provider's `idempotency_retention`: a resend could be a new payment. Not sent.
    PastRetention,
}

impl Tried {
    /// Its name (the `result` label; the admin answer).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Resolved(_) => "resolved",
            Self::AlreadyFinal => "already_final",
            Self::StillUnknown => "still_unknown",
            Self::NotAdmitted => "not_admitted",
            Self::Busy => "busy",
            Self::Gone => "gone",
            Self::StateUnavailable => "state_unavailable",
            Self::PastRetention => "past_retention",
        }
    }
}

/// What a webhook event names, to find the unknown operation it settles.
#[derive(Debug, Clone)]
pub enum EventKey {
    /// The idempotency key the provider got (Stripe's `request.idempotency_key`).
    ProviderKey(String),
    /// The shop's reference of the payment (Adyen's `merchantReference`), matched against the kept
    /// body's `reference` field.
    Reference(String),
}

/// One listed operation, for the admin API.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Its route.
    pub route: Arc<str>,
    /// What the store listed.
    pub op: UnknownOp,
    /// Why the resolver does not try it (`None`: it does, on its schedule).
    pub waiting_for: Option<&'static str>,
}

impl Listed {
    /// Its id in the admin API: `route:digest`.
    pub fn id(&self) -> String {
        format!("{}:{}", self.route, hex::encode(self.op.digest))
    }
}

/// The resolver of one sidecar. See the module doc.
pub struct Resolver {
    current: Current,
    metrics: Metrics,
    audit: Audit,
    wake: Notify,
    slots: Arc<Semaphore>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Records asked for now (admin, webhook), by name.
    asked: HashSet<[u8; 16]>,
    /// Records being tried by this process.
    running: HashSet<[u8; 16]>,
    /// Records whose wait (no credential, not admitted) was counted already.
    counted: HashSet<([u8; 16], &'static str)>,
    /// The gauge's series set at the last look.
    series: HashSet<(Arc<str>, Arc<str>)>,
    /// The config generation whose series were made.
    generation: u64,
}

/// The `result` values of `switchyard_resolutions_total`.
const RESULTS: [&str; 5] = [
    "resolved",
    "still_unknown",
    "not_admitted",
    "gave_up",
    "no_request",
];

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl Resolver {
    /// A resolver over the generation in use.
    pub fn new(current: Current, metrics: Metrics, audit: Audit) -> Arc<Self> {
        Arc::new(Self {
            current,
            metrics,
            audit,
            wake: Notify::new(),
            slots: Arc::new(Semaphore::new(CONCURRENT)),
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs the resolver until the task is aborted.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                this.look().await;
                tokio::select! {
                    () = tokio::time::sleep(TICK) => {}
                    () = this.wake.notified() => {}
                }
            }
        })
    }

    /// Every operation that may be unknown, route by route (at most `limit` per route).
    pub async fn list(&self, limit: usize) -> Result<Vec<Listed>, crate::state::StateError> {
        let generation = self.current.load_full();
        let mut out = Vec::new();
        for route in &generation.snapshot.routes {
            let Some(store) = generation.idempotency.get(&route.name) else {
                continue;
            };
            for op in store.unknowns(limit).await? {
                let waiting_for = self.waiting_for(&generation, &op);
                out.push(Listed {
                    route: Arc::clone(&route.name),
                    op,
                    waiting_for,
                });
            }
        }
        Ok(out)
    }

    /// Why the resolver does not try `op` now, if it does not.
    fn waiting_for(&self, generation: &Generation, op: &UnknownOp) -> Option<&'static str> {
        let Some(kept) = &op.kept else {
            return Some(idempotency::NotKept::Lost.as_str());
        };
        let request = match &kept.request {
            Ok(r) => r,
            Err(why) => return Some(why.as_str()),
        };
        if kept.next_ms == GAVE_UP {
            return Some("gave_up");
        }
        if request.shop_credential
            && generation
                .idempotency
                .credentials()
                .get(&request.scope)
                .is_none()
        {
            return Some("shop_credential");
        }
        let admitted = generation
            .health
            .get(&op.pinned)
            .is_some_and(|h| h.would_admit(std::time::Instant::now()));
        (!admitted).then_some("provider")
    }

    /// Tries the operation `id` (`route:digest`) now, whatever its schedule; `None` when no such
    /// operation is listed.
    pub async fn retry_now(self: &Arc<Self>, id: &str) -> Result<Option<Tried>, ProxyError> {
        let Some((route, digest)) = id.rsplit_once(':') else {
            return Ok(None);
        };
        let Ok(digest) = hex::decode(digest) else {
            return Ok(None);
        };
        let generation = self.current.load_full();
        let Some(route) = generation
            .snapshot
            .routes
            .iter()
            .find(|r| &*r.name == route)
            .cloned()
        else {
            return Ok(None);
        };
        let Some(store) = generation.idempotency.get(&route.name) else {
            return Ok(None);
        };
        let ops = store.unknowns(LISTED).await?;
        let Some(op) = ops.into_iter().find(|o| o.digest[..] == digest[..]) else {
            return Ok(None);
        };
        let Some(kept) = op.kept.clone() else {
            return Ok(Some(Tried::Gone));
        };
        let Ok(request) = kept.request.clone() else {
            return Ok(Some(Tried::Gone));
        };
        let retention = retention(&generation, &op.pinned);
        let now_ms = idempotency::unix_ms(SystemTime::now());
        if kept.next_ms == GAVE_UP || now_ms >= kept.deadline_ms(retention) {
            return Ok(Some(Tried::PastRetention));
        }
        let credential = self.credential(&generation, &request);
        Ok(Some(
            self.try_one(&generation, &route, &op, &request, credential)
                .await,
        ))
    }

    /// Has every unknown operation the event names tried at once (a verified webhook; of `provider`
    /// when known); says how many it found.
    pub async fn resolve_matching(&self, provider: Option<&str>, key: &EventKey) -> usize {
        let generation = self.current.load_full();
        let mut found = Vec::new();
        for route in &generation.snapshot.routes {
            let Some(store) = generation.idempotency.get(&route.name) else {
                continue;
            };
            let Ok(ops) = store.unknowns(LISTED).await else {
                continue;
            };
            for op in ops
                .iter()
                .filter(|o| provider.is_none_or(|p| *o.pinned == *p))
            {
                let Some(Ok(request)) = op.kept.as_ref().map(|k| &k.request) else {
                    continue;
                };
                if matches(&generation, &op.pinned, request, key) {
                    found.push(op.digest);
                }
            }
        }
        let n = found.len();
        if n > 0 {
            self.lock().asked.extend(found);
            self.wake.notify_one();
        }
        n
    }

    /// One look through every route's records: the gauge, and a try of each one due.
    async fn look(self: &Arc<Self>) {
        let generation = self.current.load_full();
        self.make_series(&generation);
        let mut counts: HashMap<(Arc<str>, Arc<str>), i64> = HashMap::new();
        let mut scopes: HashSet<String> = HashSet::new();
        let mut seen: HashSet<[u8; 16]> = HashSet::new();
        let mut ok = true;
        for route in &generation.snapshot.routes {
            let Some(store) = generation.idempotency.get(&route.name) else {
                continue;
            };
            let ops = match store.unknowns(LISTED).await {
                Ok(ops) => ops,
                Err(e) => {
                    tracing::debug!(route = %route.name, error = %e, "the resolver could not list unknown operations");
                    ok = false;
                    continue;
                }
            };
            for op in ops {
                seen.insert(op.digest);
                *counts
                    .entry((Arc::clone(&route.name), Arc::clone(&op.pinned)))
                    .or_default() += 1;
                if let Some(Ok(r)) = op.kept.as_ref().map(|k| &k.request) {
                    if r.shop_credential {
                        scopes.insert(r.scope.clone());
                    }
                }
                self.consider(&generation, route, op);
            }
        }
        if ok {
            let keep: HashSet<&str> = scopes.iter().map(String::as_str).collect();
            generation.idempotency.credentials().retain(&keep);
            // What this process remembers of operations no longer listed goes with them.
            let mut inner = self.lock();
            inner.counted.retain(|(d, _)| seen.contains(d));
            inner.asked.retain(|d| seen.contains(d));
        }
        self.publish(counts);
    }

    /// Makes the series of every route's targets, at zero, once per config generation: alerts and
    /// dashboards see 0, not a gap, before the first unknown outcome.
    fn make_series(&self, generation: &Generation) {
        let mut inner = self.lock();
        if inner.generation == generation.number {
            return;
        }
        inner.generation = generation.number;
        for route in &generation.snapshot.routes {
            for target in &route.targets {
                let (r, p) = (&*route.name, &*target.provider);
                self.metrics.unknown_operations.with_label_values(&[r, p]);
                self.metrics.resolution_seconds.with_label_values(&[r, p]);
                for result in RESULTS {
                    self.metrics
                        .resolutions_total
                        .with_label_values(&[r, p, result]);
                }
            }
        }
    }

    /// Sets the gauge, and zeroes the series that had records at the last look and have none now.
    fn publish(&self, counts: HashMap<(Arc<str>, Arc<str>), i64>) {
        let mut inner = self.lock();
        for old in inner.series.iter().filter(|s| !counts.contains_key(*s)) {
            self.metrics
                .unknown_operations
                .with_label_values(&[&old.0, &old.1])
                .set(0);
        }
        for ((route, provider), n) in &counts {
            self.metrics
                .unknown_operations
                .with_label_values(&[route, provider])
                .set(*n);
        }
        inner.series = counts.into_keys().collect();
    }

    /// Starts a try of `op` when it is due and its provider would take it.
    fn consider(self: &Arc<Self>, generation: &Arc<Generation>, route: &Arc<Route>, op: UnknownOp) {
        let Some(kept) = op.kept.clone() else {
            return;
        };
        let Ok(request) = kept.request.clone() else {
            return;
        };
        if kept.next_ms == GAVE_UP {
            return;
        }
        let now = std::time::Instant::now();
        let now_ms = idempotency::unix_ms(SystemTime::now());
        let health = generation.health.get(&op.pinned);
        // The provider came back after the last try: everything it holds is tried again.
        let recovered = kept.tries > 0
            && health
                .and_then(|h| h.recovered_at())
                .is_some_and(|at| at > instant_of(now, now_ms, kept.last_ms));
        let asked = self.lock().asked.remove(&op.digest);
        if !(asked || recovered || kept.next_ms <= now_ms) {
            return;
        }
        if self.lock().running.contains(&op.digest) {
            return;
        }
        let retention = retention(generation, &op.pinned);
        if now_ms >= kept.deadline_ms(retention) {
            self.spawn_try(generation, route, op, move |this, generation, route, op| {
                Box::pin(async move { this.give_up(&generation, &route, &op, &kept).await })
            });
            return;
        }
        if !health.is_some_and(|h| h.would_admit(now)) {
            self.count_once(route, &op, "not_admitted");
            return;
        }
        let credential = self.credential(generation, &request);
        if request.shop_credential && credential.is_none() {
            self.count_once(route, &op, "no_request");
            return;
        }
        self.spawn_try(generation, route, op, move |this, generation, route, op| {
            Box::pin(async move {
                this.try_one(&generation, &route, &op, &request, credential)
                    .await;
            })
        });
    }

    /// Runs `work` for `op` in a task of its own, holding one of the resolver's slots; does nothing
    /// when every slot is taken (the next look starts it).
    fn spawn_try<F>(
        self: &Arc<Self>,
        generation: &Arc<Generation>,
        route: &Arc<Route>,
        op: UnknownOp,
        work: F,
    ) where
        F: FnOnce(
                Arc<Self>,
                Arc<Generation>,
                Arc<Route>,
                UnknownOp,
            ) -> crate::layers::BoxFuture<()>
            + Send
            + 'static,
    {
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            return;
        };
        self.lock().running.insert(op.digest);
        let this = Arc::clone(self);
        let generation = Arc::clone(generation);
        let route = Arc::clone(route);
        tokio::spawn(async move {
            let digest = op.digest;
            work(Arc::clone(&this), generation, route, op).await;
            this.lock().running.remove(&digest);
            drop(slot);
        });
    }

    /// Counts a wait of `op` once (not at every look).
    fn count_once(&self, route: &Route, op: &UnknownOp, result: &'static str) {
        if self.lock().counted.insert((op.digest, result)) {
            self.metrics
                .resolutions_total
                .with_label_values(&[&route.name, &op.pinned, result])
                .inc();
        }
    }

    fn credential(
        &self,
        generation: &Generation,
        request: &KeptRequest,
    ) -> Option<http::HeaderValue> {
        request
            .shop_credential
            .then(|| generation.idempotency.credentials().get(&request.scope))
            .flatten()
    }

    /// Sends `request` again now, and counts what came of it.
    async fn try_one(
        &self,
        generation: &Arc<Generation>,
        route: &Arc<Route>,
        op: &UnknownOp,
        request: &KeptRequest,
        credential: Option<http::HeaderValue>,
    ) -> Tried {
        let ctx = RouteCtx::new(
            Arc::clone(generation),
            Arc::clone(route),
            tokio::time::Instant::now() + route.timeout,
        );
        let request_id = format!("resolver-{}", uuid::Uuid::new_v4());
        let result = crate::layers::resend(
            ctx,
            request,
            credential,
            self.metrics.clone(),
            self.audit.clone(),
            request_id.clone(),
        )
        .await;
        let tried = match result {
            Ok(resp) if resp.headers().get(&ATTEMPTS).is_some_and(|v| v == "0") => {
                Tried::AlreadyFinal
            }
            Ok(resp) if resp.headers().contains_key("x-switchyard-stored") => Tried::StillUnknown,
            Ok(resp) => Tried::Resolved(resp.status().as_u16()),
            Err(ProxyError::PinnedProviderUnavailable { .. }) => Tried::NotAdmitted,
            Err(ProxyError::IdempotencyConflict) => Tried::Busy,
            Err(ProxyError::StateUnavailable { .. }) => Tried::StateUnavailable,
            Err(ProxyError::NothingToResolve) => Tried::Gone,
            Err(e) => {
                tracing::debug!(error = %e, "a resend left the outcome unknown");
                Tried::StillUnknown
            }
        };
        if tried != Tried::NotAdmitted {
            // A later wait for the provider is counted again.
            self.lock().counted.remove(&(op.digest, "not_admitted"));
        }
        let labels = [&*route.name, &*op.pinned, tried.as_str()];
        match tried {
            Tried::Resolved(status) => {
                self.metrics
                    .resolutions_total
                    .with_label_values(&labels)
                    .inc();
                if let Some(kept) = &op.kept {
                    let now_ms = idempotency::unix_ms(SystemTime::now());
                    let secs = now_ms.saturating_sub(kept.since_ms) as f64 / 1000.0;
                    self.metrics
                        .resolution_seconds
                        .with_label_values(&[&route.name, &op.pinned])
                        .observe(secs);
                }
                tracing::info!(route = %route.name, provider = %op.pinned, status, request_id, "an unknown outcome was resolved by the provider's answer");
            }
            Tried::StillUnknown | Tried::NotAdmitted => {
                self.metrics
                    .resolutions_total
                    .with_label_values(&labels)
                    .inc();
            }
            _ => {}
        }
        tried
    }

    /// Stops trying `op`: the provider may have forgotten its key. It stays listed, unknown.
    async fn give_up(&self, generation: &Generation, route: &Route, op: &UnknownOp, kept: &Kept) {
        let Some(store) = generation.idempotency.get(&route.name) else {
            return;
        };
        let Ok(request) = &kept.request else {
            return;
        };
        let key = request.record_key();
        let uri: http::Uri = match request.path_and_query.parse() {
            Ok(u) => u,
            Err(_) => return,
        };
        let fingerprint =
            idempotency::fingerprint(&request.method, &route.name, uri.path(), &request.body);
        let lease = Duration::from_secs(10);
        let Ok(idempotency::Begin::Resume { lease, pinned, .. }) =
            store.begin(&key, fingerprint, lease, None).await
        else {
            return;
        };
        let mut stopped = kept.clone();
        stopped.next_ms = GAVE_UP;
        let finish = Finish::Unknown {
            provider: pinned,
            kept: Some(Arc::new(stopped)),
        };
        if store.finish(&key, lease, finish).await.is_ok() {
            self.metrics
                .resolutions_total
                .with_label_values(&[&route.name, &op.pinned, "gave_up"])
                .inc();
            tracing::error!(route = %route.name, provider = %op.pinned, key_digest = %hex::encode(op.digest), "the resolver gave up on an unknown outcome: the provider may have forgotten its key; look the payment up in the provider's dashboard");
        }
    }
}

/// How long `provider` keeps a key's answer.
fn retention(generation: &Generation, provider: &str) -> Duration {
    generation
        .snapshot
        .providers
        .get(provider)
        .map_or(crate::config::DEFAULT_IDEMPOTENCY_RETENTION, |p| {
            p.idempotency_retention
        })
}

/// The instant `ms` (Unix ms) was, given that `now` is `now_ms`.
fn instant_of(now: std::time::Instant, now_ms: u64, ms: u64) -> std::time::Instant {
    now.checked_sub(Duration::from_millis(now_ms.saturating_sub(ms)))
        .unwrap_or(now)
}

/// Whether a webhook's `key` names the operation of `request` at `provider`.
fn matches(generation: &Generation, provider: &str, request: &KeptRequest, key: &EventKey) -> bool {
    match key {
        EventKey::ProviderKey(sent) => {
            let Some(p) = generation.snapshot.providers.get(provider) else {
                return false;
            };
            let derived = match &p.auth {
                Some(_) => idempotency::scoped_key_for_provider(
                    &request.scope,
                    &request.key,
                    p.idempotency_key_max_len,
                ),
                None => idempotency::key_for_provider(&request.key, p.idempotency_key_max_len),
            };
            *derived == **sent
        }
        EventKey::Reference(reference) => {
            serde_json::from_slice::<serde_json::Value>(&request.body)
                .ok()
                .and_then(|v| {
                    v.get("reference")
                        .and_then(|r| r.as_str())
                        .map(str::to_owned)
                })
                .is_some_and(|r| r == *reference)
        }
    }
}
