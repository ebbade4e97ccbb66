//! What a record whose outcome is unknown keeps, so that the resolver (`crate::resolver`) can send the
//! operation again, with the same key, to the provider it may have reached, and learn its outcome
//! without waiting for the shop.
//!
//! A [`Kept`] holds the operation's request ([`KeptRequest`]: the shop's scope and key, method, path,
//! headers and body) and the resolver's bookkeeping: when the outcome first became unknown, how many
//! times the resolver tried, and when it tries next. It lives in the record, in every backend (one byte
//! string, [`Kept::to_bytes`]), so another sidecar, or this one after a restart, can resolve it.
//!
//! What is never kept: a body or path in which the redactor finds card data (PCI DSS: no card data at
//! rest; such an operation is resolved by the shop's retry or a webhook, [`NotKept::CardData`]), and
//! the shop's credentials (`Authorization`, cookies): a credential the shop sent is held in this
//! process's memory only ([`Credentials`]) and is gone after a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};

/// When the resolver tries, counted from the moment the outcome became unknown: 1 s, 5 s, 30 s, 2 min
/// and 10 min after, then every 30 min.
pub const SCHEDULE: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(600),
];
/// The interval after the last step of [`SCHEDULE`].
pub const THEN_EVERY: Duration = Duration::from_secs(1800);
/// `next_ms` of an operation the resolver no longer tries (the provider may have forgotten its key).
pub const GAVE_UP: u64 = u64::MAX;

/// Why an operation's request is not kept: only the shop's retry or a webhook resolves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotKept {
    /// The redactor found card data (or could not read the body to tell).
    CardData,
    /// The holder died during the attempt: the record was resumed without its request.
    Lost,
}

impl NotKept {
    /// Its name in the admin listing.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CardData => "card_data",
            Self::Lost => "request_lost",
        }
    }
    fn code(self) -> u8 {
        match self {
            Self::CardData => 1,
            Self::Lost => 2,
        }
    }
    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::CardData),
            2 => Some(Self::Lost),
            _ => None,
        }
    }
}

/// The request of an operation, as the resolver sends it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptRequest {
    /// The client scope ([`super::scope`]): with `key`, the record's identity.
    pub scope: String,
    /// The shop's key.
    pub key: String,
    /// The method.
    pub method: Method,
    /// The shop's path and query, as the route received it.
    pub path_and_query: String,
    /// Whether the shop sent its own credential (held in memory only, in [`Credentials`]).
    pub shop_credential: bool,
    /// The headers (`name:value\n` each; credentials, cookies and hop-by-hop headers left out).
    headers: Bytes,
    /// The body.
    pub body: Bytes,
}

/// Headers never kept: credentials and cookies (a credential the shop sent is held in memory only).
fn never_kept(name: &http::HeaderName) -> bool {
    name == http::header::AUTHORIZATION
        || name == http::header::PROXY_AUTHORIZATION
        || name == http::header::COOKIE
        || name == http::header::HOST
        || name == http::header::CONTENT_LENGTH
}

impl KeptRequest {
    /// What to keep of a request of client `scope` with `key`, or why not: `None` when the path or
    /// body holds card data. `headers` have had their hop-by-hop and private headers removed;
    /// `skip` names more to leave out (the provider's credential header, the shop's key header).
    pub fn new(
        scope: &str,
        key: &str,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        skip: &[&http::HeaderName],
        body: &Bytes,
    ) -> Result<Self, NotKept> {
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if crate::redact::holds_card_data(content_type, path_and_query, body) {
            return Err(NotKept::CardData);
        }
        let mut block = Vec::new();
        for (name, value) in headers {
            if never_kept(name) || skip.contains(&name) {
                continue;
            }
            block.extend_from_slice(name.as_str().as_bytes());
            block.push(b':');
            block.extend_from_slice(value.as_bytes());
            block.push(b'\n');
        }
        Ok(Self {
            scope: scope.to_owned(),
            key: key.to_owned(),
            method: method.clone(),
            path_and_query: path_and_query.to_owned(),
            shop_credential: headers.contains_key(http::header::AUTHORIZATION),
            headers: Bytes::from(block),
            body: body.clone(),
        })
    }

    /// The headers kept, in their order.
    pub fn headers(&self) -> HeaderMap {
        let mut out = HeaderMap::new();
        for line in self
            .headers
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
        {
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(&line[..colon]),
                HeaderValue::from_bytes(&line[colon + 1..]),
            ) {
                out.append(name, value);
            }
        }
        out
    }

    /// The record's identity.
    pub fn record_key(&self) -> super::RecordKey {
        super::RecordKey::new(self.scope.clone(), self.key.clone())
    }

    fn bytes(&self) -> usize {
        self.scope.len()
            + self.key.len()
            + self.path_and_query.len()
            + self.headers.len()
            + self.body.len()
    }
}

/// What a record whose outcome is unknown keeps for its resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// When the outcome first became unknown (Unix ms).
    pub since_ms: u64,
    /// The resolver's tries so far.
    pub tries: u32,
    /// When the resolver last tried (Unix ms; 0 before its first try).
    pub last_ms: u64,
    /// When the resolver tries next (Unix ms; [`GAVE_UP`] once it stopped).
    pub next_ms: u64,
    /// The request to send again, or why it is not kept.
    pub request: Result<Arc<KeptRequest>, NotKept>,
}

/// Unix time in ms.
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// When try number `tries + 1` is due for an operation unknown since `since_ms`.
pub fn due_after(since_ms: u64, tries: u32) -> u64 {
    let offset = match SCHEDULE.get(tries as usize) {
        Some(d) => *d,
        None => {
            let extra = tries as usize - SCHEDULE.len() + 1;
            SCHEDULE[SCHEDULE.len() - 1] + THEN_EVERY * u32::try_from(extra).unwrap_or(u32::MAX)
        }
    };
    since_ms.saturating_add(u64::try_from(offset.as_millis()).unwrap_or(u64::MAX))
}

impl Kept {
    /// A record that has just become unknown at `now_ms`, with its request (or why not).
    pub fn first(now_ms: u64, request: Result<Arc<KeptRequest>, NotKept>) -> Self {
        Self {
            since_ms: now_ms,
            tries: 0,
            last_ms: 0,
            next_ms: due_after(now_ms, 0),
            request,
        }
    }

    /// After a try at `now_ms` that left the outcome unknown: the next step of the schedule, or
    /// [`GAVE_UP`] when that would come after `retention` from `since_ms` (the provider may have
    /// forgotten the key by then, and a resend would be a new payment).
    pub fn tried(&self, now_ms: u64, retention: Duration) -> Self {
        let tries = self.tries.saturating_add(1);
        let mut next = due_after(self.since_ms, tries).max(now_ms.saturating_add(1000));
        if next >= self.deadline_ms(retention) {
            next = GAVE_UP;
        }
        Self {
            since_ms: self.since_ms,
            tries,
            last_ms: now_ms,
            next_ms: next,
            request: self.request.clone(),
        }
    }

    /// Past this (Unix ms) the resolver does not send the request: `retention` after the outcome
    /// became unknown, less a margin of 5 minutes for clocks that disagree.
    pub fn deadline_ms(&self, retention: Duration) -> u64 {
        let retention = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
        self.since_ms
            .saturating_add(retention)
            .saturating_sub(5 * 60 * 1000)
    }

    /// Bytes it counts against a store's bound.
    pub fn bytes(&self) -> usize {
        32 + self.request.as_ref().map_or(0, |r| r.bytes())
    }

    /// As one byte string, for a store outside the process ([`Kept::from_bytes`] reads it back):
    /// version 1; since, tries, last, next; then 0 and the request, or the [`NotKept`] code.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.bytes());
        out.push(1);
        out.extend_from_slice(&self.since_ms.to_be_bytes());
        out.extend_from_slice(&self.tries.to_be_bytes());
        out.extend_from_slice(&self.last_ms.to_be_bytes());
        out.extend_from_slice(&self.next_ms.to_be_bytes());
        match &self.request {
            Err(why) => out.push(why.code()),
            Ok(r) => {
                out.push(0);
                put(&mut out, r.scope.as_bytes());
                put(&mut out, r.key.as_bytes());
                put(&mut out, r.method.as_str().as_bytes());
                put(&mut out, r.path_and_query.as_bytes());
                out.push(u8::from(r.shop_credential));
                put(&mut out, &r.headers);
                put(&mut out, &r.body);
            }
        }
        out
    }

    /// What [`Kept::to_bytes`] wrote; `None` for anything else.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        if r.u8()? != 1 {
            return None;
        }
        let since_ms = r.u64()?;
        let tries = u32::from_be_bytes(r.take(4)?.try_into().ok()?);
        let last_ms = r.u64()?;
        let next_ms = r.u64()?;
        let request = match r.u8()? {
            0 => {
                let scope = r.string()?;
                let key = r.string()?;
                let method = Method::from_bytes(r.field()?).ok()?;
                let path_and_query = r.string()?;
                let shop_credential = r.u8()? == 1;
                let headers = Bytes::copy_from_slice(r.field()?);
                let body = Bytes::copy_from_slice(r.field()?);
                Ok(Arc::new(KeptRequest {
                    scope,
                    key,
                    method,
                    path_and_query,
                    shop_credential,
                    headers,
                    body,
                }))
            }
            code => Err(NotKept::from_code(code)?),
        };
        r.0.is_empty().then_some(Self {
            since_ms,
            tries,
            last_ms,
            next_ms,
            request,
        })
    }
}

fn put(out: &mut Vec<u8>, field: &[u8]) {
    let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&field[..len as usize]);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn field(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_be_bytes(self.take(4)?.try_into().ok()?);
        self.take(len as usize)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.field()?.to_vec()).ok()
    }
}

/// A record that may be unknown, as a store lists it for the resolver and the admin listing.
#[derive(Debug, Clone)]
pub struct UnknownOp {
    /// The record's name ([`super::RecordKey::digest`]).
    pub digest: [u8; 16],
    /// The provider it is pinned to.
    pub pinned: Arc<str>,
    /// What the record keeps for its resolution: `None` when the holder died before it settled (the
    /// record resumes at `pinned`, but has no request to send).
    pub kept: Option<Arc<Kept>>,
}

/// The credentials shops sent with operations whose outcome is unknown, by client scope: held in this
/// process's memory only (never written to a store), so that the resolver can send such an operation
/// again as the shop did. Gone after a restart: the operation then waits for the shop's retry, a
/// webhook, or the shop's next request in the same scope (which brings the credential back).
#[derive(Debug, Default)]
pub struct Credentials {
    inner: Mutex<Held>,
    /// Whether an unknown operation waits for its scope's credential: the request path looks at
    /// the map only then.
    wanted: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct Held {
    by_scope: HashMap<String, HeaderValue>,
    /// Scopes of unknown operations whose credential is not held (after a restart).
    wanted: std::collections::HashSet<String>,
}

impl Credentials {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds `credential` for `scope`.
    pub fn hold(&self, scope: &str, credential: &HeaderValue) {
        let mut held = self.lock();
        if held.by_scope.len() >= 10_000 && !held.by_scope.contains_key(scope) {
            return;
        }
        let mut value = credential.clone();
        value.set_sensitive(true);
        held.by_scope.insert(scope.to_owned(), value);
        if held.wanted.remove(scope) && held.wanted.is_empty() {
            self.wanted
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A request of `scope` came with `credential`: held when an unknown operation of that scope
    /// waits for it (the shop's next request after a restart brings the credential back).
    pub fn offer(&self, scope: &str, credential: &HeaderValue) {
        if !self.wanted.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if self.lock().wanted.contains(scope) {
            self.hold(scope, credential);
        }
    }

    /// The credential held for `scope`.
    pub fn get(&self, scope: &str) -> Option<HeaderValue> {
        self.lock().by_scope.get(scope).cloned()
    }

    /// Drops what is held for scopes not in `keep` (the scopes of the unknown operations the
    /// resolver listed), and wants the credentials of those in `keep` not held.
    pub fn retain(&self, keep: &std::collections::HashSet<&str>) {
        let mut held = self.lock();
        held.by_scope
            .retain(|scope, _| keep.contains(scope.as_str()));
        let wanted: std::collections::HashSet<String> = keep
            .iter()
            .filter(|s| !held.by_scope.contains_key(**s))
            .map(|s| (*s).to_owned())
            .collect();
        self.wanted
            .store(!wanted.is_empty(), std::sync::atomic::Ordering::Relaxed);
        held.wanted = wanted;
    }

    /// Whether an unknown operation waits for a credential.
    pub fn wanted(&self) -> bool {
        self.wanted.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: &'static [u8]) -> Result<KeptRequest, NotKept> {
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        h.insert("authorization", "Bearer sk_test_secret".parse().unwrap());
        h.insert("cookie", "session=1".parse().unwrap());
        h.insert("stripe-version", "2024-06-20".parse().unwrap());
        h.insert("idempotency-key", "order-1".parse().unwrap());
        let skip = http::HeaderName::from_static("idempotency-key");
        KeptRequest::new(
            "t1",
            "order-1",
            &Method::POST,
            "/v1/payment_intents?expand[]=x",
            &h,
            &[&skip],
            &Bytes::from_static(body),
        )
    }

    #[test]
    fn a_request_is_kept_without_credentials_and_read_back_whole() {
        let r = request(br#"{"amount":1000,"currency":"eur"}"#).unwrap();
        assert!(r.shop_credential);
        let h = r.headers();
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(h.get("authorization").is_none() && h.get("cookie").is_none());
        assert_eq!(h["stripe-version"], "2024-06-20");
        let kept = Kept::first(1_000, Ok(Arc::new(r)));
        let back = Kept::from_bytes(&kept.to_bytes()).unwrap();
        assert_eq!(back, kept);
        let bytes = kept.to_bytes();
        assert!(
            !bytes.windows(6).any(|w| w == b"sk_tes"),
            "no credential at rest"
        );
        assert!(Kept::from_bytes(&bytes[..bytes.len() - 1]).is_none());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Kept::from_bytes(&longer).is_none());
        let lost = Kept::first(5, Err(NotKept::Lost));
        assert_eq!(Kept::from_bytes(&lost.to_bytes()).unwrap(), lost);
    }

    #[test]
    fn a_body_or_path_with_card_data_is_not_kept() {
        assert_eq!(
            request(br#"{"card":{"number":"4242 4242 4242 4242"}}"#).unwrap_err(),
            NotKept::CardData
        );
        assert_eq!(
            request(br#"{"source":{"cvc":"123"}}"#).unwrap_err(),
            NotKept::CardData
        );
        let h = HeaderMap::new();
        let r = KeptRequest::new(
            "",
            "k",
            &Method::POST,
            "/v1/payment_methods/4242%204242%204242%204242",
            &h,
            &[],
            &Bytes::new(),
        );
        assert_eq!(r.unwrap_err(), NotKept::CardData);
    }

    #[test]
    fn the_schedule_is_1s_5s_30s_2m_10m_then_every_30m_and_stops_before_retention() {
        let s = 1_000_000;
        let at: Vec<u64> = (0..8).map(|t| due_after(s, t) - s).collect();
        assert_eq!(
            at,
            [1_000, 5_000, 30_000, 120_000, 600_000, 2_400_000, 4_200_000, 6_000_000]
        );
        let mut k = Kept::first(s, Err(NotKept::Lost));
        assert_eq!(k.next_ms, s + 1_000);
        k = k.tried(s + 1_000, Duration::from_secs(86_400));
        assert_eq!((k.tries, k.last_ms, k.next_ms), (1, s + 1_000, s + 5_000));
        // A try made late (the provider was not admitted): the next is never sooner than 1 s after it.
        k = k.tried(s + 29_900, Duration::from_secs(86_400));
        assert_eq!(k.next_ms, s + 30_900);
        // Retention of 15 min: the 10 min step is the last before its deadline (15 - 5 min margin).
        let mut k = Kept::first(s, Err(NotKept::Lost));
        for _ in 0..4 {
            k = k.tried(k.next_ms, Duration::from_secs(900));
        }
        assert_eq!(k.next_ms, GAVE_UP, "10 min is at the deadline: not tried");
    }

    #[test]
    fn credentials_are_held_by_scope_and_dropped_when_no_longer_wanted() {
        let c = Credentials::default();
        c.hold("a", &HeaderValue::from_static("Bearer x"));
        assert_eq!(c.get("a").unwrap(), "Bearer x");
        assert!(c.get("a").unwrap().is_sensitive());
        c.retain(&["a", "b"].into_iter().collect());
        assert!(c.wanted(), "b has no credential");
        c.offer("other", &HeaderValue::from_static("Bearer o"));
        assert!(c.get("other").is_none(), "only a wanted scope's is taken");
        c.offer("b", &HeaderValue::from_static("Bearer b"));
        assert_eq!(c.get("b").unwrap(), "Bearer b");
        assert!(!c.wanted());
        c.retain(&std::collections::HashSet::new());
        assert!(c.get("a").is_none() && c.get("b").is_none() && !c.wanted());
    }
}
