//! Payment objects pinned to the provider that holds them, so that follow-up operations (capture,
//! refund, void) go to that provider: an id that a provider returned (`"id": "pi_…"` in a JSON answer)
//! is remembered, and a later request that names it in its path or body goes to that provider only.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Shortest token taken for an object id (shorter ones are too common to mean anything).
const MIN_ID_LEN: usize = 8;

/// A pin: which provider, until when (seconds after the table's epoch).
#[derive(Debug, Clone, Copy)]
struct Pin {
    provider: u16,
    until: u32,
}

/// The table keeps a keyed 64-bit digest of each id, not the id: 16 bytes a pin instead of an
/// allocation per id, and growing the table rehashes integers. Two ids with one digest (odds about
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

/// Object id → provider, bounded and expiring.
#[derive(Debug)]
pub struct ObjectPins {
    epoch: Instant,
    ids: RandomState,
    inner: Mutex<Inner>,
}

impl ObjectPins {
    /// A table keeping ids for `ttl`, at most `max` of them.
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self {
            epoch: Instant::now(),
            ids: RandomState::new(),
            inner: Mutex::new(Inner {
                ttl,
                max,
                ..Inner::default()
            }),
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

    /// Remembers the top-level `"id"` of a JSON answer from `provider`.
    pub fn remember_answer(&self, body: &[u8], provider: &Arc<str>, now: Instant) {
        // Only the top-level "id" is read: no tree of the whole answer is built on the request path.
        #[derive(serde::Deserialize)]
        struct Answer<'a> {
            #[serde(borrow)]
            id: Option<std::borrow::Cow<'a, str>>,
        }
        let Ok(Answer { id: Some(id) }) = serde_json::from_slice::<Answer<'_>>(body) else {
            return;
        };
        if id.len() < MIN_ID_LEN || !id.bytes().all(is_id_byte) {
            return;
        }
        let digest = self.digest(id.as_bytes());
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

    /// The provider holding an object named in `path` or `body`, if any.
    pub fn find(&self, path: &str, body: &[u8], now: Instant) -> Option<Arc<str>> {
        let inner = self.lock();
        if inner.map.is_empty() {
            return None;
        }
        // A pin is over once its `until` second is reached.
        let now = self.secs(now);
        path.as_bytes()
            .split(|b| !is_id_byte(*b))
            .chain(body.split(|b| !is_id_byte(*b)))
            .filter(|token| token.len() >= MIN_ID_LEN)
            .find_map(|token| {
                let pin = inner.map.get(&self.digest(token))?;
                (now < pin.until).then(|| Arc::clone(&inner.providers[usize::from(pin.provider)]))
            })
    }
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follow_ups_find_the_provider_by_path_or_body() {
        let pins = ObjectPins::new(Duration::from_secs(60), 100);
        let t = Instant::now();
        let a: Arc<str> = Arc::from("primary");
        pins.remember_answer(
            br#"{"id":"pi_3MtwBwLkdIwHu7ix28a3tqPa","object":"payment_intent"}"#,
            &a,
            t,
        );
        let found = pins.find(
            "/v1/payment_intents/pi_3MtwBwLkdIwHu7ix28a3tqPa/capture",
            b"",
            t,
        );
        assert_eq!(found.as_deref(), Some("primary"));
        let found = pins.find(
            "/v1/refunds",
            b"payment_intent=pi_3MtwBwLkdIwHu7ix28a3tqPa&amount=100",
            t,
        );
        assert_eq!(found.as_deref(), Some("primary"));
        assert_eq!(
            pins.find("/v1/refunds", br#"{"payment_intent":"pi_other1234"}"#, t),
            None
        );
        assert_eq!(
            pins.find(
                "/v1/payment_intents/pi_3MtwBwLkdIwHu7ix28a3tqPa",
                b"",
                t + Duration::from_secs(61)
            ),
            None
        );
    }

    #[test]
    fn a_smaller_bound_drops_the_oldest_at_once() {
        let pins = ObjectPins::new(Duration::from_secs(60), 100);
        let t = Instant::now();
        let a: Arc<str> = Arc::from("a");
        for i in 0..20 {
            pins.remember_answer(format!(r#"{{"id":"pi_{i:08}"}}"#).as_bytes(), &a, t);
        }
        pins.set_limits(Duration::from_secs(1), 5);
        assert_eq!(pins.len(), 5);
        assert!(pins.find("/x/pi_00000019", b"", t).is_some());
        assert!(pins.find("/x/pi_00000014", b"", t).is_none());
        // The new ttl applies to ids remembered from now on.
        pins.remember_answer(br#"{"id":"pi_new_one_1"}"#, &a, t);
        assert!(pins
            .find("/x/pi_new_one_1", b"", t + Duration::from_secs(3))
            .is_none());
        assert!(pins
            .find("/x/pi_00000019", b"", t + Duration::from_secs(3))
            .is_some());
    }

    #[test]
    fn bounded() {
        let pins = ObjectPins::new(Duration::from_secs(60), 10);
        let t = Instant::now();
        let a: Arc<str> = Arc::from("a");
        for i in 0..50 {
            pins.remember_answer(format!(r#"{{"id":"pi_{i:08}"}}"#).as_bytes(), &a, t);
        }
        assert_eq!(pins.len(), 10);
        assert!(pins.find("/x/pi_00000049", b"", t).is_some());
        assert!(pins.find("/x/pi_00000001", b"", t).is_none());
    }
}
