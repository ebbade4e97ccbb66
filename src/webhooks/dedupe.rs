//! Event deduplication for one webhook: a small state machine keyed by event id.
//!
//! - An event is **delivered** only once the shop answered 2xx; its id is then remembered for the ttl,
//!   and a later copy is a duplicate (answered 200 without forwarding).
//! - While one copy is being delivered, the id is **in flight**: a concurrent copy waits for the outcome
//!   and never delivers in parallel. If the first delivery fails, the id is forgotten, so the next copy
//!   (the provider's redelivery, or the waiter) delivers it.
//! - A [`Claim`] that is dropped without an outcome (a bug, a cancelled task) forgets the id too.
//! - At most `max_entries` delivered ids are kept; the oldest go first.
//!
//! The ids are kept by an [`EventStore`] (async and fallible: see [`crate::state`]); [`DedupeStore`]
//! keeps them in memory and reads the time from its own clock. A store names an event by its id, which
//! every process sees alike.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use crate::config::Dedupe;
use crate::state::{Clock, StateError, SystemClock};

/// A store of webhook event ids.
///
/// Later backends: the token given with [`Begin::Deliver`] is where a lease with a fencing token goes
/// (a delivery whose sidecar died would then free its id when the lease runs out; not implemented);
/// [`Begin::Wait`]'s receiver is ended by the store when the other delivery is over, which a shared
/// store may learn by asking again.
pub trait EventStore: Send + Sync + 'static {
    /// Starts handling event `id`: deliver it (the id is now in flight), it is a duplicate, or wait.
    fn begin(&self, id: &str) -> impl Future<Output = Result<Begin<Token>, StateError>> + Send;

    /// Ends the delivery of `id` that `token` was given for: `Some(settings)` when the shop accepted
    /// it (the id is remembered for `settings.ttl`), `None` to forget the id. A token that is not the
    /// id's current one changes nothing.
    fn finish(
        &self,
        id: &str,
        token: Token,
        delivered: Option<Dedupe>,
    ) -> impl Future<Output = Result<(), StateError>> + Send;

    /// Forgets `id` for `token` at once, without waiting, when this store can (the in-memory one
    /// can): for a claim dropped without an outcome. `false`: the caller runs [`EventStore::finish`]
    /// in a task of its own.
    fn forget_now(&self, id: &str, token: Token) -> bool {
        let _ = (id, token);
        false
    }
}

/// Which delivery of an id a store's answer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token(pub u64);

/// What to do with an event.
#[derive(Debug)]
pub enum Begin<C> {
    /// Deliver it; report the outcome on the claim.
    Deliver(C),
    /// It was delivered already.
    Duplicate,
    /// Another copy is being delivered: wait for `changed()` to end (it errs when that delivery is
    /// over), then begin again.
    Wait(watch::Receiver<()>),
}

/// Starts handling event `id` in `store`, with a [`Claim`] to deliver it.
pub async fn begin<S: EventStore>(store: &Arc<S>, id: &str) -> Result<Begin<Claim<S>>, StateError> {
    Ok(match store.begin(id).await? {
        Begin::Deliver(token) => Begin::Deliver(Claim {
            store: Arc::clone(store),
            key: id.to_owned(),
            token,
            finished: false,
        }),
        Begin::Duplicate => Begin::Duplicate,
        Begin::Wait(rx) => Begin::Wait(rx),
    })
}

/// The right to deliver one event id; see [`Claim::finish`].
pub struct Claim<S: EventStore = WebhookStore> {
    store: Arc<S>,
    key: String,
    token: Token,
    finished: bool,
}

impl<S: EventStore> std::fmt::Debug for Claim<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("key", &self.key)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl<S: EventStore> Claim<S> {
    /// Reports the outcome: `delivered` when the shop answered 2xx (the id is remembered for
    /// `settings.ttl`), else the id is forgotten so that a redelivery is delivered.
    pub async fn finish(mut self, delivered: bool, settings: Dedupe) -> Result<(), StateError> {
        self.finished = true;
        self.store
            .finish(&self.key, self.token, delivered.then_some(settings))
            .await
    }
}

impl<S: EventStore> Drop for Claim<S> {
    fn drop(&mut self) {
        if self.finished || self.store.forget_now(&self.key, self.token) {
            return;
        }
        // A store that must be waited for is told in a task that owns what it needs.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("a webhook claim was dropped outside the runtime; its id stays in flight until the store frees it");
            return;
        };
        let store = Arc::clone(&self.store);
        let key = std::mem::take(&mut self.key);
        let token = self.token;
        runtime.spawn(async move {
            if let Err(e) = store.finish(&key, token, None).await {
                tracing::warn!(error = %e, "a dropped webhook claim could not be released");
            }
        });
    }
}

/// The store each webhook uses.
pub type WebhookStore = crate::state::Events;

/// The ids of one webhook, in memory; reads the time from `C`.
#[derive(Debug, Default)]
pub struct DedupeStore<C: Clock = SystemClock> {
    state: Mutex<State>,
    clock: C,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// Delivered ids in delivery order, with their expiry, for eviction.
    order: VecDeque<(Instant, String)>,
    next_token: u64,
}

#[derive(Debug)]
enum Entry {
    InFlight {
        token: u64,
        /// Dropped when the delivery ends, which wakes every waiter.
        _done: watch::Sender<()>,
    },
    Delivered {
        expires: Instant,
    },
}

impl<C: Clock> DedupeStore<C> {
    /// An empty store reading the time from `clock`.
    pub fn with_clock(clock: C) -> Self {
        Self {
            state: Mutex::default(),
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ids remembered or in flight.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no id is remembered or in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `id` is remembered as delivered (expired or not).
    pub fn holds(&self, id: &str) -> bool {
        matches!(self.lock().entries.get(id), Some(Entry::Delivered { .. }))
    }

    /// Puts back a delivered id written out before (a store on disk, at start), remembered until
    /// `expires`, as the newest; the bound applies at the next delivery.
    pub fn restore(&self, id: &str, expires: Instant) {
        let mut state = self.lock();
        state
            .entries
            .insert(id.to_owned(), Entry::Delivered { expires });
        state.order.push_back((expires, id.to_owned()));
    }

    /// [`EventStore::begin`], at once.
    pub(crate) fn begin_now(&self, key: &str) -> Begin<Token> {
        let now = self.clock.now();
        let mut state = self.lock();
        match state.entries.get(key) {
            Some(Entry::Delivered { expires }) if *expires > now => return Begin::Duplicate,
            Some(Entry::InFlight { _done, .. }) => return Begin::Wait(_done.subscribe()),
            _ => {}
        }
        state.next_token += 1;
        let token = state.next_token;
        let (done, _) = watch::channel(());
        state
            .entries
            .insert(key.to_owned(), Entry::InFlight { token, _done: done });
        Begin::Deliver(Token(token))
    }

    /// [`EventStore::finish`], at once: whether `token` was the id's current delivery (else nothing
    /// changed).
    pub(crate) fn end(&self, key: &str, token: Token, delivered: Option<Dedupe>) -> bool {
        let now = self.clock.now();
        let mut state = self.lock();
        let ours = matches!(state.entries.get(key), Some(Entry::InFlight { token: t, .. }) if *t == token.0);
        if !ours {
            return false;
        }
        match delivered {
            None => {
                state.entries.remove(key);
            }
            Some(settings) => {
                let expires = now + settings.ttl;
                state
                    .entries
                    .insert(key.to_owned(), Entry::Delivered { expires });
                state.order.push_back((expires, key.to_owned()));
                evict(&mut state, now, settings.max_entries);
            }
        }
        true
    }
}

/// Never fails, never waits: every future is ready when made.
impl<C: Clock> EventStore for DedupeStore<C> {
    fn begin(&self, id: &str) -> impl Future<Output = Result<Begin<Token>, StateError>> + Send {
        std::future::ready(Ok(self.begin_now(id)))
    }

    fn finish(
        &self,
        id: &str,
        token: Token,
        delivered: Option<Dedupe>,
    ) -> impl Future<Output = Result<(), StateError>> + Send {
        let _ = self.end(id, token, delivered);
        std::future::ready(Ok(()))
    }

    fn forget_now(&self, id: &str, token: Token) -> bool {
        let _ = self.end(id, token, None);
        true
    }
}

/// Drops expired ids, then the oldest delivered ones past `max`.
fn evict(state: &mut State, now: Instant, max: usize) {
    while let Some((expires, key)) = state.order.front().cloned() {
        let over = state.order.len() > max;
        if expires > now && !over {
            break;
        }
        state.order.pop_front();
        // Only the entry this queue slot stands for: a later delivery of the same id has its own slot.
        if matches!(state.entries.get(&key), Some(Entry::Delivered { expires: e }) if *e == expires)
        {
            state.entries.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SETTINGS: Dedupe = Dedupe {
        ttl: Duration::from_secs(60),
        max_entries: 2,
    };

    #[tokio::test]
    async fn a_dropped_claim_forgets_the_id_at_once_in_memory() {
        let store = Arc::new(DedupeStore::<SystemClock>::default());
        let Ok(Begin::Deliver(claim)) = begin(&store, "evt_1").await else {
            panic!("expected Deliver")
        };
        drop(claim);
        assert!(store.is_empty(), "no task needed");
        assert!(matches!(
            begin(&store, "evt_1").await,
            Ok(Begin::Deliver(_))
        ));
    }

    /// A store that cannot forget at once: the memory store, told only through `finish`.
    #[derive(Default)]
    struct Remote(DedupeStore<SystemClock>);

    impl EventStore for Remote {
        fn begin(&self, id: &str) -> impl Future<Output = Result<Begin<Token>, StateError>> + Send {
            self.0.begin(id)
        }

        fn finish(
            &self,
            id: &str,
            token: Token,
            delivered: Option<Dedupe>,
        ) -> impl Future<Output = Result<(), StateError>> + Send {
            self.0.finish(id, token, delivered)
        }
    }

    #[tokio::test]
    async fn a_dropped_claim_of_a_store_that_must_be_waited_for_is_released_by_a_task() {
        let store = Arc::new(Remote::default());
        let Ok(Begin::Deliver(claim)) = begin(&store, "evt_1").await else {
            panic!("expected Deliver")
        };
        drop(claim);
        assert_eq!(store.0.len(), 1, "still in flight until the task runs");
        let Ok(Begin::Wait(mut rx)) = begin(&store, "evt_1").await else {
            panic!("expected Wait")
        };
        let woken = tokio::time::timeout(Duration::from_secs(5), rx.changed()).await;
        assert!(matches!(woken, Ok(Err(_))), "released by the task");
        assert!(matches!(
            begin(&store, "evt_1").await,
            Ok(Begin::Deliver(_))
        ));
    }

    #[tokio::test]
    async fn a_late_finish_of_an_old_delivery_changes_nothing() {
        let store = Arc::new(DedupeStore::<SystemClock>::default());
        let Ok(Begin::Deliver(Token(first))) = store.begin("evt_1").await else {
            panic!("expected Deliver")
        };
        store.forget_now("evt_1", Token(first));
        let Ok(Begin::Deliver(second)) = store.begin("evt_1").await else {
            panic!("expected Deliver")
        };
        // The first delivery's outcome arrives after the second began: the second still holds the id.
        store
            .finish("evt_1", Token(first), Some(SETTINGS))
            .await
            .unwrap();
        assert!(matches!(store.begin("evt_1").await, Ok(Begin::Wait(_))));
        store.finish("evt_1", second, Some(SETTINGS)).await.unwrap();
        assert!(matches!(store.begin("evt_1").await, Ok(Begin::Duplicate)));
    }
}
