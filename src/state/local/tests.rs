//! The local backend: the conformance suite, and what a crash, a restart, a torn or corrupt journal,
//! a second sidecar and compaction do to it.
//!
//! A crash is simulated by copying the store's directory while the store is still open and writing:
//! the copy is what the kernel holds at that moment, which is all that a SIGKILL leaves behind.
//! Nothing runs on drop, so nothing can have been saved for a clean shutdown.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use prometheus::IntCounter;
use tempfile::TempDir;

use super::*;
use crate::config::Dedupe;
use crate::idempotency::{Begin, Finish, Lease, PinStore, RecordKey, Store, StoredAnswer};
use crate::state::conformance::{self, Backend};
use crate::state::{ManualClock, StateError};
use crate::webhooks::dedupe;

/// The local backend, each store under a name of its own so that every store starts empty.
struct LocalBackend {
    _dir: TempDir,
    local: Local<ManualClock>,
    clock: ManualClock,
    n: AtomicUsize,
}

impl LocalBackend {
    fn new() -> Self {
        let dir = TempDir::new().unwrap();
        let clock = ManualClock::default();
        let local =
            Local::open_with_clock(dir.path(), LocalOptions::default(), clock.clone()).unwrap();
        Self {
            _dir: dir,
            local,
            clock,
            n: AtomicUsize::new(0),
        }
    }

    fn name(&self) -> String {
        format!("s{}", self.n.fetch_add(1, Ordering::SeqCst))
    }
}

/// The suite takes a store by value.
struct Records(Arc<LocalRecords<ManualClock>>);

impl Store for Records {
    fn begin(
        &self,
        key: &RecordKey,
        fingerprint: [u8; 32],
        lease: Duration,
        first: Option<&Arc<str>>,
    ) -> impl Future<Output = Result<Begin, StateError>> + Send {
        self.0.begin(key, fingerprint, lease, first)
    }

    fn attempt(
        &self,
        key: &RecordKey,
        lease: Lease,
        provider: &Arc<str>,
    ) -> impl Future<Output = Result<(), StateError>> + Send {
        self.0.attempt(key, lease, provider)
    }

    fn finish(
        &self,
        key: &RecordKey,
        lease: Lease,
        finish: Finish,
    ) -> impl Future<Output = Result<(), StateError>> + Send {
        self.0.finish(key, lease, finish)
    }

    fn unknowns(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<crate::idempotency::UnknownOp>, StateError>> + Send {
        self.0.unknowns(limit)
    }
}

struct Pins(Arc<LocalPins<ManualClock>>);

impl PinStore for Pins {
    fn remember(
        &self,
        id: &str,
        provider: &Arc<str>,
    ) -> impl Future<Output = Result<(), StateError>> + Send {
        self.0.remember(id, provider)
    }

    fn find_any(
        &self,
        ids: &crate::idempotency::Candidates<'_>,
    ) -> impl Future<Output = Result<Option<Arc<str>>, StateError>> + Send {
        self.0.find_any(ids)
    }
}

impl Backend for LocalBackend {
    type Records = Records;
    type Pins = Pins;
    type Events = LocalEvents<ManualClock>;

    fn records(&self, limits: Limits, evictions: IntCounter) -> Self::Records {
        Records(self.local.records(&self.name(), limits, evictions))
    }

    fn pins(&self, ttl: Duration, max: usize) -> Self::Pins {
        Pins(self.local.pins(ttl, max))
    }

    fn events(&self) -> Arc<Self::Events> {
        self.local.events(&self.name())
    }

    fn advance(&self, by: Duration) -> impl Future<Output = ()> + Send {
        self.clock.advance(by);
        std::future::ready(())
    }
}

mod conformance_suite {
    use super::*;
    conformance::suite!(LocalBackend::new());
}

const LEASE: Duration = Duration::from_secs(30);
const F: [u8; 32] = [1; 32];
const PI: &str = "pi_3MtwBwLkdIwHu7ix28a3tqPa";

fn limits(ttl: Duration) -> Limits {
    Limits {
        ttl,
        max_entries: 10_000,
        max_bytes: 64 << 20,
    }
}

fn counter() -> IntCounter {
    IntCounter::new("evictions", "evictions").unwrap()
}

fn key(k: &str) -> RecordKey {
    RecordKey::new("tenant".to_owned(), k.to_owned())
}

fn p(name: &str) -> Arc<str> {
    Arc::from(name)
}

fn open(dir: &Path, clock: &ManualClock) -> Result<Local<ManualClock>, LocalError> {
    Local::open_with_clock(dir, LocalOptions::default(), clock.clone())
}

/// What a SIGKILL leaves of `dir` now: its files as the kernel holds them (the lock is the
/// process's, and goes with it).
fn crash_copy(dir: &Path) -> TempDir {
    let copy = TempDir::new().unwrap();
    std::fs::copy(dir.join(JOURNAL), copy.path().join(JOURNAL)).unwrap();
    copy
}

async fn hold(s: &impl Store, k: &str, first: Option<&str>) -> Lease {
    match s
        .begin(&key(k), F, LEASE, first.map(p).as_ref())
        .await
        .unwrap()
    {
        Begin::New(l) => l,
        other => panic!("{k}: expected New, got {other:?}"),
    }
}

const DEDUPE: Dedupe = Dedupe {
    ttl: Duration::from_secs(30 * 24 * 3600),
    max_entries: 1000,
};

#[tokio::test]
async fn every_kind_of_state_survives_a_crash_and_resumes_where_it_was() {
    let dir = TempDir::new().unwrap();
    let clock = ManualClock::default();
    let local = open(dir.path(), &clock).unwrap();
    let s = local.records("payments", limits(Duration::from_secs(3600)), counter());
    let short = local.records("short", limits(Duration::from_secs(10)), counter());

    // A final answer, with repeated headers and a binary body.
    let mut h = HeaderMap::new();
    h.insert("content-type", "application/json".parse().unwrap());
    h.append("set-cookie", "a=1".parse().unwrap());
    h.append("set-cookie", "b=2".parse().unwrap());
    let body: Vec<u8> = (0..=255u8).chain(*b"{\"id\":\"pi_1\"}").collect();
    let done = hold(&*s, "final", Some("primary")).await;
    let answer = StoredAnswer::new(StatusCode::PAYMENT_REQUIRED, &h, &body, p("primary"));
    s.finish(&key("final"), done, Finish::Final(answer))
        .await
        .unwrap();
    // An unknown outcome at the backup.
    let unknown = hold(&*s, "unknown", Some("primary")).await;
    s.attempt(&key("unknown"), unknown, &p("backup"))
        .await
        .unwrap();
    s.finish(&key("unknown"), unknown, Finish::unknown(p("backup")))
        .await
        .unwrap();
    // In flight, its attempt recorded at the backup (moved from the primary): the holder dies.
    let flying = hold(&*s, "in-flight", Some("primary")).await;
    s.attempt(&key("in-flight"), flying, &p("backup"))
        .await
        .unwrap();
    // In flight, no attempt recorded: nothing was sent.
    let unsent = hold(&*s, "unsent", None).await;
    // Settled to nothing: no record.
    let gone = hold(&*s, "gone", Some("primary")).await;
    s.finish(&key("gone"), gone, Finish::NothingSent)
        .await
        .unwrap();
    // A short-lived record that will have expired.
    let brief = hold(&*short, "brief", Some("primary")).await;
    short
        .finish(&key("brief"), brief, Finish::unknown(p("primary")))
        .await
        .unwrap();
    // An object pin and a delivered webhook event; a delivery in flight.
    let pins = local.pins(Duration::from_secs(3600), 1000);
    pins.remember(PI, &p("backup")).await.unwrap();
    let events = local.events("stripe");
    match dedupe::begin(&events, "evt_1").await.unwrap() {
        dedupe::Begin::Deliver(c) => c.finish(true, DEDUPE).await.unwrap(),
        other => panic!("{other:?}"),
    }
    let _delivering = match dedupe::begin(&events, "evt_2").await.unwrap() {
        dedupe::Begin::Deliver(c) => c,
        other => panic!("{other:?}"),
    };

    let crashed = crash_copy(dir.path());
    clock.advance(Duration::from_secs(11));
    let again = open(crashed.path(), &clock).unwrap();
    let s2 = again.records("payments", limits(Duration::from_secs(3600)), counter());

    match s2
        .begin(&key("final"), F, LEASE, Some(&p("backup")))
        .await
        .unwrap()
    {
        Begin::Replay(a) => {
            assert_eq!(a.status(), StatusCode::PAYMENT_REQUIRED);
            assert_eq!(a.headers(), h);
            assert_eq!(&a.body()[..], &body[..], "byte for byte");
            assert_eq!(&**a.provider(), "primary");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s2.begin(&key("final"), [9; 32], LEASE, None).await.unwrap(),
        Begin::Mismatch
    ));
    match s2
        .begin(&key("unknown"), F, LEASE, Some(&p("primary")))
        .await
        .unwrap()
    {
        Begin::Resume { pinned, .. } => assert_eq!(&*pinned, "backup"),
        other => panic!("{other:?}"),
    }
    // At once, without waiting out the dead holder's lease, and at the recorded provider.
    match s2
        .begin(&key("in-flight"), F, LEASE, Some(&p("primary")))
        .await
        .unwrap()
    {
        Begin::Resume { pinned, lease, .. } => {
            assert_eq!(&*pinned, "backup");
            assert!(lease.0 > flying.0, "fencing tokens never repeat");
            assert!(lease.0 > unsent.0);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s2.begin(&key("unsent"), F, LEASE, Some(&p("primary")))
            .await
            .unwrap(),
        Begin::New(_)
    ));
    assert!(matches!(
        s2.begin(&key("gone"), [7; 32], LEASE, None).await.unwrap(),
        Begin::New(_)
    ));
    let short2 = again.records("short", limits(Duration::from_secs(10)), counter());
    assert!(
        matches!(
            short2.begin(&key("brief"), F, LEASE, None).await.unwrap(),
            Begin::New(_)
        ),
        "expired while down"
    );
    let pins2 = again.pins(Duration::from_secs(3600), 1000);
    let found = pins2
        .find(&format!("/v1/payment_intents/{PI}/capture"), b"")
        .await
        .unwrap();
    assert_eq!(found.as_deref(), Some("backup"));
    let events2 = again.events("stripe");
    assert!(matches!(
        dedupe::begin(&events2, "evt_1").await.unwrap(),
        dedupe::Begin::Duplicate
    ));
    assert!(
        matches!(
            dedupe::begin(&events2, "evt_2").await.unwrap(),
            dedupe::Begin::Deliver(_)
        ),
        "a delivery in flight at the crash is delivered again"
    );
    assert!(matches!(
        dedupe::begin(&again.events("adyen"), "evt_1")
            .await
            .unwrap(),
        dedupe::Begin::Deliver(_)
    ));
}

#[tokio::test]
async fn records_of_a_route_asked_for_late_or_never_are_kept() {
    let dir = TempDir::new().unwrap();
    let clock = ManualClock::default();
    {
        let local = open(dir.path(), &clock).unwrap();
        let s = local.records("old-route", limits(Duration::from_secs(3600)), counter());
        let l = hold(&*s, "k", Some("primary")).await;
        s.finish(&key("k"), l, Finish::unknown(p("primary")))
            .await
            .unwrap();
    }
    // Started without that route, compacted, then started with it again.
    {
        let local = open(dir.path(), &clock).unwrap();
        let _other = local.records("new-route", limits(Duration::from_secs(3600)), counter());
        local.compact().unwrap();
    }
    let local = open(dir.path(), &clock).unwrap();
    let s = local.records("old-route", limits(Duration::from_secs(3600)), counter());
    assert!(matches!(
        s.begin(&key("k"), F, LEASE, None).await.unwrap(),
        Begin::Resume { .. }
    ));
}

/// Writes a few records and gives the journal's bytes.
async fn journal_with_three_records(dir: &Path, clock: &ManualClock) -> Vec<u8> {
    let local = open(dir, clock).unwrap();
    let s = local.records("payments", limits(Duration::from_secs(3600)), counter());
    for k in ["a", "b", "c"] {
        let l = hold(&*s, k, Some("primary")).await;
        s.finish(&key(k), l, Finish::unknown(p("primary")))
            .await
            .unwrap();
    }
    std::fs::read(dir.join(JOURNAL)).unwrap()
}

#[tokio::test]
async fn a_torn_last_write_is_cut_and_the_rest_kept() {
    let dir = TempDir::new().unwrap();
    let clock = ManualClock::default();
    let whole = journal_with_three_records(dir.path(), &clock).await;
    // The last frame half written.
    let torn = &whole[..whole.len() - 20];
    std::fs::write(dir.path().join(JOURNAL), torn).unwrap();
    let local = open(dir.path(), &clock).unwrap();
    assert!(
        local.journal_len() < torn.len() as u64,
        "the torn frame was cut"
    );
    let s = local.records("payments", limits(Duration::from_secs(3600)), counter());
    for k in ["a", "b"] {
        assert!(matches!(
            s.begin(&key(k), F, LEASE, None).await.unwrap(),
            Begin::Resume { .. }
        ));
    }
    // The cut frame was c's settle: its claim, with the attempt it recorded, is what is known.
    let resumed = match s.begin(&key("c"), F, LEASE, None).await.unwrap() {
        Begin::Resume { pinned, lease, .. } => {
            assert_eq!(&*pinned, "primary");
            lease
        }
        other => panic!("{other:?}"),
    };
    let done = StoredAnswer::new(StatusCode::OK, &HeaderMap::new(), b"ok", p("primary"));
    s.finish(&key("c"), resumed, Finish::Final(done))
        .await
        .unwrap();
    // Written on after the cut, and read back whole.
    drop((s, local));
    let local = open(dir.path(), &clock).unwrap();
    let s = local.records("payments", limits(Duration::from_secs(3600)), counter());
    match s.begin(&key("c"), F, LEASE, None).await.unwrap() {
        Begin::Replay(a) => assert_eq!(&a.body()[..], b"ok"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn corruption_in_the_middle_refuses_to_start_and_says_what_to_do() {
    let dir = TempDir::new().unwrap();
    let clock = ManualClock::default();
    let mut bytes = journal_with_three_records(dir.path(), &clock).await;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(dir.path().join(JOURNAL), &bytes).unwrap();
    let e = open(dir.path(), &clock).unwrap_err();
    assert!(matches!(e, LocalError::Corrupt { .. }), "{e:?}");
    let msg = e.to_string();
    let path = dir.path().join(JOURNAL).display().to_string();
    assert!(msg.contains(&path), "{msg}");
    assert!(msg.contains(&format!("mv {path} {path}.corrupt")), "{msg}");
    assert_eq!(
        std::fs::read(dir.path().join(JOURNAL)).unwrap(),
        bytes,
        "left as it was"
    );
}

#[tokio::test]
async fn a_second_sidecar_on_the_same_dir_is_refused_while_the_first_lives() {
    let dir = TempDir::new().unwrap();
    let clock = ManualClock::default();
    let first = open(dir.path(), &clock).unwrap();
    let store = first.records("payments", limits(Duration::from_secs(3600)), counter());
    let e = open(dir.path(), &clock).unwrap_err();
    assert!(matches!(e, LocalError::Locked { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    assert!(
        msg.contains("cannot share a local store") && msg.contains("backend: redis"),
        "{msg}"
    );
    // The stores hold the lock as long as they can write.
    drop(first);
    assert!(matches!(
        open(dir.path(), &clock),
        Err(LocalError::Locked { .. })
    ));
    drop(store);
    open(dir.path(), &clock).unwrap();
}

#[test]
fn a_dir_that_cannot_be_written_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let clock = ManualClock::default();
    let base = TempDir::new().unwrap();
    // A path under a regular file cannot be a directory, whoever runs this.
    let file = base.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let e = open(&file.join("state"), &clock).unwrap_err();
    assert!(matches!(e, LocalError::Create { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains(&file.join("state").display().to_string()),
        "{e}"
    );

    let ro = base.path().join("read-only");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
    // Root writes through mode bits: then there is nothing to test here.
    let probe = ro.join("probe");
    if std::fs::write(&probe, b"x").is_ok() {
        let _ = std::fs::remove_file(&probe);
        eprintln!("running as a user that mode 0500 does not stop; skipped that case");
        return;
    }
    let e = open(&ro, &clock).unwrap_err();
    assert!(matches!(e, LocalError::NotWritable { .. }), "{e:?}");
    assert!(e.to_string().contains(&ro.display().to_string()), "{e}");
    let e = open(&ro.join("state"), &clock).unwrap_err();
    assert!(matches!(e, LocalError::Create { .. }), "{e:?}");
}

#[tokio::test]
async fn compaction_keeps_everything_live_and_shrinks_the_file() {
    let dir = TempDir::new().unwrap();
    let clock = ManualClock::default();
    let local = open(dir.path(), &clock).unwrap();
    let s = local.records("payments", limits(Duration::from_secs(3600)), counter());
    let short = local.records("short", limits(Duration::from_secs(5)), counter());
    // Many changes to few records: most of the journal is history.
    for round in 0..200 {
        for k in 0..10 {
            let k = format!("k{k}");
            let l = hold(&*s, &k, Some("primary")).await;
            let f = if round == 199 {
                Finish::unknown(p("backup"))
            } else {
                Finish::NothingSent
            };
            s.finish(&key(&k), l, f).await.unwrap();
        }
    }
    let flying = hold(&*s, "in-flight", Some("backup")).await;
    let l = hold(&*short, "expiring", Some("primary")).await;
    short
        .finish(&key("expiring"), l, Finish::unknown(p("primary")))
        .await
        .unwrap();
    let pins = local.pins(Duration::from_secs(3600), 1000);
    pins.remember(PI, &p("backup")).await.unwrap();
    let events = local.events("stripe");
    match dedupe::begin(&events, "evt_1").await.unwrap() {
        dedupe::Begin::Deliver(c) => c.finish(true, DEDUPE).await.unwrap(),
        other => panic!("{other:?}"),
    }
    clock.advance(Duration::from_secs(6));

    let before = local.journal_len();
    let c = local.compact().unwrap();
    assert_eq!(c.before, before);
    assert!(c.after * 20 < c.before, "{c:?}");
    assert_eq!(
        std::fs::metadata(dir.path().join(JOURNAL)).unwrap().len(),
        c.after
    );
    // Written on after the compaction, into the new file.
    pins.remember("pi_after_compaction", &p("primary"))
        .await
        .unwrap();

    let crashed = crash_copy(dir.path());
    let again = open(crashed.path(), &clock).unwrap();
    let s2 = again.records("payments", limits(Duration::from_secs(3600)), counter());
    for k in 0..10 {
        match s2
            .begin(&key(&format!("k{k}")), F, LEASE, None)
            .await
            .unwrap()
        {
            Begin::Resume { pinned, .. } => assert_eq!(&*pinned, "backup"),
            other => panic!("{other:?}"),
        }
    }
    match s2.begin(&key("in-flight"), F, LEASE, None).await.unwrap() {
        Begin::Resume { pinned, lease, .. } => {
            assert_eq!(&*pinned, "backup");
            assert!(lease.0 > flying.0);
        }
        other => panic!("{other:?}"),
    }
    let short2 = again.records("short", limits(Duration::from_secs(5)), counter());
    assert!(matches!(
        short2
            .begin(&key("expiring"), F, LEASE, None)
            .await
            .unwrap(),
        Begin::New(_)
    ));
    let pins2 = again.pins(Duration::from_secs(3600), 1000);
    assert_eq!(
        pins2
            .find(&format!("/x/{PI}"), b"")
            .await
            .unwrap()
            .as_deref(),
        Some("backup")
    );
    assert_eq!(
        pins2
            .find("/x/pi_after_compaction", b"")
            .await
            .unwrap()
            .as_deref(),
        Some("primary")
    );
    assert!(matches!(
        dedupe::begin(&again.events("stripe"), "evt_1")
            .await
            .unwrap(),
        dedupe::Begin::Duplicate
    ));
}

#[tokio::test]
async fn compaction_drops_what_the_store_evicted_and_tokens_still_never_repeat() {
    let dir = TempDir::new().unwrap();
    let clock = ManualClock::default();
    let local = open(dir.path(), &clock).unwrap();
    let bounded = Limits {
        ttl: Duration::from_secs(3600),
        max_entries: 5,
        max_bytes: 64 << 20,
    };
    let s = local.records("payments", bounded, counter());
    let mut last = Lease(0);
    for i in 0..50 {
        let k = format!("k{i}");
        last = hold(&*s, &k, Some("primary")).await;
        s.finish(&key(&k), last, Finish::unknown(p("primary")))
            .await
            .unwrap();
    }
    let c = local.compact().unwrap();
    let crashed = crash_copy(dir.path());
    let again = open(crashed.path(), &clock).unwrap();
    let roomy = again.records("payments", limits(Duration::from_secs(3600)), counter());
    assert_eq!(roomy.memory().len(), 5, "only what the store held: {c:?}");
    assert!(matches!(
        roomy.begin(&key("k49"), F, LEASE, None).await.unwrap(),
        Begin::Resume { .. }
    ));
    // No record carries a token now; the next one is still above every token given.
    let next = hold(&*roomy, "fresh", None).await;
    assert!(next.0 > last.0, "{next:?} after {last:?}");
}

#[test]
fn compaction_loses_no_write_made_while_it_runs() {
    let dir = TempDir::new().unwrap();
    let clock = ManualClock::default();
    let local = open(dir.path(), &clock).unwrap();
    let s = local.records("payments", limits(Duration::from_secs(3600)), counter());
    let writer = {
        let s = Arc::clone(&s);
        std::thread::spawn(move || {
            futures_util::FutureExt::now_or_never(async {
                for i in 0..3000 {
                    let k = format!("k{i}");
                    let l = hold(&*s, &k, Some("primary")).await;
                    s.finish(&key(&k), l, Finish::unknown(p("primary")))
                        .await
                        .unwrap();
                }
            })
            .unwrap()
        })
    };
    let mut compactions = 0;
    while !writer.is_finished() {
        local.compact().unwrap();
        compactions += 1;
    }
    writer.join().unwrap();
    assert!(compactions > 0);
    let crashed = crash_copy(dir.path());
    let again = open(crashed.path(), &clock).unwrap();
    let s2 = again.records("payments", limits(Duration::from_secs(3600)), counter());
    assert_eq!(s2.memory().len(), 3000, "after {compactions} compactions");
}

#[tokio::test]
async fn the_background_thread_compacts_a_grown_journal() {
    let dir = TempDir::new().unwrap();
    let options = LocalOptions {
        sync_every: Some(Duration::from_millis(50)),
        compact_slack: 0,
    };
    let local = Local::open(dir.path(), options).unwrap();
    let s = local.records("payments", limits(Duration::from_secs(3600)), counter());
    for _ in 0..100 {
        let l = match s.begin(&key("k"), F, LEASE, None).await.unwrap() {
            Begin::New(l) => l,
            other => panic!("{other:?}"),
        };
        s.finish(&key("k"), l, Finish::NothingSent).await.unwrap();
    }
    let grown = local.journal_len();
    for _ in 0..200 {
        if local.journal_len() < grown {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("not compacted: {} bytes", local.journal_len());
}

#[tokio::test]
async fn a_journal_that_cannot_be_written_fails_the_call_and_claims_nothing() {
    let dir = TempDir::new().unwrap();
    let clock = ManualClock::default();
    let local = open(dir.path(), &clock).unwrap();
    let s = local.records("payments", limits(Duration::from_secs(3600)), counter());
    // Swap the journal's file for one that refuses writes.
    {
        let mut w = local.shared.journal.writer();
        w.file = Arc::new(std::fs::File::open(dir.path().join(JOURNAL)).unwrap());
    }
    let r = s.begin(&key("k"), F, LEASE, Some(&p("primary"))).await;
    assert!(matches!(r, Err(StateError::Unreachable(_))), "{r:?}");
    assert_eq!(s.memory().len(), 0, "the claim was given back");
}

/// What the local backend costs per payment over the in-memory one: a claim recording its first
/// provider, an attempt moved to a second, and a final answer of ~1 KiB, on one thread. CPU time
/// from /proc: of the calling thread (the request path, the journal's syscalls included) and of the
/// whole process (with the background thread's fdatasync and compactions). No speed is asserted.
///
/// `cargo test --release --lib state_cost -- --ignored --nocapture`
#[test]
#[ignore]
fn state_cost() {
    const N: usize = 200_000;
    let body = vec![b'x'; 1024];
    let mut h = HeaderMap::new();
    h.insert("content-type", "application/json".parse().unwrap());
    let answer = StoredAnswer::new(StatusCode::OK, &h, &body, p("primary"));
    let keys: Vec<RecordKey> = (0..N).map(|i| key(&format!("order-{i}"))).collect();
    let limits = Limits {
        ttl: Duration::from_secs(3600),
        max_entries: N + 1,
        max_bytes: 1 << 30,
    };
    /// µs per payment: thread CPU, process CPU, wall.
    fn run(s: &impl Store, keys: &[RecordKey], answer: &StoredAnswer) -> [f64; 3] {
        let (primary, backup) = (p("primary"), p("backup"));
        let (thread, process) = (cpu_ms("thread-self"), cpu_ms("self"));
        let wall = std::time::Instant::now();
        futures_util::FutureExt::now_or_never(async {
            for k in keys {
                let Ok(Begin::New(l)) = s.begin(k, F, LEASE, Some(&primary)).await else {
                    panic!("not new")
                };
                s.attempt(k, l, &backup).await.unwrap();
                s.finish(k, l, Finish::Final(answer.clone())).await.unwrap();
            }
        })
        .unwrap();
        let n = keys.len() as f64;
        [
            (cpu_ms("thread-self") - thread) * 1000.0 / n,
            (cpu_ms("self") - process) * 1000.0 / n,
            wall.elapsed().as_secs_f64() * 1e6 / n,
        ]
    }
    let runs = [
        ("memory", None, None),
        (
            "local, fdatasync every 1 s",
            Some(Some(Duration::from_secs(1))),
            None,
        ),
        ("local, no fdatasync", Some(None), None),
        ("memory", None, None),
        (
            "local, fdatasync every 1 s",
            Some(Some(Duration::from_secs(1))),
            None::<()>,
        ),
    ];
    for (name, local, _) in runs {
        let [thread, process, wall] = match local {
            None => run(
                &crate::idempotency::MemoryStore::new(limits),
                &keys,
                &answer,
            ),
            Some(sync_every) => {
                let dir = TempDir::new().unwrap();
                let options = LocalOptions {
                    sync_every,
                    ..LocalOptions::default()
                };
                let local = Local::open(dir.path(), options).unwrap();
                let s = local.records("payments", limits, counter());
                run(&*s, &keys, &answer)
            }
        };
        eprintln!("{name:28}: {thread:5.2} µs CPU (thread), {process:5.2} µs CPU (process), {wall:5.2} µs wall per payment");
    }
    // The object pin a payment's answer adds.
    let ids: Vec<String> = (0..N).map(|i| format!("pi_{i:020}")).collect();
    let pin = |s: &dyn Fn(&str)| {
        let thread = cpu_ms("thread-self");
        for id in &ids {
            s(id);
        }
        (cpu_ms("thread-self") - thread) * 1000.0 / N as f64
    };
    let provider = p("primary");
    let memory = crate::idempotency::ObjectPins::new(Duration::from_secs(3600), N);
    let m = pin(&|id| {
        futures_util::FutureExt::now_or_never(memory.remember(id, &provider))
            .unwrap()
            .unwrap()
    });
    let dir = TempDir::new().unwrap();
    let local = Local::open(dir.path(), LocalOptions::default()).unwrap();
    let pins = local.pins(Duration::from_secs(3600), N);
    let l = pin(&|id| {
        futures_util::FutureExt::now_or_never(pins.remember(id, &provider))
            .unwrap()
            .unwrap()
    });
    eprintln!("object pin: memory {m:.2} µs CPU, local {l:.2} µs CPU (thread)");
}

/// CPU time (user + system) of `/proc/{who}`, in milliseconds.
fn cpu_ms(who: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{who}/stat")).unwrap();
    // Fields after the command name (which ends in ')'): utime and stime are the 12th and 13th.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks * 10.0
}

/// What a record keeps for its resolution: a JSON payment request for key `k`.
fn kept(k: &str, now_ms: u64) -> Arc<crate::idempotency::Kept> {
    let mut h = HeaderMap::new();
    h.insert("content-type", "application/json".parse().unwrap());
    h.insert("x-shop-request", "r-1".parse().unwrap());
    let request = crate::idempotency::KeptRequest::new(
        "tenant",
        k,
        &http::Method::POST,
        "/v1/payments?expand=latest",
        &h,
        &[],
        &bytes::Bytes::from(format!("{{\"amount\":1,\"order\":\"{k}\"}}")),
    )
    .unwrap();
    Arc::new(crate::idempotency::Kept::first(
        now_ms,
        Ok(Arc::new(request)),
    ))
}

/// The listing of what may be unknown, as (digest, pinned provider, what it keeps).
async fn listed(s: &impl Store) -> Vec<([u8; 16], String, Option<Arc<crate::idempotency::Kept>>)> {
    s.unknowns(100)
        .await
        .unwrap()
        .into_iter()
        .map(|u| (u.digest, u.pinned.to_string(), u.kept))
        .collect()
}

#[tokio::test]
async fn a_kept_request_survives_a_crash_and_is_listed_after_it() {
    let dir = TempDir::new().unwrap();
    let clock = ManualClock::default();
    let local = open(dir.path(), &clock).unwrap();
    let s = local.records("payments", limits(Duration::from_secs(3600)), counter());
    // Settled unknown at the backup, keeping its request.
    let settled = kept("settled", 1_700_000_000_000);
    let l = hold(&*s, "settled", Some("backup")).await;
    s.finish(
        &key("settled"),
        l,
        Finish::Unknown {
            provider: p("backup"),
            kept: Some(Arc::clone(&settled)),
        },
    )
    .await
    .unwrap();
    // Settled unknown keeping its request, then resumed by a shop's retry: in flight at the crash,
    // with what it kept.
    let resumed = Arc::new(kept("resumed", 1_700_000_000_000).tried(1_700_000_001_000, TTL_DAY));
    let l = hold(&*s, "resumed", Some("primary")).await;
    s.finish(
        &key("resumed"),
        l,
        Finish::Unknown {
            provider: p("primary"),
            kept: Some(Arc::clone(&resumed)),
        },
    )
    .await
    .unwrap();
    assert!(matches!(
        s.begin(&key("resumed"), F, LEASE, None).await.unwrap(),
        Begin::Resume { kept: Some(k), .. } if k == resumed
    ));
    // New, its attempt recorded at the primary: in flight at the crash, nothing kept.
    hold(&*s, "flying", Some("primary")).await;
    let bytes = s.memory().bytes();

    let crashed = crash_copy(dir.path());
    drop(local);
    let local = open(crashed.path(), &clock).unwrap();
    let s = local.records("payments", limits(Duration::from_secs(3600)), counter());
    assert_eq!(
        s.memory().bytes(),
        bytes,
        "what is kept counts against the bound after a restart too"
    );
    let mut after = listed(&*s).await;
    after.sort_by_key(|(d, ..)| *d);
    let mut expected = vec![
        (
            *key("settled").digest(),
            "backup".to_owned(),
            Some(Arc::clone(&settled)),
        ),
        (
            *key("resumed").digest(),
            "primary".to_owned(),
            Some(Arc::clone(&resumed)),
        ),
        (*key("flying").digest(), "primary".to_owned(), None),
    ];
    expected.sort_by_key(|(d, ..)| *d);
    assert_eq!(after, expected);
    // A resume gives the same request back, and a retry that sends nothing leaves it kept across
    // the next crash too (it is journalled with the record in flight, and with the record after).
    let l = match s.begin(&key("settled"), F, LEASE, None).await.unwrap() {
        Begin::Resume {
            pinned,
            lease,
            kept: Some(k),
        } => {
            assert_eq!(&*pinned, "backup");
            assert_eq!(k, settled);
            assert_eq!(
                k.request
                    .as_ref()
                    .unwrap()
                    .headers()
                    .get("x-shop-request")
                    .unwrap(),
                "r-1"
            );
            lease
        }
        other => panic!("{other:?}"),
    };
    let crashed_in_flight = crash_copy(crashed.path());
    s.finish(&key("settled"), l, Finish::NothingSent)
        .await
        .unwrap();
    let crashed_after = crash_copy(crashed.path());
    drop(local);
    for dir in [crashed_in_flight, crashed_after] {
        let local = open(dir.path(), &clock).unwrap();
        let s = local.records("payments", limits(Duration::from_secs(3600)), counter());
        match s.begin(&key("settled"), F, LEASE, None).await.unwrap() {
            Begin::Resume { pinned, kept, .. } => {
                assert_eq!(&*pinned, "backup");
                assert_eq!(kept, Some(Arc::clone(&settled)));
            }
            other => panic!("{other:?}"),
        }
    }
}

const TTL_DAY: Duration = Duration::from_secs(24 * 3600);

#[tokio::test]
async fn a_journal_written_before_records_kept_requests_still_opens() {
    let dir = TempDir::new().unwrap();
    let clock = ManualClock::default();
    let expires_ms = super::stores::unix_ms(clock.wall()) + 3_600_000;
    // Frames as the format before wrote them, byte by byte: a record settled unknown at the backup,
    // and one in flight at the primary.
    let record = |k: &str, state: &[u8]| {
        let mut p = vec![1u8];
        p.extend_from_slice(&8u32.to_le_bytes());
        p.extend_from_slice(b"payments");
        p.extend_from_slice(key(k).digest());
        p.extend_from_slice(&F);
        p.extend_from_slice(&expires_ms.to_le_bytes());
        p.extend_from_slice(&200u32.to_le_bytes());
        p.extend_from_slice(state);
        let mut frame = (p.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&crc32fast::hash(&p).to_le_bytes());
        frame.extend_from_slice(&p);
        frame
    };
    let mut unknown = vec![2u8];
    unknown.extend_from_slice(&6u32.to_le_bytes());
    unknown.extend_from_slice(b"backup");
    let mut flying = vec![0u8, 1];
    flying.extend_from_slice(&7u32.to_le_bytes());
    flying.extend_from_slice(b"primary");
    flying.push(0);
    flying.extend_from_slice(&5u64.to_le_bytes());
    flying.extend_from_slice(&expires_ms.to_le_bytes());
    let mut file = b"SYSTATE1".to_vec();
    file.extend_from_slice(&record("old-unknown", &unknown));
    file.extend_from_slice(&record("old-flying", &flying));
    std::fs::write(dir.path().join(JOURNAL), &file).unwrap();

    let local = open(dir.path(), &clock).unwrap();
    let s = local.records("payments", limits(Duration::from_secs(3600)), counter());
    let mut found = listed(&*s).await;
    found.sort_by_key(|(d, ..)| *d);
    let mut expected = vec![
        (*key("old-unknown").digest(), "backup".to_owned(), None),
        (*key("old-flying").digest(), "primary".to_owned(), None),
    ];
    expected.sort_by_key(|(d, ..)| *d);
    assert_eq!(found, expected);
    assert_eq!(s.memory().bytes(), 400);
    for (k, at) in [("old-unknown", "backup"), ("old-flying", "primary")] {
        match s.begin(&key(k), F, LEASE, None).await.unwrap() {
            Begin::Resume {
                pinned,
                kept,
                lease,
            } => {
                assert_eq!(&*pinned, at);
                assert!(kept.is_none());
                assert!(lease.0 > 5, "tokens continue above the old journal's");
            }
            other => panic!("{k}: {other:?}"),
        }
    }
}
