//! The three stores of the local backend: each is the in-memory store it wraps (same answers, same
//! bounds), and writes the resulting state of every change to the journal before its future is made.
//!
//! Records are journalled by copying the record out of the in-memory store under the journal's lock,
//! after the change: whichever copy is written last was made after every change already answered, so
//! the journal's last word on a record is the store's. Pins and event ids are changed and journalled
//! under that lock together.
//!
//! A record in flight or unknown is written with what it keeps for its resolution (its request and
//! the resolver's schedule, [`Kept`]), so that after a restart the resolver finds it listed
//! ([`Store::unknowns`]) and a resume gets it back; its bytes count against the route's bound as
//! they did before the restart (the record's byte count is journalled with it).

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::Dedupe;
use crate::idempotency::{
    Begin, Candidates, Finish, Kept, Lease, MemoryStore, ObjectPins, PinStore, RecordImage,
    RecordKey, RecordState, Store, StoredAnswer,
};
use crate::state::{Clock, StateError, SystemClock};
use crate::webhooks::dedupe::{self, DedupeStore, EventStore, Token};

use super::journal::{self, Change, Journal};

/// Milliseconds since the Unix epoch (0 before it).
pub(super) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The wall-clock time (ms) of `t`, read against `clock`; rounded up.
pub(super) fn wall_ms<C: Clock>(clock: &C, t: Instant) -> u64 {
    let now = clock.now();
    let wall = unix_ms(clock.wall());
    if t >= now {
        let d = t - now;
        wall.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .saturating_add(u64::from(d.subsec_nanos() % 1_000_000 > 0))
    } else {
        wall.saturating_sub(u64::try_from((now - t).as_millis()).unwrap_or(u64::MAX))
    }
}

/// Converts wall-clock times back to this process's clock.
#[derive(Debug, Clone, Copy)]
pub(super) struct Wall {
    now: Instant,
    now_ms: u64,
}

impl Wall {
    /// Now, on `clock`.
    pub(super) fn of<C: Clock>(clock: &C) -> Self {
        Self {
            now: clock.now(),
            now_ms: unix_ms(clock.wall()),
        }
    }

    /// `ms` on this process's clock; `None` when it has passed.
    pub(super) fn instant(self, ms: u64) -> Option<Instant> {
        (ms > self.now_ms).then(|| self.now + Duration::from_millis(ms - self.now_ms))
    }

    /// Now, on this process's clock.
    pub(super) fn now(self) -> Instant {
        self.now
    }
}

/// One route's idempotency records: a [`MemoryStore`] whose every change is journalled.
#[derive(Debug)]
pub struct LocalRecords<C: Clock + Clone = SystemClock> {
    route: Arc<str>,
    store: MemoryStore<C>,
    journal: Arc<Journal>,
    clock: C,
}

impl<C: Clock + Clone> LocalRecords<C> {
    pub(super) fn new(
        route: Arc<str>,
        store: MemoryStore<C>,
        journal: Arc<Journal>,
        clock: C,
    ) -> Self {
        Self {
            route,
            store,
            journal,
            clock,
        }
    }

    /// The in-memory working set (bounds, counts).
    pub fn memory(&self) -> &MemoryStore<C> {
        &self.store
    }

    /// Writes the record of `key` as it is now (or its deletion).
    fn journal(&self, key: &RecordKey) -> Result<(), StateError> {
        let mut w = self.journal.writer();
        let image = self.store.image(key);
        let record = image.as_ref().map(|i| self.written(i));
        let change = Change::Record {
            route: &self.route,
            digest: *key.digest(),
            record,
        };
        self.journal.append(&mut w, &change)
    }

    fn written<'a>(&self, i: &'a RecordImage) -> journal::Record<'a> {
        let state = match &i.state {
            RecordState::InFlight {
                attempt,
                resumed,
                token,
                lease_until,
                kept,
            } => journal::State::InFlight {
                attempt: attempt.as_deref(),
                resumed: *resumed,
                token: *token,
                lease_until_ms: wall_ms(&self.clock, *lease_until),
                kept: kept.as_ref().map(|k| Cow::Owned(k.to_bytes())),
            },
            RecordState::Done(answer) => {
                let (status, provider, blob, body_at) = answer.parts();
                journal::State::Done {
                    status: status.as_u16(),
                    provider,
                    body_at: u32::try_from(body_at).unwrap_or(u32::MAX),
                    blob,
                }
            }
            RecordState::Unknown { pinned, kept } => journal::State::Unknown {
                pinned,
                kept: kept.as_ref().map(|k| Cow::Owned(k.to_bytes())),
            },
        };
        journal::Record {
            fingerprint: i.fingerprint,
            expires_ms: wall_ms(&self.clock, i.expires),
            bytes: u32::try_from(i.bytes).unwrap_or(u32::MAX),
            state,
        }
    }

    /// Puts back a record read from the journal; `None` when it expired. A record in flight belonged
    /// to a process that is gone (the store's lock is exclusive): its lease has run out.
    pub(super) fn restore(
        &self,
        digest: [u8; 16],
        r: &journal::Record<'_>,
        wall: Wall,
    ) -> Option<()> {
        let expires = wall.instant(r.expires_ms)?;
        let state = match &r.state {
            journal::State::InFlight {
                attempt,
                resumed,
                token,
                kept,
                ..
            } => RecordState::InFlight {
                attempt: attempt.map(Arc::from),
                resumed: *resumed,
                token: *token,
                lease_until: wall.now(),
                kept: kept.as_deref().and_then(read_kept),
            },
            journal::State::Done {
                status,
                provider,
                body_at,
                blob,
            } => {
                let status = http::StatusCode::from_u16(*status).ok()?;
                let blob = bytes::Bytes::copy_from_slice(blob);
                let answer = StoredAnswer::from_parts(
                    status,
                    Arc::from(*provider),
                    blob,
                    *body_at as usize,
                )?;
                RecordState::Done(answer)
            }
            journal::State::Unknown { pinned, kept } => RecordState::Unknown {
                pinned: Arc::from(*pinned),
                kept: kept.as_deref().and_then(read_kept),
            },
        };
        self.store.restore(
            digest,
            RecordImage {
                fingerprint: r.fingerprint,
                state,
                expires,
                bytes: r.bytes as usize,
            },
        );
        Some(())
    }
}

/// What a record kept, read back from the journal. Bytes that are not a [`Kept`] (a later format)
/// are left out with a warning: the record still resumes at its pinned provider, and the shop's
/// retry or a webhook resolves it.
fn read_kept(bytes: &[u8]) -> Option<Arc<Kept>> {
    let kept = Kept::from_bytes(bytes).map(Arc::new);
    if kept.is_none() {
        tracing::warn!("a record in the local state journal keeps a request this build cannot read; it is resolved by the shop's retry or a webhook only");
    }
    kept
}

/// Answers as [`MemoryStore`] does; a change is in the journal (the page cache) when its future is
/// made, so the future is ready at once. A journal that cannot be written fails the call
/// ([`StateError::Unreachable`]): nothing is sent that the journal does not know of.
impl<C: Clock + Clone> Store for LocalRecords<C> {
    fn begin(
        &self,
        key: &RecordKey,
        fingerprint: [u8; 32],
        lease: Duration,
        first: Option<&Arc<str>>,
    ) -> impl Future<Output = Result<Begin, StateError>> + Send {
        let begun = self.store.begin_now(key, fingerprint, lease, first);
        let out = match &begun {
            Begin::New(held) | Begin::Resume { lease: held, .. } => match self.journal(key) {
                Ok(()) => Ok(begun),
                Err(e) => {
                    // Not journalled, so not claimed: give the claim back (an unknown pin stays).
                    let _ = self.store.finish_held(key, *held, Finish::NothingSent);
                    Err(e)
                }
            },
            _ => Ok(begun),
        };
        std::future::ready(out)
    }

    fn attempt(
        &self,
        key: &RecordKey,
        lease: Lease,
        provider: &Arc<str>,
    ) -> impl Future<Output = Result<(), StateError>> + Send {
        let out = self
            .store
            .attempt_now(key, lease, provider)
            .and_then(|()| self.journal(key));
        std::future::ready(out)
    }

    fn finish(
        &self,
        key: &RecordKey,
        lease: Lease,
        finish: Finish,
    ) -> impl Future<Output = Result<(), StateError>> + Send {
        let out = self
            .store
            .finish_held(key, lease, finish)
            .and_then(|()| self.journal(key));
        std::future::ready(out)
    }

    fn finish_now(&self, key: &RecordKey, lease: Lease, finish: Finish) -> Result<(), Finish> {
        if self.store.finish_held(key, lease, finish).is_ok() {
            if let Err(e) = self.journal(key) {
                tracing::warn!(error = %e, "a settled record could not be journalled; after a restart its key resumes at its recorded provider");
            }
        }
        Ok(())
    }

    fn unknowns(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<crate::idempotency::UnknownOp>, StateError>> + Send {
        std::future::ready(Ok(self.store.unknowns_now(limit)))
    }
}

/// Payment-object pins: an [`ObjectPins`] whose every pin is journalled.
#[derive(Debug)]
pub struct LocalPins<C: Clock + Clone = SystemClock> {
    pins: ObjectPins<C>,
    journal: Arc<Journal>,
    clock: C,
}

impl<C: Clock + Clone> LocalPins<C> {
    pub(super) fn new(pins: ObjectPins<C>, journal: Arc<Journal>, clock: C) -> Self {
        Self {
            pins,
            journal,
            clock,
        }
    }

    /// The in-memory working set (bounds, counts).
    pub fn memory(&self) -> &ObjectPins<C> {
        &self.pins
    }
}

/// Answers as [`ObjectPins`] does, ready at once; a pin is journalled before `remember` answers.
impl<C: Clock + Clone> PinStore for LocalPins<C> {
    fn remember(
        &self,
        id: &str,
        provider: &Arc<str>,
    ) -> impl Future<Output = Result<(), StateError>> + Send {
        let mut w = self.journal.writer();
        self.pins.remember_now(id, provider);
        let until_ms = unix_ms(self.clock.wall() + self.pins.ttl());
        let change = Change::Pin {
            id,
            provider,
            until_ms,
        };
        std::future::ready(self.journal.append(&mut w, &change))
    }

    fn find_any(
        &self,
        ids: &Candidates<'_>,
    ) -> impl Future<Output = Result<Option<Arc<str>>, StateError>> + Send {
        std::future::ready(Ok(self.pins.find_any_now(ids)))
    }
}

/// One webhook's delivered event ids: a [`DedupeStore`] whose every delivery is journalled. A
/// delivery in flight is not: after a crash, the provider delivers it again.
#[derive(Debug)]
pub struct LocalEvents<C: Clock + Clone = SystemClock> {
    webhook: Arc<str>,
    store: DedupeStore<C>,
    journal: Arc<Journal>,
    clock: C,
}

impl<C: Clock + Clone> LocalEvents<C> {
    pub(super) fn new(
        webhook: Arc<str>,
        store: DedupeStore<C>,
        journal: Arc<Journal>,
        clock: C,
    ) -> Self {
        Self {
            webhook,
            store,
            journal,
            clock,
        }
    }

    /// The in-memory working set.
    pub fn memory(&self) -> &DedupeStore<C> {
        &self.store
    }
}

/// Answers as [`DedupeStore`] does, ready at once; a delivered id is journalled before `finish`
/// answers.
impl<C: Clock + Clone> EventStore for LocalEvents<C> {
    fn begin(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<dedupe::Begin<Token>, StateError>> + Send {
        std::future::ready(Ok(self.store.begin_now(id)))
    }

    fn finish(
        &self,
        id: &str,
        token: Token,
        delivered: Option<Dedupe>,
    ) -> impl Future<Output = Result<(), StateError>> + Send {
        let out = match delivered {
            None => {
                let _ = self.store.end(id, token, None);
                Ok(())
            }
            Some(settings) => {
                let mut w = self.journal.writer();
                if self.store.end(id, token, Some(settings)) {
                    let change = Change::Event {
                        webhook: &self.webhook,
                        id,
                        expires_ms: unix_ms(self.clock.wall() + settings.ttl),
                    };
                    self.journal.append(&mut w, &change)
                } else {
                    Ok(())
                }
            }
        };
        std::future::ready(out)
    }

    fn forget_now(&self, id: &str, token: Token) -> bool {
        let _ = self.store.end(id, token, None);
        true
    }
}
