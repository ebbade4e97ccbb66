//! The proxy's own idempotency records, per (route, client scope, key), and the pins of payment objects
//! to the provider that holds them.
//!
//! A record moves through: in flight (a second request with the key gets 409 and reaches no provider)
//! → done (the final answer, replayed byte for byte) or unknown (the next request with the key goes to
//! the pinned provider only, with the same key, so the provider deduplicates). A request whose attempts
//! all failed before sending anything leaves no record. A reuse of the key with another payload gets 422.
//!
//! Records are used through the [`Store`] trait (async, fallible: see [`crate::state`]), so that a
//! store on disk or one shared by a fleet of sidecars can replace the in-memory one. [`MemoryStore`]
//! (`memory.rs`) keeps records in memory, bounded by entries and bytes; a record is named by a stable
//! digest of its scope and key ([`RecordKey`]).

mod kept;
mod memory;
mod pins;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use sha2::{Digest, Sha256};

use crate::state::StateError;

pub use kept::{
    due_after, unix_ms, Credentials, Kept, KeptRequest, NotKept, UnknownOp, GAVE_UP, SCHEDULE,
    THEN_EVERY,
};
pub use memory::{Limits, MemoryStore, RecordImage, RecordState};
pub use pins::{answer_id, candidate_ids, Candidates, ObjectPins, PinStore};

/// A final answer kept for replay: status and provider, and the headers and body in one allocation
/// of their own (never a slice of a connection buffer, which a record would keep alive for its ttl).
///
/// Records are many and replays are few: the headers are kept as a flat block (`name:value\n` per
/// header; neither a name nor a value can hold a newline) and turned back into a map on replay.
#[derive(Debug, Clone)]
pub struct StoredAnswer {
    status: StatusCode,
    provider: Arc<str>,
    /// The header block, then the body.
    blob: Bytes,
    body_at: usize,
}

impl StoredAnswer {
    /// Keeps `status`, `headers` (hop-by-hop ones already removed) and `body` from `provider`.
    pub fn new(status: StatusCode, headers: &HeaderMap, body: &[u8], provider: Arc<str>) -> Self {
        let block: usize = headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 2)
            .sum();
        let mut blob = Vec::with_capacity(block + body.len());
        for (name, value) in headers {
            blob.extend_from_slice(name.as_str().as_bytes());
            blob.push(b':');
            blob.extend_from_slice(value.as_bytes());
            blob.push(b'\n');
        }
        let body_at = blob.len();
        blob.extend_from_slice(body);
        Self {
            status,
            provider,
            blob: Bytes::from(blob),
            body_at,
        }
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The provider that gave it.
    pub fn provider(&self) -> &Arc<str> {
        &self.provider
    }

    /// The body (shares the stored bytes).
    pub fn body(&self) -> Bytes {
        self.blob.slice(self.body_at..)
    }

    /// The headers, in their order, repeated ones included.
    pub fn headers(&self) -> HeaderMap {
        let block = &self.blob[..self.body_at];
        let mut out = HeaderMap::with_capacity(block.iter().filter(|b| **b == b'\n').count());
        for line in block.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            // Both halves came from a valid name and value, so neither check can fail.
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(&line[..colon]),
                http::HeaderValue::from_bytes(&line[colon + 1..]),
            ) {
                out.append(name, value);
            }
        }
        out
    }

    fn bytes(&self) -> usize {
        self.blob.len()
    }

    /// The answer as one byte string, for a store outside the process: status (2 bytes), the
    /// provider's name (2-byte length, then the name), where the body starts in the block (4 bytes),
    /// then the header block and body. [`StoredAnswer::from_bytes`] reads it back.
    pub fn to_bytes(&self) -> Vec<u8> {
        let provider = self.provider.as_bytes();
        let name_len = u16::try_from(provider.len()).unwrap_or(u16::MAX);
        let body_at = u32::try_from(self.body_at).unwrap_or(u32::MAX);
        let mut out = Vec::with_capacity(8 + provider.len() + self.blob.len());
        out.extend_from_slice(&self.status.as_u16().to_be_bytes());
        out.extend_from_slice(&name_len.to_be_bytes());
        out.extend_from_slice(&provider[..usize::from(name_len)]);
        out.extend_from_slice(&body_at.to_be_bytes());
        out.extend_from_slice(&self.blob);
        out
    }

    /// An answer written by [`StoredAnswer::to_bytes`]; `None` when `bytes` is not one.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let status =
            StatusCode::from_u16(u16::from_be_bytes(bytes.get(..2)?.try_into().ok()?)).ok()?;
        let name_len = usize::from(u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?));
        let name = std::str::from_utf8(bytes.get(4..4 + name_len)?).ok()?;
        let at = 4 + name_len;
        let body_at = u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?);
        let blob = Bytes::copy_from_slice(bytes.get(at + 4..)?);
        let body_at = usize::try_from(body_at).ok().filter(|b| *b <= blob.len())?;
        Some(Self {
            status,
            provider: Arc::from(name),
            blob,
            body_at,
        })
    }

    /// Its parts as kept: status, provider, the header block followed by the body, and where the
    /// body starts (for a store that writes answers out).
    pub fn parts(&self) -> (StatusCode, &Arc<str>, &Bytes, usize) {
        (self.status, &self.provider, &self.blob, self.body_at)
    }

    /// An answer from [`StoredAnswer::parts`]; `None` when `body_at` lies beyond the blob.
    pub fn from_parts(
        status: StatusCode,
        provider: Arc<str>,
        blob: Bytes,
        body_at: usize,
    ) -> Option<Self> {
        (body_at <= blob.len()).then_some(Self {
            status,
            provider,
            blob,
            body_at,
        })
    }
}

/// The claim on an in-flight record: the fencing token its `begin` was given. A later claim (after
/// the lease ran out) gets a greater token, and a write with an older one is refused
/// ([`StateError::Fenced`]): a holder that stalled past its lease cannot overwrite what its successor
/// learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease(pub u64);

/// What a request with a key finds.
#[derive(Debug, Clone)]
pub enum Begin {
    /// No record (or one whose holder's lease ran out before it recorded any attempt): one is now in
    /// flight under this lease, its first attempt recorded as going to the `first` provider asked for.
    New(Lease),
    /// The key is in flight in another request whose lease still runs: 409.
    InFlight,
    /// The key was used with another payload: 422.
    Mismatch,
    /// The final answer, to replay.
    Replay(StoredAnswer),
    /// An earlier attempt's outcome is unknown (settled so, or its holder's lease ran out after it
    /// recorded an attempt): go to this provider only. The record is in flight again under `lease`.
    Resume {
        /// The provider the operation is pinned to.
        pinned: Arc<str>,
        /// The new claim.
        lease: Lease,
        /// What the record keeps for its resolution, when it settled unknown with it.
        kept: Option<Arc<Kept>>,
    },
}

/// How a keyed request ended.
#[derive(Debug, Clone)]
pub enum Finish {
    /// A final answer (2xx or 4xx): kept for replay.
    Final(StoredAnswer),
    /// The outcome at `provider` is unknown: later requests go there only.
    Unknown {
        /// The pinned provider.
        provider: Arc<str>,
        /// What to keep for its resolution; `None` keeps what the record had (if anything).
        kept: Option<Arc<Kept>>,
    },
    /// Nothing this operation sent may have reached a provider: the record is dropped and a retry
    /// starts afresh, unless the operation was itself resumed from an unknown outcome, whose pin (and
    /// what it keeps for its resolution) stays.
    NothingSent,
}

impl Finish {
    /// Unknown at `provider`, keeping what the record had for its resolution.
    pub fn unknown(provider: Arc<str>) -> Self {
        Self::Unknown {
            provider,
            kept: None,
        }
    }
}

/// A record's identity: its name in any store, and the hash of that name in this process's tables.
///
/// The name is a stable digest (the first 16 bytes of SHA-256 over scope, a zero byte and key), the
/// same in every process, so a store shared by a fleet of sidecars names a record as each of them
/// does; two records share a name with odds of 2⁻¹²⁸. It is computed once per request. The table
/// hash of the name is computed once too, with a key random per process (a name is public: an
/// unkeyed table hash could be steered into collisions), and the store's table rehashes without
/// hashing anything again. A table that records come into and go out of all day rebuilds itself now
/// and then to clear deleted slots; with strings hashed again, that rebuild of ten thousand records
/// stalled every request behind it for ~10 ms.
#[derive(Debug, Clone)]
pub struct RecordKey {
    /// The client scope (tenant header and credential digest).
    pub scope: String,
    /// The shop's key.
    pub key: String,
    name: Name,
}

/// A record's stable name, with this process's table hash of it.
#[derive(Debug, Clone, Copy)]
struct Name {
    digest: [u8; 16],
    hash: u64,
}

impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

impl Eq for Name {}

impl std::hash::Hash for Name {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl Name {
    /// The name `digest`, with this process's table hash of it.
    fn of(digest: [u8; 16]) -> Self {
        use std::hash::BuildHasher;
        static SEED: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
        let hash = SEED
            .get_or_init(std::hash::RandomState::new)
            .hash_one(digest);
        Self { digest, hash }
    }
}

impl RecordKey {
    /// The identity of `key` for client `scope`.
    pub fn new(scope: String, key: String) -> Self {
        let full = Sha256::new()
            .chain_update(scope.as_bytes())
            .chain_update([0])
            .chain_update(key.as_bytes())
            .finalize();
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&full[..16]);
        Self {
            scope,
            key,
            name: Name::of(digest),
        }
    }

    /// The record's stable name: the same in every process.
    pub fn digest(&self) -> &[u8; 16] {
        &self.name.digest
    }
}

impl PartialEq for RecordKey {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for RecordKey {}

/// The fingerprint of a payload: method, route, path and body.
pub fn fingerprint(method: &Method, route: &str, path: &str, body: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(method.as_str())
        .chain_update([0])
        .chain_update(route)
        .chain_update([0])
        .chain_update(path)
        .chain_update([0])
        .chain_update(body)
        .finalize()
        .into()
}

/// The client scope of a request: the scope header's value, and a digest of the credential the shop
/// sent (two shops with different provider accounts never share records). Never the credential itself.
pub fn scope(scope_header: Option<&str>, authorization: Option<&[u8]>) -> String {
    let mut out = scope_header.unwrap_or("").to_owned();
    if let Some(auth) = authorization {
        out.push('|');
        out.push_str(&hex::encode(&Sha256::digest(auth)[..8]));
    }
    out
}

/// The key as a provider gets it: as is when it fits `max_len`, else a SHA-256 digest of it (hex, cut
/// to `max_len`): deterministic, so every retry carries the same derived key, and never a cut key,
/// whose prefix could collide with another order's.
pub fn key_for_provider(key: &str, max_len: usize) -> std::borrow::Cow<'_, str> {
    if key.len() <= max_len {
        return std::borrow::Cow::Borrowed(key);
    }
    let digest = hex::encode(Sha256::digest(key.as_bytes()));
    std::borrow::Cow::Owned(format!("sy-{digest}").chars().take(max_len).collect())
}

/// The key a provider gets for `key` of client `scope` when several clients share one provider account
/// (the sidecar injects the credential): two tenants who pick the same key must not meet in the
/// provider's idempotency store, where the second would get the first one's payment. A SHA-256 digest
/// of scope and key (hex, `sy-` first, cut to `max_len`): the same on every retry, restart and sidecar.
/// An empty scope (a single client) keeps [`key_for_provider`].
pub fn scoped_key_for_provider<'a>(
    scope: &str,
    key: &'a str,
    max_len: usize,
) -> std::borrow::Cow<'a, str> {
    if scope.is_empty() {
        return key_for_provider(key, max_len);
    }
    let digest = hex::encode(
        Sha256::new()
            .chain_update(scope)
            .chain_update([0])
            .chain_update(key)
            .finalize(),
    );
    std::borrow::Cow::Owned(format!("sy-{digest}").chars().take(max_len).collect())
}

/// Whether a shop's key is acceptable: 1–255 visible ASCII characters.
pub fn valid_key(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= 255 && key.iter().all(|c| c.is_ascii_graphic())
}

/// An idempotency record store: what rules 2 and 3 need to know about a key.
///
/// Every method may fail with [`StateError`] (a shared store may be unreachable or slow); the caller
/// then answers `state_unavailable` and sends nothing anywhere else. A record lives for the store's
/// ttl from its last write, and the store counts the records it evicts for room.
///
/// **The attempt is recorded before it is sent.** A claim records the provider its first attempt is
/// meant for, and [`Store::attempt`] records any other before its first byte leaves; both are
/// confirmed by the store before the caller sends. Another sidecar sharing the store, or this one after
/// a restart, then finds the provider a key may have reached, and never sends the key elsewhere.
///
/// **Leases.** An in-flight record is held for `lease` from its claim. A request for the key while
/// the lease runs gets [`Begin::InFlight`] (409). After it ran out (the holder died or stalled), the
/// next request gets the record: [`Begin::Resume`] at the recorded provider when an attempt was
/// recorded (its outcome is unknown), [`Begin::New`] when none was (nothing was sent). Each claim gets
/// a greater fencing token; writes under an older [`Lease`] fail with [`StateError::Fenced`].
pub trait Store: Send + Sync + 'static {
    /// Looks the key up and, when it may go ahead, claims it for `lease`; a new record's first attempt
    /// is recorded as going to `first` (when known), in the same step.
    fn begin(
        &self,
        key: &RecordKey,
        fingerprint: [u8; 32],
        lease: Duration,
        first: Option<&Arc<str>>,
    ) -> impl Future<Output = Result<Begin, StateError>> + Send;
    /// Records that the operation's next attempt goes to `provider`, replacing the provider recorded
    /// before. The caller moves an operation to another provider only when nothing it sent may have
    /// reached the one recorded; it sends nothing until this returns `Ok`.
    fn attempt(
        &self,
        key: &RecordKey,
        lease: Lease,
        provider: &Arc<str>,
    ) -> impl Future<Output = Result<(), StateError>> + Send;
    /// Ends the operation held under `lease`.
    fn finish(
        &self,
        key: &RecordKey,
        lease: Lease,
        finish: Finish,
    ) -> impl Future<Output = Result<(), StateError>> + Send;
    /// Ends the operation at once, without waiting, when this store can (the in-memory one can): for
    /// a settle from `Drop`. `Err` gives `finish` back: the caller runs [`Store::finish`] in a task of
    /// its own.
    fn finish_now(&self, key: &RecordKey, lease: Lease, finish: Finish) -> Result<(), Finish> {
        let _ = (key, lease);
        Err(finish)
    }
    /// Whether keyed payments are held to the route's first-priority provider with no failover: the
    /// store cannot vouch that no other sidecar recorded an attempt (a shared store that lost its
    /// records, within their ttl; or running on a local fallback while the shared one is down). The
    /// answer is marked `x-switchyard-state: degraded`.
    fn degraded(&self) -> bool {
        false
    }
    /// Up to `limit` records that may be unknown: settled unknown, or in flight past their lease
    /// after an attempt was recorded (their holder died). The resolver and the admin listing read it;
    /// those due first (by [`Kept::next_ms`]) come first.
    fn unknowns(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<UnknownOp>, StateError>> + Send;
}

/// The store each route uses: the configured backend's.
pub type RouteStore = crate::state::Records;

/// One store per route, kept across reloads by route name.
#[derive(Debug, Default)]
pub struct RouteStores {
    by_route: crate::config::NameMap<Arc<RouteStore>>,
    /// Credentials of the shops' unknown operations, in memory only (kept across reloads).
    credentials: Arc<Credentials>,
}

impl RouteStores {
    /// Stores for the routes of `snapshot`, reusing (and re-bounding) those of `previous`, new ones
    /// made by `state`.
    pub fn build(
        snapshot: &crate::config::Snapshot,
        previous: Option<&RouteStores>,
        evictions: &prometheus::IntCounter,
        state: &crate::state::Stores,
    ) -> Self {
        let mut by_route = crate::config::NameMap::default();
        for route in &snapshot.routes {
            let i = &route.idempotency;
            let limits = Limits {
                ttl: i.ttl,
                max_entries: i.max_entries,
                max_bytes: i.max_bytes,
            };
            let store = match previous.and_then(|p| p.by_route.get(&route.name)) {
                Some(s) => {
                    s.set_limits(limits);
                    Arc::clone(s)
                }
                None => Arc::new(state.records(&route.name, limits, evictions)),
            };
            by_route.insert(Arc::clone(&route.name), store);
        }
        let credentials = previous.map_or_else(Arc::default, |p| Arc::clone(&p.credentials));
        Self {
            by_route,
            credentials,
        }
    }

    /// The credentials shops sent with operations whose outcome is unknown (memory only).
    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.credentials
    }

    /// Every route's store, by route name.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<RouteStore>)> {
        self.by_route.iter()
    }

    /// Puts `store` in for route `name` (tests of the loop).
    #[cfg(test)]
    pub(crate) fn replace(&mut self, name: &str, store: Arc<RouteStore>) {
        self.by_route.insert(Arc::from(name), store);
    }

    /// The store of route `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<RouteStore>> {
        self.by_route.get(name)
    }

    /// Records and evictions over all routes.
    pub fn totals(&self) -> (usize, u64) {
        self.by_route
            .values()
            .fold((0, 0), |(n, e), s| (n + s.len(), e + s.evictions()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scoped_key_is_stable_and_never_shared_between_scopes() {
        let a = scoped_key_for_provider("tenant-a", "order-1", 255);
        let b = scoped_key_for_provider("tenant-b", "order-1", 255);
        assert_ne!(a, b, "two tenants, one key: two payments at the provider");
        assert_eq!(a, scoped_key_for_provider("tenant-a", "order-1", 255));
        assert!(a.starts_with("sy-") && a.len() == 67, "{a}");
        // Within the provider's limit, never cut from the shop's key.
        let adyen = scoped_key_for_provider("tenant-a", "order-1", 64);
        assert_eq!(adyen.len(), 64);
        assert!(a.starts_with(&*adyen));
        assert_ne!(
            scoped_key_for_provider("a", "bc", 255),
            scoped_key_for_provider("ab", "c", 255)
        );
        // No scope: the key as it is (or its digest when too long).
        assert_eq!(scoped_key_for_provider("", "order-1", 255), "order-1");
    }

    #[test]
    fn record_keys_are_equal_only_for_the_same_scope_and_key() {
        let k = |s: &str, k: &str| RecordKey::new(s.to_owned(), k.to_owned());
        assert_eq!(k("t1", "order-1"), k("t1", "order-1"));
        assert_ne!(k("t1", "order-1"), k("t2", "order-1"));
        assert_ne!(k("a", "bc"), k("ab", "c"));
        assert_ne!(k("", "abc"), k("abc", ""));
    }

    #[test]
    fn a_record_is_named_alike_in_every_process() {
        // The first 16 bytes of SHA-256("t1\0order-1"): a fixed value, not a per-process one.
        let k = RecordKey::new("t1".to_owned(), "order-1".to_owned());
        assert_eq!(hex::encode(k.digest()), "96f3de99b092b837174dc3b2f77e0c86");
    }

    #[test]
    fn a_stored_answer_gives_back_its_status_headers_and_body() {
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        h.append("set-cookie", "a=1".parse().unwrap());
        h.append("set-cookie", "b=2; Path=/".parse().unwrap());
        h.insert("x-provider-id", "req:42".parse().unwrap());
        let body = Bytes::from_static(b"{\"id\":\"pi_1\"}\n");
        let a = StoredAnswer::new(StatusCode::CREATED, &h, &body, Arc::from("p"));
        assert_eq!(a.status(), StatusCode::CREATED);
        assert_eq!(a.body(), body);
        assert_eq!(a.headers(), h);
        assert_eq!(&**a.provider(), "p");
        let none = StoredAnswer::new(StatusCode::OK, &HeaderMap::new(), b"", Arc::from("p"));
        assert!(none.headers().is_empty() && none.body().is_empty());
    }

    #[test]
    fn a_stored_answer_survives_its_byte_form_and_bad_bytes_are_refused() {
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        h.append("set-cookie", "a=1".parse().unwrap());
        let a = StoredAnswer::new(
            StatusCode::PAYMENT_REQUIRED,
            &h,
            b"{\"d\":1}",
            Arc::from("adyen"),
        );
        let b = StoredAnswer::from_bytes(&a.to_bytes()).unwrap();
        assert_eq!(b.status(), StatusCode::PAYMENT_REQUIRED);
        assert_eq!(&**b.provider(), "adyen");
        assert_eq!(b.headers(), h);
        assert_eq!(&b.body()[..], b"{\"d\":1}");
        let bytes = a.to_bytes();
        assert!(StoredAnswer::from_bytes(&bytes[..7]).is_none());
        assert!(
            StoredAnswer::from_bytes(&[0, 0, 0, 0, 0, 0, 0, 0]).is_none(),
            "status 0"
        );
        let mut far = bytes.clone();
        far[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(
            StoredAnswer::from_bytes(&far).is_none(),
            "body past the end"
        );
    }

    #[test]
    fn provider_keys_are_hashed_not_cut() {
        assert_eq!(key_for_provider("order-1", 64), "order-1");
        let long = "x".repeat(100);
        let derived = key_for_provider(&long, 64);
        assert_eq!(derived.len(), 64);
        assert!(derived.starts_with("sy-"));
        assert_eq!(derived, key_for_provider(&long, 64), "deterministic");
        let other = format!("{}y", "x".repeat(99));
        assert_ne!(
            derived,
            key_for_provider(&other, 64),
            "same prefix, other key"
        );
        assert!(!derived.contains(&"x".repeat(10)));
    }

    #[test]
    fn scope_separates_tenants_and_credentials_without_keeping_them() {
        let a = scope(Some("eu"), Some(b"Bearer sk_live_a"));
        let b = scope(Some("eu"), Some(b"Bearer sk_live_b"));
        assert_ne!(a, b);
        assert_ne!(scope(Some("eu"), None), scope(Some("us"), None));
        assert!(!a.contains("sk_live"));
    }

    #[test]
    fn fingerprint_covers_method_route_path_and_body() {
        let base = fingerprint(&Method::POST, "r", "/v1/x", b"amount=1");
        assert_ne!(base, fingerprint(&Method::PUT, "r", "/v1/x", b"amount=1"));
        assert_ne!(base, fingerprint(&Method::POST, "s", "/v1/x", b"amount=1"));
        assert_ne!(base, fingerprint(&Method::POST, "r", "/v1/y", b"amount=1"));
        assert_ne!(base, fingerprint(&Method::POST, "r", "/v1/x", b"amount=2"));
    }
}
