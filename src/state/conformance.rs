//! The behaviour every backend of payment state shows, written once against the traits: a backend
//! (in memory today; on disk and shared later) runs the whole suite with [`suite!`].
//!
//! A backend supplies fresh stores and a way to let time pass for them ([`Backend`]); each case is a
//! function of its own, so a failure names the rule that broke.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use prometheus::IntCounter;

use crate::config::Dedupe;
use crate::idempotency::{
    Begin, Finish, Kept, KeptRequest, Lease, Limits, NotKept, PinStore, RecordKey, Store,
    StoredAnswer,
};
use crate::state::StateError;
use crate::webhooks::dedupe::{self, EventStore};

/// A backend under test: fresh stores, and a clock to move.
pub(crate) trait Backend: Send + Sync {
    /// Its idempotency store.
    type Records: Store;
    /// Its pin store.
    type Pins: PinStore;
    /// Its webhook event store.
    type Events: EventStore;
    /// An empty idempotency store bounded by `limits`, counting evictions in `evictions`.
    fn records(&self, limits: Limits, evictions: IntCounter) -> Self::Records;
    /// An empty pin store keeping pins for `ttl`, at most `max` of them.
    fn pins(&self, ttl: Duration, max: usize) -> Self::Pins;
    /// An empty event store.
    fn events(&self) -> Arc<Self::Events>;
    /// Lets `by` pass for every store this backend made.
    fn advance(&self, by: Duration) -> impl Future<Output = ()> + Send;
}

/// One test per case, against the backend `$make` builds.
///
/// `suite!(make)` runs every case. `suite!(shared: make)` leaves out the cases of the per-process
/// bounds (`max_entries`, `max_bytes`, a pin table's and an event table's size): a store shared by a
/// fleet is bounded by its records' ttl and its server's memory (which refuses writes when full
/// rather than drop a record: a dropped record is a payment that could be sent twice), not by one
/// sidecar's counts.
macro_rules! suite {
    (shared: $make:expr) => {
        $crate::state::conformance::suite!(@cases $make;
            records_conflict_while_in_flight,
            records_mismatch_on_another_payload,
            records_replay_the_final_answer,
            records_resume_an_unknown_outcome_at_the_pinned_provider,
            records_an_abandoned_attempt_resumes_where_it_was_recorded,
            records_without_an_attempt_start_afresh_after_the_lease,
            records_refuse_a_stale_holder,
            records_leave_nothing_when_nothing_was_sent,
            records_are_named_by_scope_and_key,
            records_finished_without_a_begin_change_nothing,
            records_expire_after_their_ttl,
            records_keep_the_request_of_an_unknown_outcome,
            records_list_what_may_be_unknown,
            pins_are_found_by_path_or_body,
            pins_the_first_pinned_candidate_wins,
            pins_expire_after_their_ttl,
            events_are_duplicates_until_their_ttl,
            events_not_delivered_are_forgotten,
            events_in_flight_make_copies_wait,
            events_of_a_dropped_claim_are_forgotten,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let backend = $make;
                $crate::state::conformance::$case(&backend).await;
            }
        )*
    };
    ($make:expr) => {
        $crate::state::conformance::suite!(shared: $make);
        $crate::state::conformance::suite!(@cases $make;
            records_are_bounded_by_entries_never_evicting_in_flight,
            records_are_bounded_by_bytes,
            pins_are_bounded_oldest_first,
            events_are_bounded_oldest_first,
        );
    };
}
pub(crate) use suite;

const F1: [u8; 32] = [1; 32];
const F2: [u8; 32] = [2; 32];

fn key(k: &str) -> RecordKey {
    RecordKey::new(String::new(), k.to_owned())
}

fn answer(body: &str) -> StoredAnswer {
    StoredAnswer::new(
        StatusCode::OK,
        &HeaderMap::new(),
        body.as_bytes(),
        Arc::from("a"),
    )
}

fn counter() -> IntCounter {
    IntCounter::new("evictions", "evictions").unwrap()
}

fn records<B: Backend>(b: &B, max_entries: usize) -> (B::Records, IntCounter) {
    let c = counter();
    let limits = Limits {
        ttl: Duration::from_secs(60),
        max_entries,
        max_bytes: 1 << 20,
    };
    (b.records(limits, c.clone()), c)
}

/// How long a claim holds its record in these cases.
const LEASE: Duration = Duration::from_secs(30);

fn provider(name: &str) -> Arc<str> {
    Arc::from(name)
}

/// Claims `k` as the proxy does, its first attempt meant for `primary`.
async fn begin(s: &impl Store, k: &RecordKey, f: [u8; 32]) -> Begin {
    s.begin(k, f, LEASE, Some(&provider("primary")))
        .await
        .unwrap()
}

/// Claims `k`, which must be new, and gives its lease.
async fn hold(s: &impl Store, k: &RecordKey, f: [u8; 32]) -> Lease {
    match begin(s, k, f).await {
        Begin::New(lease) => lease,
        other => panic!("expected a new record, got {other:?}"),
    }
}

async fn finish(s: &impl Store, k: &RecordKey, lease: Lease, f: Finish) {
    s.finish(k, lease, f).await.unwrap()
}

fn unknown_at(name: &str) -> Finish {
    Finish::unknown(provider(name))
}

/// 409: a key in flight is not begun again.
pub(crate) async fn records_conflict_while_in_flight<B: Backend>(b: &B) {
    let (s, _) = records(b, 10);
    hold(&s, &key("k"), F1).await;
    assert!(matches!(begin(&s, &key("k"), F1).await, Begin::InFlight));
    hold(&s, &key("other"), F1).await;
}

/// 422: a key reused with another payload, in flight or settled.
pub(crate) async fn records_mismatch_on_another_payload<B: Backend>(b: &B) {
    let (s, _) = records(b, 10);
    let lease = hold(&s, &key("k"), F1).await;
    assert!(matches!(begin(&s, &key("k"), F2).await, Begin::Mismatch));
    finish(&s, &key("k"), lease, Finish::Final(answer("x"))).await;
    assert!(matches!(begin(&s, &key("k"), F2).await, Begin::Mismatch));
}

/// A final answer is replayed byte for byte, as often as asked.
pub(crate) async fn records_replay_the_final_answer<B: Backend>(b: &B) {
    let (s, _) = records(b, 10);
    let lease = hold(&s, &key("k"), F1).await;
    let mut h = HeaderMap::new();
    h.insert("content-type", "application/json".parse().unwrap());
    h.append("set-cookie", "a=1".parse().unwrap());
    h.append("set-cookie", "b=2".parse().unwrap());
    let body = b"{\"id\":\"pi_1\"}";
    let stored = StoredAnswer::new(StatusCode::CREATED, &h, body, Arc::from("primary"));
    finish(&s, &key("k"), lease, Finish::Final(stored)).await;
    for _ in 0..2 {
        match begin(&s, &key("k"), F1).await {
            Begin::Replay(a) => {
                assert_eq!(a.status(), StatusCode::CREATED);
                assert_eq!(a.headers(), h);
                assert_eq!(&a.body()[..], body);
                assert_eq!(&**a.provider(), "primary");
            }
            other => panic!("{other:?}"),
        }
    }
}

/// An unknown outcome resumes at its provider only, in flight again; a resumed request that sends
/// nothing keeps the pin.
pub(crate) async fn records_resume_an_unknown_outcome_at_the_pinned_provider<B: Backend>(b: &B) {
    let (s, _) = records(b, 10);
    let lease = hold(&s, &key("k"), F1).await;
    s.attempt(&key("k"), lease, &provider("backup"))
        .await
        .unwrap();
    finish(&s, &key("k"), lease, unknown_at("backup")).await;
    let resumed = match begin(&s, &key("k"), F1).await {
        Begin::Resume { pinned, lease, .. } => {
            assert_eq!(&*pinned, "backup");
            lease
        }
        other => panic!("{other:?}"),
    };
    assert!(matches!(begin(&s, &key("k"), F1).await, Begin::InFlight));
    finish(&s, &key("k"), resumed, Finish::NothingSent).await;
    match begin(&s, &key("k"), F1).await {
        Begin::Resume { pinned, .. } => assert_eq!(&*pinned, "backup"),
        other => panic!("{other:?}"),
    }
}

/// The attempt is recorded before it is sent: a holder that dies after recording one leaves a key
/// that, once its lease ran out, resumes at the recorded provider only (never the claim's first).
pub(crate) async fn records_an_abandoned_attempt_resumes_where_it_was_recorded<B: Backend>(b: &B) {
    let (s, _) = records(b, 10);
    let lease = hold(&s, &key("k"), F1).await;
    s.attempt(&key("k"), lease, &provider("backup"))
        .await
        .unwrap();
    b.advance(LEASE - Duration::from_secs(1)).await;
    assert!(
        matches!(begin(&s, &key("k"), F1).await, Begin::InFlight),
        "held while the lease runs"
    );
    b.advance(Duration::from_secs(2)).await;
    match begin(&s, &key("k"), F1).await {
        Begin::Resume {
            pinned,
            lease: next,
            ..
        } => {
            assert_eq!(&*pinned, "backup");
            assert_ne!(next, lease);
        }
        other => panic!("{other:?}"),
    }
    // The claim's own first provider counts as recorded too.
    s.begin(&key("first"), F1, LEASE, Some(&provider("primary")))
        .await
        .unwrap();
    b.advance(LEASE + Duration::from_secs(1)).await;
    match begin(&s, &key("first"), F1).await {
        Begin::Resume { pinned, .. } => assert_eq!(&*pinned, "primary"),
        other => panic!("{other:?}"),
    }
}

/// What a record keeps for its resolution, for key `k`, due at `next_ms`.
fn kept(k: &str, next_ms: u64) -> Arc<Kept> {
    let mut h = HeaderMap::new();
    h.insert("content-type", "application/json".parse().unwrap());
    let request = KeptRequest::new(
        "",
        k,
        &http::Method::POST,
        "/v1/payments",
        &h,
        &[],
        &bytes::Bytes::from_static(b"{\"amount\":1}"),
    )
    .unwrap();
    let mut kept = Kept::first(next_ms - 1_000, Ok(Arc::new(request)));
    kept.next_ms = next_ms;
    Arc::new(kept)
}

fn unknown_keeping(name: &str, kept: &Arc<Kept>) -> Finish {
    Finish::Unknown {
        provider: provider(name),
        kept: Some(Arc::clone(kept)),
    }
}

/// An unknown outcome keeps its request for the resolver: a resume gets it back; a resumed request
/// that sends nothing, or ends unknown without a new one, leaves it as it was; a new one replaces it;
/// a final answer ends it.
pub(crate) async fn records_keep_the_request_of_an_unknown_outcome<B: Backend>(b: &B) {
    let (s, _) = records(b, 10);
    let first = kept("k", 5_000);
    let lease = hold(&s, &key("k"), F1).await;
    finish(&s, &key("k"), lease, unknown_keeping("primary", &first)).await;
    let resume = |expected: Arc<Kept>| {
        let s = &s;
        async move {
            match begin(s, &key("k"), F1).await {
                Begin::Resume {
                    pinned,
                    lease,
                    kept,
                } => {
                    assert_eq!(&*pinned, "primary");
                    assert_eq!(kept.as_deref(), Some(&*expected));
                    lease
                }
                other => panic!("{other:?}"),
            }
        }
    };
    let lease = resume(Arc::clone(&first)).await;
    finish(&s, &key("k"), lease, Finish::NothingSent).await;
    let lease = resume(Arc::clone(&first)).await;
    finish(&s, &key("k"), lease, unknown_at("primary")).await;
    let lease = resume(Arc::clone(&first)).await;
    let tried = Arc::new(first.tried(6_000, Duration::from_secs(86_400)));
    finish(&s, &key("k"), lease, unknown_keeping("primary", &tried)).await;
    let lease = resume(Arc::clone(&tried)).await;
    finish(&s, &key("k"), lease, Finish::Final(answer("x"))).await;
    assert!(matches!(begin(&s, &key("k"), F1).await, Begin::Replay(_)));
    assert!(s.unknowns(10).await.unwrap().is_empty());
    // Why a request was not kept is kept too.
    let lease = hold(&s, &key("card"), F1).await;
    let not_kept = Arc::new(Kept::first(1_000, Err(NotKept::CardData)));
    finish(
        &s,
        &key("card"),
        lease,
        unknown_keeping("backup", &not_kept),
    )
    .await;
    match begin(&s, &key("card"), F1).await {
        Begin::Resume { kept, .. } => assert_eq!(kept.as_deref(), Some(&*not_kept)),
        other => panic!("{other:?}"),
    }
}

/// The listing of what may be unknown: records settled unknown (with what they keep), and records
/// whose holder died after recording an attempt; never a record with a final answer, one that sent
/// nothing, or one whose holder's lease still runs. Those due first come first.
pub(crate) async fn records_list_what_may_be_unknown<B: Backend>(b: &B) {
    let (s, _) = records(b, 10);
    for (k, next) in [("late", 9_000), ("soon", 2_000), ("middle", 5_000)] {
        let lease = hold(&s, &key(k), F1).await;
        finish(
            &s,
            &key(k),
            lease,
            unknown_keeping("primary", &kept(k, next)),
        )
        .await;
    }
    let lease = hold(&s, &key("done"), F1).await;
    finish(&s, &key("done"), lease, Finish::Final(answer("x"))).await;
    let lease = hold(&s, &key("nothing"), F1).await;
    finish(&s, &key("nothing"), lease, Finish::NothingSent).await;
    hold(&s, &key("running"), F1).await;
    let listed = s.unknowns(10).await.unwrap();
    let names: Vec<_> = listed
        .iter()
        .map(|u| match &u.kept.as_ref().unwrap().request {
            Ok(r) => r.key.clone(),
            Err(e) => panic!("{e:?}"),
        })
        .collect();
    assert_eq!(names, ["soon", "middle", "late"]);
    assert!(listed.iter().all(|u| &*u.pinned == "primary"));
    assert_eq!(listed[0].digest, *key("soon").digest());
    assert_eq!(s.unknowns(2).await.unwrap().len(), 2, "at most the limit");
    // The holder of "running" dies: after its lease, its key may be unknown at its first provider.
    b.advance(LEASE + Duration::from_secs(1)).await;
    let listed = s.unknowns(10).await.unwrap();
    assert_eq!(listed.len(), 4);
    let dead = listed
        .iter()
        .find(|u| u.digest == *key("running").digest())
        .expect("the dead holder's record is listed");
    assert_eq!(&*dead.pinned, "primary");
    assert!(dead.kept.is_none());
}

/// A claim that recorded no attempt sent nothing: after its lease, the key starts afresh.
pub(crate) async fn records_without_an_attempt_start_afresh_after_the_lease<B: Backend>(b: &B) {
    let (s, _) = records(b, 10);
    let first = s.begin(&key("k"), F1, LEASE, None).await.unwrap();
    assert!(matches!(first, Begin::New(_)));
    b.advance(LEASE + Duration::from_secs(1)).await;
    assert!(matches!(begin(&s, &key("k"), F1).await, Begin::New(_)));
}

/// A holder whose lease ran out and whose key was claimed again cannot write: its late answer would
/// overwrite what its successor learned.
pub(crate) async fn records_refuse_a_stale_holder<B: Backend>(b: &B) {
    let (s, _) = records(b, 10);
    let stale = hold(&s, &key("k"), F1).await;
    b.advance(LEASE + Duration::from_secs(1)).await;
    let current = match begin(&s, &key("k"), F1).await {
        Begin::Resume { lease, .. } => lease,
        other => panic!("{other:?}"),
    };
    let late = s
        .finish(&key("k"), stale, Finish::Final(answer("late")))
        .await;
    assert!(matches!(late, Err(StateError::Fenced)), "{late:?}");
    let moved = s.attempt(&key("k"), stale, &provider("backup")).await;
    assert!(matches!(moved, Err(StateError::Fenced)), "{moved:?}");
    assert!(matches!(begin(&s, &key("k"), F1).await, Begin::InFlight));
    finish(&s, &key("k"), current, Finish::Final(answer("now"))).await;
    match begin(&s, &key("k"), F1).await {
        Begin::Replay(a) => assert_eq!(&a.body()[..], b"now"),
        other => panic!("{other:?}"),
    }
}

/// A request that sent nothing anywhere leaves no record, whatever attempts it recorded on the way:
/// a retry starts afresh, with any payload.
pub(crate) async fn records_leave_nothing_when_nothing_was_sent<B: Backend>(b: &B) {
    let (s, _) = records(b, 10);
    let lease = hold(&s, &key("k"), F1).await;
    s.attempt(&key("k"), lease, &provider("backup"))
        .await
        .unwrap();
    finish(&s, &key("k"), lease, Finish::NothingSent).await;
    assert!(matches!(begin(&s, &key("k"), F2).await, Begin::New(_)));
}

/// Scope and key together name a record, with no way to shift characters between them.
pub(crate) async fn records_are_named_by_scope_and_key<B: Backend>(b: &B) {
    let (s, _) = records(b, 10);
    let k = |s: &str, k: &str| RecordKey::new(s.to_owned(), k.to_owned());
    hold(&s, &k("a", "bc"), F1).await;
    hold(&s, &k("ab", "c"), F1).await;
    hold(&s, &k("t2", "bc"), F1).await;
    assert!(matches!(
        begin(&s, &k("a", "bc"), F1).await,
        Begin::InFlight
    ));
}

/// Writing to a key that has no record (or under a lease never given) creates none.
pub(crate) async fn records_finished_without_a_begin_change_nothing<B: Backend>(b: &B) {
    let (s, _) = records(b, 10);
    let never = Lease(u64::MAX);
    let r = s.attempt(&key("k"), never, &provider("primary")).await;
    assert!(matches!(r, Err(StateError::Fenced)), "{r:?}");
    let r = s.finish(&key("k"), never, Finish::Final(answer("x"))).await;
    assert!(matches!(r, Err(StateError::Fenced)), "{r:?}");
    assert!(matches!(begin(&s, &key("k"), F1).await, Begin::New(_)));
}

/// A record lives for the ttl from its last write; expiry is not an eviction.
pub(crate) async fn records_expire_after_their_ttl<B: Backend>(b: &B) {
    let (s, evictions) = records(b, 10);
    let lease = hold(&s, &key("k"), F1).await;
    finish(&s, &key("k"), lease, Finish::Final(answer("x"))).await;
    b.advance(Duration::from_secs(59)).await;
    assert!(matches!(begin(&s, &key("k"), F1).await, Begin::Replay(_)));
    b.advance(Duration::from_secs(2)).await;
    assert!(matches!(begin(&s, &key("k"), F1).await, Begin::New(_)));
    assert_eq!(evictions.get(), 0, "expiry is not an eviction");
}

/// Past `max_entries` the oldest settled records go, counted; a record in flight never goes.
pub(crate) async fn records_are_bounded_by_entries_never_evicting_in_flight<B: Backend>(b: &B) {
    let (s, evictions) = records(b, 3);
    hold(&s, &key("in-flight"), F1).await;
    for i in 0..5 {
        let k = key(&format!("k{i}"));
        let lease = hold(&s, &k, F1).await;
        finish(&s, &k, lease, Finish::Final(answer("x"))).await;
    }
    assert_eq!(evictions.get(), 3);
    assert!(matches!(
        begin(&s, &key("in-flight"), F1).await,
        Begin::InFlight
    ));
    assert!(matches!(begin(&s, &key("k4"), F1).await, Begin::Replay(_)));
    assert!(matches!(begin(&s, &key("k3"), F1).await, Begin::Replay(_)));
    assert!(matches!(begin(&s, &key("k0"), F1).await, Begin::New(_)));
}

/// Past `max_bytes` (stored answers included) the oldest settled records go, counted.
pub(crate) async fn records_are_bounded_by_bytes<B: Backend>(b: &B) {
    let c = counter();
    let limits = Limits {
        ttl: Duration::from_secs(60),
        max_entries: 100,
        max_bytes: 3_000,
    };
    let s = b.records(limits, c.clone());
    for i in 0..5 {
        let k = key(&format!("b{i}"));
        let lease = hold(&s, &k, F1).await;
        finish(&s, &k, lease, Finish::Final(answer(&"x".repeat(1_000)))).await;
    }
    assert!(c.get() >= 2, "{}", c.get());
    assert!(matches!(begin(&s, &key("b4"), F1).await, Begin::Replay(_)));
    assert!(matches!(begin(&s, &key("b0"), F1).await, Begin::New(_)));
}

const PI: &str = "pi_3MtwBwLkdIwHu7ix28a3tqPa";

async fn find(p: &impl PinStore, path: &str, body: &[u8]) -> Option<String> {
    p.find(path, body).await.unwrap().map(|p| p.to_string())
}

/// A follow-up that names a pinned object in its path or its body finds the object's provider.
pub(crate) async fn pins_are_found_by_path_or_body<B: Backend>(b: &B) {
    let p = b.pins(Duration::from_secs(60), 100);
    let primary: Arc<str> = Arc::from("primary");
    let body = format!(r#"{{"id":"{PI}","object":"payment_intent"}}"#);
    p.remember_answer(body.as_bytes(), &primary).await.unwrap();
    let path = format!("/v1/payment_intents/{PI}/capture");
    assert_eq!(find(&p, &path, b"").await.as_deref(), Some("primary"));
    let form = format!("payment_intent={PI}&amount=100");
    let found = find(&p, "/v1/refunds", form.as_bytes()).await;
    assert_eq!(found.as_deref(), Some("primary"));
    let other = br#"{"payment_intent":"pi_other1234"}"#;
    assert_eq!(find(&p, "/v1/refunds", other).await, None);
    // An answer without a usable id pins nothing.
    p.remember_answer(br#"{"id":"short"}"#, &primary)
        .await
        .unwrap();
    assert_eq!(find(&p, "/v1/x/short", b"").await, None);
}

/// Of several pinned objects a request names, the first named decides.
pub(crate) async fn pins_the_first_pinned_candidate_wins<B: Backend>(b: &B) {
    let p = b.pins(Duration::from_secs(60), 100);
    p.remember("pi_first_object", &Arc::from("a"))
        .await
        .unwrap();
    p.remember("pi_second_object", &Arc::from("b"))
        .await
        .unwrap();
    let path = "/v1/payment_intents/pi_second_object/capture";
    assert_eq!(find(&p, path, b"").await.as_deref(), Some("b"));
    let found = find(&p, path, b"related=pi_first_object").await;
    assert_eq!(found.as_deref(), Some("b"), "the path comes first");
    let found = find(&p, "/v1/refunds", b"a=pi_first_object&b=pi_second_object").await;
    assert_eq!(found.as_deref(), Some("a"));
}

/// A pin lives for the ttl.
pub(crate) async fn pins_expire_after_their_ttl<B: Backend>(b: &B) {
    let p = b.pins(Duration::from_secs(60), 100);
    p.remember(PI, &Arc::from("primary")).await.unwrap();
    let path = format!("/v1/payment_intents/{PI}");
    b.advance(Duration::from_secs(59)).await;
    assert_eq!(find(&p, &path, b"").await.as_deref(), Some("primary"));
    b.advance(Duration::from_secs(2)).await;
    assert_eq!(find(&p, &path, b"").await, None);
}

/// Past the bound the oldest pins go.
pub(crate) async fn pins_are_bounded_oldest_first<B: Backend>(b: &B) {
    let p = b.pins(Duration::from_secs(60), 10);
    let a: Arc<str> = Arc::from("a");
    for i in 0..50 {
        p.remember(&format!("pi_{i:08}"), &a).await.unwrap();
    }
    assert!(find(&p, "/x/pi_00000049", b"").await.is_some());
    assert!(find(&p, "/x/pi_00000040", b"").await.is_some());
    assert!(find(&p, "/x/pi_00000001", b"").await.is_none());
}

const SETTINGS: Dedupe = Dedupe {
    ttl: Duration::from_secs(60),
    max_entries: 2,
};

async fn claim<S: EventStore>(s: &Arc<S>, id: &str) -> dedupe::Claim<S> {
    match dedupe::begin(s, id).await.unwrap() {
        dedupe::Begin::Deliver(c) => c,
        other => panic!("{id}: expected Deliver, got {other:?}"),
    }
}

async fn is_duplicate<S: EventStore>(s: &Arc<S>, id: &str) -> bool {
    matches!(
        dedupe::begin(s, id).await.unwrap(),
        dedupe::Begin::Duplicate
    )
}

/// An event the shop accepted is a duplicate until its ttl ends, then new again.
pub(crate) async fn events_are_duplicates_until_their_ttl<B: Backend>(b: &B) {
    let s = b.events();
    claim(&s, "evt_1")
        .await
        .finish(true, SETTINGS)
        .await
        .unwrap();
    b.advance(Duration::from_secs(59)).await;
    assert!(is_duplicate(&s, "evt_1").await);
    b.advance(Duration::from_secs(2)).await;
    claim(&s, "evt_1").await;
}

/// An event the shop did not accept is forgotten: the redelivery goes through.
pub(crate) async fn events_not_delivered_are_forgotten<B: Backend>(b: &B) {
    let s = b.events();
    claim(&s, "evt_1")
        .await
        .finish(false, SETTINGS)
        .await
        .unwrap();
    claim(&s, "evt_1")
        .await
        .finish(true, SETTINGS)
        .await
        .unwrap();
    assert!(is_duplicate(&s, "evt_1").await);
}

/// A copy that comes during a delivery waits, and is woken by the outcome.
pub(crate) async fn events_in_flight_make_copies_wait<B: Backend>(b: &B) {
    let s = b.events();
    let first = claim(&s, "evt_1").await;
    let dedupe::Begin::Wait(mut rx) = dedupe::begin(&s, "evt_1").await.unwrap() else {
        panic!("expected Wait")
    };
    first.finish(true, SETTINGS).await.unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(5), rx.changed()).await;
    assert!(matches!(woken, Ok(Err(_))), "the waiter is woken");
    assert!(is_duplicate(&s, "evt_1").await);
}

/// A claim dropped without an outcome frees its id (at once, or soon after for a store that is
/// told in a task of its own).
pub(crate) async fn events_of_a_dropped_claim_are_forgotten<B: Backend>(b: &B) {
    let s = b.events();
    drop(claim(&s, "evt_1").await);
    for _ in 0..50 {
        match dedupe::begin(&s, "evt_1").await.unwrap() {
            dedupe::Begin::Deliver(_) => return,
            dedupe::Begin::Wait(mut rx) => {
                let _ = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
            }
            dedupe::Begin::Duplicate => panic!("a dropped claim is not a delivery"),
        }
    }
    panic!("the dropped claim's id stayed in flight");
}

/// Past `max_entries` the oldest delivered ids go first.
pub(crate) async fn events_are_bounded_oldest_first<B: Backend>(b: &B) {
    let s = b.events();
    for id in ["a", "b", "c"] {
        claim(&s, id).await.finish(true, SETTINGS).await.unwrap();
        b.advance(Duration::from_secs(1)).await;
    }
    assert!(is_duplicate(&s, "b").await);
    assert!(is_duplicate(&s, "c").await);
    claim(&s, "a").await;
}

/// The Redis backend, on a redis-server of its own per case; time moves by the offset the scripts
/// add to Redis's `TIME` (ttls are decided by each record's own expiry in that time; the real
/// `PEXPIRE` beside it only frees memory, never earlier).
mod redis_backend {
    use super::*;
    use crate::idempotency::MemoryStore;
    use crate::state::redis::testing::RedisServer;
    use crate::state::redis::{Redis, RedisEvents, RedisPins, RedisRecords};

    struct OnRedis {
        redis: Redis,
        _server: RedisServer,
    }

    impl OnRedis {
        async fn start() -> Self {
            let server = RedisServer::start();
            let redis = Redis::connect(&server.url(), Duration::from_secs(2), None)
                .await
                .unwrap();
            Self {
                redis,
                _server: server,
            }
        }
    }

    impl Backend for OnRedis {
        type Records = RedisRecords<MemoryStore>;
        type Pins = RedisPins;
        type Events = RedisEvents;

        fn records(&self, limits: Limits, _evictions: IntCounter) -> Self::Records {
            RedisRecords::new(self.redis.clone(), "route", limits.ttl, None)
        }

        fn pins(&self, ttl: Duration, _max: usize) -> Self::Pins {
            RedisPins::new(self.redis.clone(), ttl)
        }

        fn events(&self) -> Arc<Self::Events> {
            Arc::new(RedisEvents::new(
                self.redis.clone(),
                "hook",
                Duration::from_secs(30),
            ))
        }

        fn advance(&self, by: Duration) -> impl Future<Output = ()> + Send {
            self.redis.advance(by);
            std::future::ready(())
        }
    }

    suite!(shared: OnRedis::start().await);
}

/// The in-memory backend, with one manual clock for all its stores.
mod memory {
    use super::*;
    use crate::idempotency::{MemoryStore, ObjectPins};
    use crate::state::ManualClock;
    use crate::webhooks::dedupe::DedupeStore;

    #[derive(Default)]
    struct Memory {
        clock: ManualClock,
    }

    impl Backend for Memory {
        type Records = MemoryStore<ManualClock>;
        type Pins = ObjectPins<ManualClock>;
        type Events = DedupeStore<ManualClock>;

        fn records(&self, limits: Limits, evictions: IntCounter) -> Self::Records {
            MemoryStore::with_clock(limits, self.clock.clone(), Some(evictions))
        }

        fn pins(&self, ttl: Duration, max: usize) -> Self::Pins {
            ObjectPins::with_clock(ttl, max, self.clock.clone())
        }

        fn events(&self) -> Arc<Self::Events> {
            Arc::new(DedupeStore::with_clock(self.clock.clone()))
        }

        fn advance(&self, by: Duration) -> impl Future<Output = ()> + Send {
            self.clock.advance(by);
            std::future::ready(())
        }
    }

    suite!(Memory::default());
}
