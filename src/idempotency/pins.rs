//! Payment objects pinned to the provider that holds them, so that follow-up operations (capture,
//! refund, void) go to that provider: an id that a provider returned (`"id": "pi_…"` in a JSON answer)
//! is remembered, and a later request that names it in its path or body goes to that provider only.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Shortest token taken for an object id (shorter ones are too common to mean anything).
const MIN_ID_LEN: usize = 8;

#[derive(Debug, Default)]
struct Inner {
    /// Id → provider and expiry; the id is shared with `order` (one allocation per pin).
    map: HashMap<Arc<str>, (Arc<str>, Instant)>,
    order: VecDeque<Arc<str>>,
}

/// Object id → provider, bounded and expiring.
#[derive(Debug)]
pub struct ObjectPins {
    ttl: Duration,
    max: usize,
    inner: Mutex<Inner>,
}

impl ObjectPins {
    /// A table keeping ids for `ttl`, at most `max` of them.
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self {
            ttl,
            max,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
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
        let id: &str = &id;
        if id.len() < MIN_ID_LEN || !id.bytes().all(is_id_byte) {
            return;
        }
        let mut inner = self.lock();
        let until = now + self.ttl;
        if let Some(pin) = inner.map.get_mut(id) {
            *pin = (Arc::clone(provider), until);
        } else {
            let id: Arc<str> = Arc::from(id);
            inner
                .map
                .insert(Arc::clone(&id), (Arc::clone(provider), until));
            inner.order.push_back(id);
        }
        while inner.map.len() > self.max {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            inner.map.remove(&old);
        }
    }

    /// The provider holding an object named in `path` or `body`, if any.
    pub fn find(&self, path: &str, body: &[u8], now: Instant) -> Option<Arc<str>> {
        let inner = self.lock();
        if inner.map.is_empty() {
            return None;
        }
        let lookup = |token: &[u8]| {
            if token.len() < MIN_ID_LEN {
                return None;
            }
            let token = std::str::from_utf8(token).ok()?;
            let (provider, until) = inner.map.get(token)?;
            (now < *until).then(|| Arc::clone(provider))
        };
        path.as_bytes()
            .split(|b| !is_id_byte(*b))
            .chain(body.split(|b| !is_id_byte(*b)))
            .find_map(lookup)
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
    fn bounded() {
        let pins = ObjectPins::new(Duration::from_secs(60), 10);
        let t = Instant::now();
        let a: Arc<str> = Arc::from("a");
        for i in 0..50 {
            pins.remember_answer(format!(r#"{{"id":"pi_{i:08}"}}"#).as_bytes(), &a, t);
        }
        assert_eq!(pins.lock().map.len(), 10);
        assert!(pins.find("/x/pi_00000049", b"", t).is_some());
        assert!(pins.find("/x/pi_00000001", b"", t).is_none());
    }
}
