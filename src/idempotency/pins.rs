//! Payment objects pinned to the provider that holds them, so that follow-up operations (capture,
//! refund, void) go to that provider: an id that a provider returned (`"id": "pi_…"` in a JSON answer)
//! is remembered, and a later request that names it in its path or body goes to that provider only.
//!
//! Finding the ids a request names ([`candidate_ids`]) is pure and done before any store is asked; the
//! store ([`PinStore`]) then looks them all up at once. A store names a pin by the object's id, which
//! every process sees alike; the in-memory [`ObjectPins`] keeps a keyed digest of it instead (below).

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::state::{Clock, StateError, SystemClock};

/// Shortest token taken for an object id (shorter ones are too common to mean anything).
const MIN_ID_LEN: usize = 8;

/// A pin: which provider, until when (seconds after the table's epoch).
#[derive(Debug, Clone, Copy)]
struct Pin {
    provider: u16,
    until: u32,
}

/// The table keeps a keyed 64-bit digest of each id, not the id: 16 bytes a pin instead of an
/// allocation per id, and growing the table rehashes integers. The digest never leaves the process (a
/// store shared with other processes names pins by the id). Two ids with one digest (odds about
/// n²/2⁶⁵, some 10⁻⁹ for 200 000 pins, and not steerable from outside: the key is random per
/// table) would send a follow-up of one to the provider of the other, which answers that it does
/// not know the object; nothing is charged.
#[derive(Debug, Default)]
struct Inner {
    map: HashMap<u64, Pin, Prehashed>,
    order: VecDeque<u64>,
    providers: Vec<Arc<str>>,
    ttl: Duration,
    max: usize,
}

impl Inner {
    /// Drops the oldest ids beyond the bound.
    fn trim(&mut self) {
        while self.map.len() > self.max {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.map.remove(&old);
        }
    }

    fn provider_index(&mut self, provider: &Arc<str>) -> u16 {
        match self.providers.iter().position(|p| p == provider) {
            Some(i) => i as u16,
            None => {
                self.providers.push(Arc::clone(provider));
                (self.providers.len() - 1) as u16
            }
        }
    }
}

/// For tables whose keys carry a keyed hash of their own (a digest, or a key's precomputed hash):
/// the table takes it as is.
pub(super) type Prehashed = BuildHasherDefault<Digest>;

/// Passes a key's own 64-bit hash through (bytes, which no such key writes, are folded in).
#[derive(Debug, Default)]
pub(super) struct Digest(u64);

impl Hasher for Digest {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The ids a request names, in its path then its body, for [`PinStore::find_any`]: the first few held
/// inline, so that a usual request makes no allocation.
#[derive(Debug, Default)]
pub struct Candidates<'a> {
    inline: [&'a [u8]; INLINE],
    len: usize,
    more: Vec<&'a [u8]>,
}

const INLINE: usize = 8;

impl<'a> Candidates<'a> {
    fn push(&mut self, id: &'a [u8]) {
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = id,
            None => self.more.push(id),
        }
        self.len += 1;
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the request names no id.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The ids, in order (each made of ASCII letters, digits, `_` and `-`).
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.inline[..self.len.min(INLINE)]
            .iter()
            .chain(self.more.iter())
            .copied()
    }
}

/// The tokens of `path` and `body` that may be object ids: runs of id characters at least
/// eight characters long, path first.
pub fn candidate_ids<'a>(path: &'a str, body: &'a [u8]) -> Candidates<'a> {
    let mut out = Candidates::default();
    path.as_bytes()
        .split(|b| !is_id_byte(*b))
        .chain(body.split(|b| !is_id_byte(*b)))
        .filter(|token| token.len() >= MIN_ID_LEN)
        .for_each(|token| out.push(token));
    out
}

/// The top-level `"id"` of a JSON answer, when it can be an object id.
pub fn answer_id(body: &[u8]) -> Option<Cow<'_, str>> {
    // Only the top-level "id" is read: no tree of the whole answer is built on the request path.
    #[derive(serde::Deserialize)]
    struct Answer<'a> {
        #[serde(borrow, default)]
        id: Option<Id<'a>>,
    }
    let Ok(Answer { id: Some(Id(id)) }) = serde_json::from_slice::<Answer<'_>>(body) else {
        return None;
    };
    (id.len() >= MIN_ID_LEN && id.bytes().all(is_id_byte)).then_some(id)
}

/// A JSON string borrowed from the answer when it has no escapes (serde's `Cow<str>` inside an
/// `Option` is always copied), copied only when it has.
struct Id<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Id<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Id<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Id<'de>, E> {
                Ok(Id(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Id<'de>, E> {
                Ok(Id(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(Visit)
    }
}

/// A store of object pins: object id → provider, each for the store's ttl.
///
/// Every method may fail with [`StateError`]; a caller that cannot look a follow-up's object up
/// answers `state_unavailable` rather than guess a provider.
pub trait PinStore: Send + Sync + 'static {
    /// Pins object `id` to `provider`.
    fn remember(
        &self,
        id: &str,
        provider: &Arc<str>,
    ) -> impl Future<Output = Result<(), StateError>> + Send;

    /// The provider of the first of `ids` that is pinned, if any: one lookup for all of them.
    fn find_any(
        &self,
        ids: &Candidates<'_>,
    ) -> impl Future<Output = Result<Option<Arc<str>>, StateError>> + Send;

    /// Pins the top-level `"id"` of a JSON answer from `provider`, if it has one.
    fn remember_answer<'a>(
        &'a self,
        body: &'a [u8],
        provider: &'a Arc<str>,
    ) -> impl Future<Output = Result<(), StateError>> + Send + 'a {
        let id = answer_id(body);
        async move {
            match id {
                Some(id) => self.remember(&id, provider).await,
                None => Ok(()),
            }
        }
    }

    /// The provider holding an object named in `path` or `body`, if any.
    fn find<'a>(
        &'a self,
        path: &'a str,
        body: &'a [u8],
    ) -> impl Future<Output = Result<Option<Arc<str>>, StateError>> + Send + 'a {
        let ids = candidate_ids(path, body);
        async move {
            if ids.is_empty() {
                return Ok(None);
            }
            self.find_any(&ids).await
        }
    }
}

/// Object id → provider, bounded and expiring, in memory; reads the time from `C`.
#[derive(Debug)]
pub struct ObjectPins<C: Clock = SystemClock> {
    epoch: Instant,
    ids: RandomState,
    inner: Mutex<Inner>,
    clock: C,
}

impl ObjectPins {
    /// A table keeping ids for `ttl`, at most `max` of them.
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self::with_clock(ttl, max, SystemClock)
    }
}

impl<C: Clock> ObjectPins<C> {
    /// A table keeping ids for `ttl`, at most `max` of them, reading the time from `clock`.
    pub fn with_clock(ttl: Duration, max: usize, clock: C) -> Self {
        Self {
            epoch: clock.now(),
            ids: RandomState::new(),
            inner: Mutex::new(Inner {
                ttl,
                max,
                ..Inner::default()
            }),
            clock,
        }
    }

    /// New bounds (a reload): ids stay, the oldest beyond `max` go at once; `ttl` applies to ids
    /// remembered from now on.
    pub fn set_limits(&self, ttl: Duration, max: usize) {
        let mut inner = self.lock();
        inner.ttl = ttl;
        inner.max = max;
        inner.trim();
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn digest(&self, id: &[u8]) -> u64 {
        self.ids.hash_one(id)
    }

    /// Seconds from the epoch to `t`, rounded up: pins expire to the second.
    fn secs(&self, t: Instant) -> u32 {
        let d = t.saturating_duration_since(self.epoch);
        u32::try_from(d.as_secs() + u64::from(d.subsec_nanos() > 0)).unwrap_or(u32::MAX)
    }

    /// How long an id remembered now is kept.
    pub fn ttl(&self) -> Duration {
        self.lock().ttl
    }

    /// Whether `id` is pinned (expired or not).
    pub fn holds(&self, id: &str) -> bool {
        let digest = self.digest(id.as_bytes());
        self.lock().map.contains_key(&digest)
    }

    /// Puts back a pin written out before (a store on disk, at start), kept until `until`, as the
    /// newest; the bound applies.
    pub fn restore(&self, id: &str, provider: &Arc<str>, until: Instant) {
        let digest = self.digest(id.as_bytes());
        let mut inner = self.lock();
        let pin = Pin {
            provider: inner.provider_index(provider),
            until: self.secs(until),
        };
        if inner.map.insert(digest, pin).is_none() {
            inner.order.push_back(digest);
        }
        inner.trim();
    }

    /// [`PinStore::remember`], at once.
    pub(crate) fn remember_now(&self, id: &str, provider: &Arc<str>) {
        let digest = self.digest(id.as_bytes());
        let now = self.clock.now();
        let mut inner = self.lock();
        let pin = Pin {
            provider: inner.provider_index(provider),
            until: self.secs(now + inner.ttl),
        };
        if inner.map.insert(digest, pin).is_none() {
            inner.order.push_back(digest);
        }
        inner.trim();
    }

    /// [`PinStore::find_any`], at once.
    pub(crate) fn find_any_now(&self, ids: &Candidates<'_>) -> Option<Arc<str>> {
        let now = self.secs(self.clock.now());
        let inner = self.lock();
        if inner.map.is_empty() {
            return None;
        }
        // A pin is over once its `until` second is reached.
        ids.iter().find_map(|id| {
            let pin = inner.map.get(&self.digest(id))?;
            (now < pin.until).then(|| Arc::clone(&inner.providers[usize::from(pin.provider)]))
        })
    }
}

/// Never fails, never waits: every future is ready when made.
impl<C: Clock> PinStore for ObjectPins<C> {
    fn remember(
        &self,
        id: &str,
        provider: &Arc<str>,
    ) -> impl Future<Output = Result<(), StateError>> + Send {
        self.remember_now(id, provider);
        std::future::ready(Ok(()))
    }

    fn find_any(
        &self,
        ids: &Candidates<'_>,
    ) -> impl Future<Output = Result<Option<Arc<str>>, StateError>> + Send {
        std::future::ready(Ok(self.find_any_now(ids)))
    }
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids<'a>(path: &'a str, body: &'a [u8]) -> Vec<&'a str> {
        candidate_ids(path, body)
            .iter()
            .map(|id| std::str::from_utf8(id).unwrap())
            .collect()
    }

    #[test]
    fn candidates_are_the_long_id_tokens_of_path_then_body() {
        assert_eq!(
            ids(
                "/v1/payment_intents/pi_3MtwBwLkdIwHu7ix28a3tqPa/capture",
                b"amount_to_capture=100&metadata[order]=ord-12345678"
            ),
            [
                "payment_intents",
                "pi_3MtwBwLkdIwHu7ix28a3tqPa",
                "amount_to_capture",
                "metadata",
                "ord-12345678"
            ]
        );
        assert_eq!(
            ids("/v1/refunds", br#"{"payment_intent":"pi_other1234"}"#),
            ["payment_intent", "pi_other1234"]
        );
        assert!(candidate_ids("/v1/x", b"a=1&b=2").is_empty());
    }

    #[test]
    fn many_candidates_are_all_kept_in_order() {
        let body: String = (0..20).map(|i| format!("f{i}=id_{i:08}&")).collect();
        let found = ids("/v1/refunds", body.as_bytes());
        assert_eq!(found.len(), 20);
        assert_eq!(found[0], "id_00000000");
        assert_eq!(found[19], "id_00000019");
    }

    #[test]
    fn only_a_top_level_id_that_can_name_an_object_is_taken() {
        assert_eq!(
            answer_id(br#"{"id":"pi_3MtwBwLkdIwHu7ix28a3tqPa","object":"payment_intent"}"#)
                .as_deref(),
            Some("pi_3MtwBwLkdIwHu7ix28a3tqPa")
        );
        assert_eq!(answer_id(br#"{"id":"short"}"#), None);
        assert_eq!(answer_id(br#"{"id":"has space 12345"}"#), None);
        assert_eq!(answer_id(br#"{"data":{"id":"pi_nested_123"}}"#), None);
        assert_eq!(answer_id(b"not json"), None);
        assert_eq!(answer_id(br#"{"id":null}"#), None);
        assert_eq!(answer_id(br#"{"id":12345678}"#), None);
        assert_eq!(answer_id(br#"{"object":"charge"}"#), None);
        // Borrowed from the answer when it can be; an escaped id is decoded (and copied).
        let body = br#"{"id":"ch_plain_123"}"#;
        assert!(matches!(
            answer_id(body),
            Some(Cow::Borrowed("ch_plain_123"))
        ));
        assert_eq!(
            answer_id(br#"{"id":"ch_\u0031escaped"}"#).as_deref(),
            Some("ch_1escaped")
        );
    }

    #[test]
    fn a_smaller_bound_drops_the_oldest_at_once() {
        let clock = crate::state::ManualClock::default();
        let pins = ObjectPins::with_clock(Duration::from_secs(60), 100, clock.clone());
        let a: Arc<str> = Arc::from("a");
        for i in 0..20 {
            pins.remember_now(&format!("pi_{i:08}"), &a);
        }
        pins.set_limits(Duration::from_secs(1), 5);
        assert_eq!(pins.len(), 5);
        let find = |path: &str| pins.find_any_now(&candidate_ids(path, b""));
        assert!(find("/x/pi_00000019").is_some());
        assert!(find("/x/pi_00000014").is_none());
        // The new ttl applies to ids remembered from now on.
        pins.remember_now("pi_new_one_1", &a);
        clock.advance(Duration::from_secs(3));
        let find = |path: &str| pins.find_any_now(&candidate_ids(path, b""));
        assert!(find("/x/pi_new_one_1").is_none());
        assert!(find("/x/pi_00000019").is_some());
    }
}
