//! Event deduplication for one webhook: a small state machine keyed by event id, with `now` passed in.
//!
//! - An event is **delivered** only once the shop answered 2xx; its id is then remembered for the ttl,
//!   and a later copy is a duplicate (answered 200 without forwarding).
//! - While one copy is being delivered, the id is **in flight**: a concurrent copy waits for the outcome
//!   and never delivers in parallel. If the first delivery fails, the id is forgotten, so the next copy
//!   (the provider's redelivery, or the waiter) delivers it.
//! - A [`Claim`] that is dropped without an outcome (a bug, a cancelled task) forgets the id too.
//! - At most `max_entries` delivered ids are kept; the oldest go first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use crate::config::Dedupe;

/// The ids of one webhook.
#[derive(Debug, Default)]
pub struct DedupeStore {
    state: Mutex<State>,
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

/// What to do with an event.
#[derive(Debug)]
pub enum Begin {
    /// Deliver it; report the outcome on the claim.
    Deliver(Claim),
    /// It was delivered already.
    Duplicate,
    /// Another copy is being delivered: wait for `changed()` to end (it errs when that delivery is
    /// over), then begin again.
    Wait(watch::Receiver<()>),
}

/// The right to deliver one event id; see [`Claim::finish`].
#[derive(Debug)]
pub struct Claim {
    store: Arc<DedupeStore>,
    key: String,
    token: u64,
    finished: bool,
}

impl DedupeStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts handling event `key` at `now`.
    pub fn begin(self: &Arc<Self>, key: &str, now: Instant) -> Begin {
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
        Begin::Deliver(Claim {
            store: Arc::clone(self),
            key: key.to_owned(),
            token,
            finished: false,
        })
    }

    /// Ids remembered or in flight.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no id is remembered or in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn end(&self, key: &str, token: u64, delivered: Option<(Instant, Dedupe)>) {
        let mut state = self.lock();
        let ours =
            matches!(state.entries.get(key), Some(Entry::InFlight { token: t, .. }) if *t == token);
        if !ours {
            return;
        }
        match delivered {
            None => {
                state.entries.remove(key);
            }
            Some((now, settings)) => {
                let expires = now + settings.ttl;
                state
                    .entries
                    .insert(key.to_owned(), Entry::Delivered { expires });
                state.order.push_back((expires, key.to_owned()));
                evict(&mut state, now, settings.max_entries);
            }
        }
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

impl Claim {
    /// Reports the outcome: `delivered` when the shop answered 2xx (the id is remembered for
    /// `settings.ttl`), else the id is forgotten so that a redelivery is delivered.
    pub fn finish(mut self, delivered: bool, now: Instant, settings: Dedupe) {
        self.finished = true;
        self.store
            .end(&self.key, self.token, delivered.then_some((now, settings)));
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.finished {
            self.store.end(&self.key, self.token, None);
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

    fn claim(store: &Arc<DedupeStore>, key: &str, now: Instant) -> Claim {
        match store.begin(key, now) {
            Begin::Deliver(c) => c,
            other => panic!("{key}: expected Deliver, got {other:?}"),
        }
    }

    #[test]
    fn a_delivered_event_is_a_duplicate_until_its_ttl_ends() {
        let store = Arc::new(DedupeStore::default());
        let t0 = Instant::now();
        claim(&store, "evt_1", t0).finish(true, t0, SETTINGS);
        assert!(matches!(
            store.begin("evt_1", t0 + Duration::from_secs(59)),
            Begin::Duplicate
        ));
        // After the ttl it is new again.
        claim(&store, "evt_1", t0 + Duration::from_secs(61));
    }

    #[test]
    fn a_failed_delivery_is_forgotten_so_a_redelivery_goes_through() {
        let store = Arc::new(DedupeStore::default());
        let t0 = Instant::now();
        claim(&store, "evt_1", t0).finish(false, t0, SETTINGS);
        claim(&store, "evt_1", t0).finish(true, t0, SETTINGS);
        assert!(matches!(store.begin("evt_1", t0), Begin::Duplicate));
    }

    #[test]
    fn a_copy_during_delivery_waits_and_is_woken_by_the_outcome() {
        let store = Arc::new(DedupeStore::default());
        let t0 = Instant::now();
        let first = claim(&store, "evt_1", t0);
        let Begin::Wait(rx) = store.begin("evt_1", t0) else {
            panic!("expected Wait")
        };
        assert!(rx.has_changed().is_ok(), "still in flight");
        first.finish(true, t0, SETTINGS);
        assert!(rx.has_changed().is_err(), "the waiter is woken");
        assert!(matches!(store.begin("evt_1", t0), Begin::Duplicate));
    }

    #[test]
    fn a_dropped_claim_forgets_the_id() {
        let store = Arc::new(DedupeStore::default());
        let t0 = Instant::now();
        drop(claim(&store, "evt_1", t0));
        assert!(store.is_empty());
        claim(&store, "evt_1", t0);
    }

    #[test]
    fn the_oldest_ids_go_first_past_the_bound() {
        let store = Arc::new(DedupeStore::default());
        let t0 = Instant::now();
        for (i, key) in ["a", "b", "c"].iter().enumerate() {
            let t = t0 + Duration::from_secs(i as u64);
            claim(&store, key, t).finish(true, t, SETTINGS);
        }
        assert_eq!(store.len(), 2);
        // "a" was evicted: it would be delivered again; "b" and "c" are still duplicates.
        assert!(matches!(store.begin("b", t0), Begin::Duplicate));
        assert!(matches!(store.begin("c", t0), Begin::Duplicate));
        claim(&store, "a", t0);
    }
}
