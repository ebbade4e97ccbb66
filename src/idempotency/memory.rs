//! The in-memory idempotency store: records in one table, bounded by entries and bytes (stored
//! answers included), oldest settled record out first (records in flight are never evicted), each kept
//! for its ttl, reading the time from its own clock. The `memory` backend uses it as it is; the `local`
//! backend keeps it as its working set and journals every change ([`MemoryStore::image`],
//! [`MemoryStore::restore`]).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{pins, Begin, Finish, Kept, Lease, Name, RecordKey, Store, StoredAnswer, UnknownOp};
use crate::state::{Clock, StateError, SystemClock};

/// Where a record stands. Public for a store on disk, which keeps a copy of each record
/// ([`MemoryStore::image`]) and gives them back at start ([`MemoryStore::restore`]).
#[derive(Debug, Clone)]
pub enum RecordState {
    /// A request holds the key.
    InFlight {
        /// The provider an attempt was last recorded for.
        attempt: Option<Arc<str>>,
        /// Whether the operation resumed an unknown outcome (its pin outlives it).
        resumed: bool,
        /// The holder's fencing token.
        token: u64,
        /// When the holder's lease runs out.
        lease_until: Instant,
        /// What the record kept for its resolution before it was resumed.
        kept: Option<Arc<Kept>>,
    },
    /// The final answer, for replay.
    Done(StoredAnswer),
    /// The outcome at `pinned` is unknown.
    Unknown {
        /// The provider the key is pinned to.
        pinned: Arc<str>,
        /// What it keeps for its resolution.
        kept: Option<Arc<Kept>>,
    },
}

/// A copy of one record as [`MemoryStore`] holds it, named by [`RecordKey::digest`].
#[derive(Debug, Clone)]
pub struct RecordImage {
    /// The payload's fingerprint.
    pub fingerprint: [u8; 32],
    /// Where it stands.
    pub state: RecordState,
    /// When it expires.
    pub expires: Instant,
    /// The bytes it counts against [`Limits::max_bytes`].
    pub bytes: usize,
}

#[derive(Debug)]
struct Entry {
    fingerprint: [u8; 32],
    state: RecordState,
    expires: Instant,
    seq: u64,
    bytes: usize,
}

/// Bounds of a [`MemoryStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a record is kept.
    pub ttl: Duration,
    /// Most records.
    pub max_entries: usize,
    /// Most bytes.
    pub max_bytes: usize,
}

#[derive(Debug, Default)]
struct Inner {
    /// Keyed by the record's name alone: a record holds no copy of its key or scope.
    map: HashMap<Name, Entry, pins::Prehashed>,
    order: VecDeque<(u64, Name)>,
    seq: u64,
    bytes: usize,
    evictions: u64,
    /// The last fencing token given.
    tokens: u64,
    /// The records in flight or unknown: what [`Store::unknowns`] looks through (never the whole
    /// table).
    open: std::collections::HashSet<Name, pins::Prehashed>,
}

/// The in-memory store, reading the time from `C`.
#[derive(Debug)]
pub struct MemoryStore<C: Clock = SystemClock> {
    limits: Mutex<Limits>,
    inner: Mutex<Inner>,
    evicted: Option<prometheus::IntCounter>,
    clock: C,
}

const ENTRY_OVERHEAD: usize = 128;

impl MemoryStore {
    /// An empty store.
    pub fn new(limits: Limits) -> Self {
        Self::with_clock(limits, SystemClock, None)
    }

    /// An empty store counting its evictions in `counter` too.
    pub fn with_eviction_counter(limits: Limits, counter: prometheus::IntCounter) -> Self {
        Self::with_clock(limits, SystemClock, Some(counter))
    }
}

impl<C: Clock> MemoryStore<C> {
    /// An empty store reading the time from `clock`, counting its evictions in `counter` if any.
    pub fn with_clock(limits: Limits, clock: C, counter: Option<prometheus::IntCounter>) -> Self {
        Self {
            limits: Mutex::new(limits),
            inner: Mutex::new(Inner::default()),
            evicted: counter,
            clock,
        }
    }

    /// New bounds (a reload); records stay.
    pub fn set_limits(&self, limits: Limits) {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner()) = limits;
    }

    /// The bounds.
    pub fn limits(&self) -> Limits {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records evicted for room so far (expired ones are not counted).
    pub fn evictions(&self) -> u64 {
        self.lock().evictions
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the record of `key`, if any (for a store that writes each change out).
    pub fn image(&self, key: &RecordKey) -> Option<RecordImage> {
        self.lock().map.get(&key.name).map(|e| RecordImage {
            fingerprint: e.fingerprint,
            state: e.state.clone(),
            expires: e.expires,
            bytes: e.bytes,
        })
    }

    /// Whether a record named `digest` is held (expired or not).
    pub fn holds(&self, digest: &[u8; 16]) -> bool {
        self.lock().map.contains_key(&Name::of(*digest))
    }

    /// Puts back a record written out before (a store on disk, at start), as the newest; the bounds
    /// apply as to any write. Later fencing tokens are greater than the record's.
    pub fn restore(&self, digest: [u8; 16], image: RecordImage) {
        let limits = self.limits();
        let now = self.clock.now();
        let mut inner = self.lock();
        if let RecordState::InFlight { token, .. } = &image.state {
            inner.tokens = inner.tokens.max(*token);
        }
        inner.seq += 1;
        let seq = inner.seq;
        let name = Name::of(digest);
        let entry = Entry {
            fingerprint: image.fingerprint,
            state: image.state,
            expires: image.expires,
            seq,
            bytes: image.bytes,
        };
        if let Some(old) = inner.map.insert(name, entry) {
            inner.bytes -= old.bytes;
        }
        inner.bytes += image.bytes;
        inner.order.push_back((seq, name));
        if !matches!(
            inner.map.get(&name).map(|e| &e.state),
            Some(RecordState::Done(_))
        ) {
            inner.open.insert(name);
        }
        self.tidy(&mut inner, limits, now);
    }

    /// Makes every later fencing token greater than `token` (a store on disk, at start: tokens
    /// never repeat across restarts).
    pub fn raise_tokens(&self, token: u64) {
        let mut inner = self.lock();
        inner.tokens = inner.tokens.max(token);
    }

    /// Drops expired records, then the oldest settled ones while over a bound.
    fn tidy(&self, inner: &mut Inner, limits: Limits, now: Instant) {
        let before = inner.evictions;
        Self::tidy_inner(inner, limits, now);
        if let Some(c) = &self.evicted {
            c.inc_by(inner.evictions - before);
        }
    }

    fn tidy_inner(inner: &mut Inner, limits: Limits, now: Instant) {
        // Expired records: the order queue is by last write, and every write sets `now + ttl`.
        while let Some(&(seq, name)) = inner.order.front() {
            match inner.map.get(&name) {
                Some(e) if e.seq == seq => {
                    if e.expires > now {
                        break;
                    }
                    Self::remove(inner, &name);
                }
                _ => {}
            }
            inner.order.pop_front();
        }
        let mut skipped = VecDeque::new();
        while inner.map.len() > limits.max_entries || inner.bytes > limits.max_bytes {
            let Some((seq, name)) = inner.order.pop_front() else {
                break;
            };
            let Some(e) = inner.map.get(&name) else {
                continue;
            };
            if e.seq != seq {
                continue;
            }
            if matches!(e.state, RecordState::InFlight { .. }) {
                skipped.push_back((seq, name));
                continue;
            }
            if matches!(e.state, RecordState::Unknown { .. }) {
                tracing::warn!("idempotency store full: evicting a record whose outcome is unknown; size the store for your traffic");
            }
            Self::remove(inner, &name);
            inner.evictions += 1;
        }
        while let Some(item) = skipped.pop_back() {
            inner.order.push_front(item);
        }
    }

    fn remove(inner: &mut Inner, name: &Name) {
        if let Some(e) = inner.map.remove(name) {
            inner.bytes -= e.bytes;
        }
        inner.open.remove(name);
    }

    fn write(
        inner: &mut Inner,
        key: &RecordKey,
        entry_state: RecordState,
        fingerprint: [u8; 32],
        expires: Instant,
    ) {
        inner.seq += 1;
        let seq = inner.seq;
        let bytes = ENTRY_OVERHEAD
            + key.key.len()
            + key.scope.len()
            + match &entry_state {
                RecordState::Done(a) => a.bytes(),
                RecordState::Unknown { kept: Some(k), .. }
                | RecordState::InFlight { kept: Some(k), .. } => k.bytes(),
                _ => 0,
            };
        if matches!(entry_state, RecordState::Done(_)) {
            inner.open.remove(&key.name);
        } else {
            inner.open.insert(key.name);
        }
        let entry = Entry {
            fingerprint,
            state: entry_state,
            expires,
            seq,
            bytes,
        };
        if let Some(old) = inner.map.insert(key.name, entry) {
            inner.bytes -= old.bytes;
        }
        inner.bytes += bytes;
        inner.order.push_back((seq, key.name));
    }

    fn claim(inner: &mut Inner) -> Lease {
        inner.tokens += 1;
        Lease(inner.tokens)
    }

    /// [`Store::begin`], at once.
    pub(crate) fn begin_now(
        &self,
        key: &RecordKey,
        fingerprint: [u8; 32],
        lease: Duration,
        first: Option<&Arc<str>>,
    ) -> Begin {
        let limits = self.limits();
        let now = self.clock.now();
        let mut inner = self.lock();
        self.tidy(&mut inner, limits, now);
        let existing = inner.map.get(&key.name).map(|e| {
            let found = match &e.state {
                RecordState::InFlight {
                    attempt,
                    lease_until,
                    kept,
                    ..
                } if *lease_until <= now => match attempt {
                    // Its holder is gone after recording an attempt: that attempt's outcome is unknown.
                    Some(p) => Found::Resume(Arc::clone(p), kept.clone()),
                    // Nothing was recorded, so nothing was sent.
                    None => Found::Free,
                },
                RecordState::InFlight { .. } => Found::Begin(Begin::InFlight),
                RecordState::Done(answer) => Found::Begin(Begin::Replay(answer.clone())),
                RecordState::Unknown { pinned, kept } => {
                    Found::Resume(Arc::clone(pinned), kept.clone())
                }
            };
            (e.fingerprint, found)
        });
        match existing {
            Some((f, _)) if f != fingerprint => Begin::Mismatch,
            Some((_, Found::Begin(other))) => other,
            Some((_, Found::Resume(pinned, kept))) => {
                let claim = Self::claim(&mut inner);
                let state = RecordState::InFlight {
                    attempt: Some(Arc::clone(&pinned)),
                    resumed: true,
                    token: claim.0,
                    lease_until: now + lease,
                    kept: kept.clone(),
                };
                Self::write(&mut inner, key, state, fingerprint, now + limits.ttl);
                Begin::Resume {
                    pinned,
                    lease: claim,
                    kept,
                }
            }
            None | Some((_, Found::Free)) => {
                let claim = Self::claim(&mut inner);
                let state = RecordState::InFlight {
                    attempt: first.cloned(),
                    resumed: false,
                    token: claim.0,
                    lease_until: now + lease,
                    kept: None,
                };
                Self::write(&mut inner, key, state, fingerprint, now + limits.ttl);
                self.tidy(&mut inner, limits, now);
                Begin::New(claim)
            }
        }
    }

    /// The in-flight record of `key` held under `lease`, if it still is.
    fn held<'a>(inner: &'a mut Inner, key: &RecordKey, lease: Lease) -> Option<&'a mut Entry> {
        inner
            .map
            .get_mut(&key.name)
            .filter(|e| matches!(e.state, RecordState::InFlight { token, .. } if token == lease.0))
    }

    /// [`Store::attempt`], at once.
    pub(crate) fn attempt_now(
        &self,
        key: &RecordKey,
        lease: Lease,
        provider: &Arc<str>,
    ) -> Result<(), StateError> {
        let mut inner = self.lock();
        match Self::held(&mut inner, key, lease) {
            Some(Entry {
                state: RecordState::InFlight { attempt, .. },
                ..
            }) => {
                *attempt = Some(Arc::clone(provider));
                Ok(())
            }
            _ => Err(StateError::Fenced),
        }
    }

    /// [`Store::finish`], at once.
    pub(crate) fn finish_held(
        &self,
        key: &RecordKey,
        lease: Lease,
        finish: Finish,
    ) -> Result<(), StateError> {
        let limits = self.limits();
        let now = self.clock.now();
        let mut inner = self.lock();
        let Some(entry) = Self::held(&mut inner, key, lease) else {
            return Err(StateError::Fenced);
        };
        let fingerprint = entry.fingerprint;
        let (kept_pin, had) = match &entry.state {
            RecordState::InFlight {
                attempt,
                resumed,
                kept,
                ..
            } => (attempt.clone().filter(|_| *resumed), kept.clone()),
            _ => (None, None),
        };
        let next = match finish {
            Finish::NothingSent => {
                kept_pin.map(|pinned| RecordState::Unknown { pinned, kept: had })
            }
            Finish::Unknown { provider, kept } => Some(RecordState::Unknown {
                pinned: provider,
                kept: kept.or(had),
            }),
            Finish::Final(answer) => Some(RecordState::Done(answer)),
        };
        match next {
            Some(state) => Self::write(&mut inner, key, state, fingerprint, now + limits.ttl),
            None => Self::remove(&mut inner, &key.name),
        }
        self.tidy(&mut inner, limits, now);
        Ok(())
    }

    /// [`Store::unknowns`], at once.
    pub fn unknowns_now(&self, limit: usize) -> Vec<UnknownOp> {
        let now = self.clock.now();
        let inner = self.lock();
        let mut out: Vec<UnknownOp> = inner
            .open
            .iter()
            .filter_map(|name| {
                let e = inner.map.get(name)?;
                let (pinned, kept) = match &e.state {
                    RecordState::Unknown { pinned, kept } => (pinned, kept),
                    RecordState::InFlight {
                        attempt: Some(p),
                        lease_until,
                        kept,
                        ..
                    } if *lease_until <= now => (p, kept),
                    _ => return None,
                };
                Some(UnknownOp {
                    digest: name.digest,
                    pinned: Arc::clone(pinned),
                    kept: kept.clone(),
                })
            })
            .collect();
        drop(inner);
        out.sort_by_key(|u| u.kept.as_ref().map_or(0, |k| k.next_ms));
        out.truncate(limit);
        out
    }
}

/// What `begin` found under a key.
enum Found {
    Begin(Begin),
    Resume(Arc<str>, Option<Arc<Kept>>),
    /// An in-flight record whose holder left before recording any attempt.
    Free,
}

/// Never waits: every future is ready when made. Fails only with [`StateError::Fenced`].
impl<C: Clock> Store for MemoryStore<C> {
    fn begin(
        &self,
        key: &RecordKey,
        fingerprint: [u8; 32],
        lease: Duration,
        first: Option<&Arc<str>>,
    ) -> impl Future<Output = Result<Begin, StateError>> + Send {
        std::future::ready(Ok(self.begin_now(key, fingerprint, lease, first)))
    }

    fn attempt(
        &self,
        key: &RecordKey,
        lease: Lease,
        provider: &Arc<str>,
    ) -> impl Future<Output = Result<(), StateError>> + Send {
        std::future::ready(self.attempt_now(key, lease, provider))
    }

    fn finish(
        &self,
        key: &RecordKey,
        lease: Lease,
        finish: Finish,
    ) -> impl Future<Output = Result<(), StateError>> + Send {
        std::future::ready(self.finish_held(key, lease, finish))
    }

    fn finish_now(&self, key: &RecordKey, lease: Lease, finish: Finish) -> Result<(), Finish> {
        // A fenced write changes nothing, now or later.
        let _ = self.finish_held(key, lease, finish);
        Ok(())
    }

    fn unknowns(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<UnknownOp>, StateError>> + Send {
        std::future::ready(Ok(self.unknowns_now(limit)))
    }
}
