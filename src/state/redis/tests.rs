//! The Redis backend against real redis-servers: start-up checks, round trips, and the faults
//! (pause, kill, FLUSHALL, a reply lost after the command ran). In each fault, the asserted outcome
//! is that no call answers `Ok` without its write applied, and that no key is claimed twice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, StatusCode};

use super::testing::{Proxy, RedisServer};
use super::*;
use crate::idempotency::{Begin, Finish, Limits, MemoryStore, RecordKey, Store, StoredAnswer};

const F: [u8; 32] = [7; 32];
const LEASE: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(3600);

fn key(k: &str) -> RecordKey {
    RecordKey::new("tenant".to_owned(), k.to_owned())
}

fn primary() -> Arc<str> {
    Arc::from("primary")
}

fn answer() -> Finish {
    Finish::Final(StoredAnswer::new(
        StatusCode::OK,
        &HeaderMap::new(),
        b"{\"id\":\"pi_1\"}",
        primary(),
    ))
}

fn options(timeout: Duration) -> Options {
    let mut o = Options::new(timeout);
    o.check_every = Duration::from_millis(50);
    o
}

async fn connect(url: &str, timeout: Duration) -> Redis {
    Redis::connect_with(url, options(timeout)).await.unwrap()
}

fn records(redis: &Redis) -> RedisRecords {
    RedisRecords::new(redis.clone(), "pay", TTL, None)
}

async fn new_lease(s: &RedisRecords, k: &RecordKey) -> crate::idempotency::Lease {
    match s.begin(k, F, LEASE, Some(&primary())).await.unwrap() {
        Begin::New(l) => l,
        other => panic!("{other:?}"),
    }
}

/// Polls `cond` for up to 5 s.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn start_up_refuses_a_redis_that_may_evict_records() {
    let lru = RedisServer::with_policy("volatile-lru");
    let e = Redis::connect(&lru.url(), Duration::from_secs(1), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ConnectError::Eviction(p) if p == "volatile-lru"),
        "{e}"
    );
    assert!(e.to_string().contains("noeviction"), "{e}");
    let ok = RedisServer::start();
    Redis::connect(&ok.url(), Duration::from_secs(1), None)
        .await
        .unwrap();
}

#[tokio::test]
async fn start_up_fails_clearly_when_redis_is_not_there() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.kill();
    let e = Redis::connect(&url, Duration::from_millis(100), None)
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectError::Unreachable(_)), "{e}");
}

#[tokio::test]
async fn a_successful_payment_is_two_redis_commands() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.socket()).await;
    let redis = connect(&proxy.url(), Duration::from_secs(2)).await;
    let s = records(&redis);
    // The first use of each script loads it (NOSCRIPT, then EVAL); count a warm sidecar.
    let warm = new_lease(&s, &key("warm")).await;
    s.finish(&key("warm"), warm, answer()).await.unwrap();
    let before = proxy.commands();
    let lease = new_lease(&s, &key("k")).await;
    s.finish(&key("k"), lease, answer()).await.unwrap();
    assert_eq!(
        proxy.commands() - before,
        2,
        "begin with its first provider, then finish"
    );
    assert!(matches!(
        s.begin(&key("k"), F, LEASE, Some(&primary()))
            .await
            .unwrap(),
        Begin::Replay(_)
    ));
}

#[tokio::test]
async fn a_record_is_one_hash_in_the_route_s_slot_freed_by_redis_after_its_ttl() {
    let server = RedisServer::start();
    let redis = connect(&server.url(), Duration::from_secs(2)).await;
    let s = records(&redis);
    let k = key("k");
    let lease = new_lease(&s, &k).await;
    let name = s.key_of(&k);
    assert!(
        name.starts_with("sy:r:{pay:") && name.ends_with('}'),
        "{name}"
    );
    let pttl: i64 = server.cmd(::redis::cmd("PTTL").arg(&name)).await;
    assert!(pttl > 3_500_000 && pttl <= 3_600_000, "{pttl}");
    s.finish(&k, lease, Finish::NothingSent).await.unwrap();
    let pttl: i64 = server.cmd(::redis::cmd("PTTL").arg(&name)).await;
    assert!(
        pttl > 0 && pttl <= 60_000,
        "a released record is a short tombstone: {pttl}"
    );
}

#[tokio::test]
async fn a_step_run_again_after_it_applied_is_answered_alike_and_claims_nothing_twice() {
    let server = RedisServer::start();
    let redis = connect(&server.url(), Duration::from_secs(2)).await;
    let s = records(&redis);
    let k = key("k");
    let first = s
        .begin_with(&k, F, LEASE, Some(&primary()), 42)
        .await
        .unwrap();
    let again = s
        .begin_with(&k, F, LEASE, Some(&primary()), 42)
        .await
        .unwrap();
    assert!(
        matches!((&first, &again), (Begin::New(a), Begin::New(b)) if a == b),
        "{again:?}"
    );
    assert!(
        matches!(
            s.begin_with(&k, F, LEASE, Some(&primary()), 43)
                .await
                .unwrap(),
            Begin::InFlight
        ),
        "another claim still gets 409"
    );
    let lease = crate::idempotency::Lease(42);
    s.attempt(&k, lease, &Arc::from("backup")).await.unwrap();
    s.attempt(&k, lease, &Arc::from("backup")).await.unwrap();
    s.finish(&k, lease, Finish::unknown(Arc::from("backup")))
        .await
        .unwrap();
    s.finish(&k, lease, Finish::unknown(Arc::from("backup")))
        .await
        .expect("a retried finish that applied is Ok");
    // A resumed claim run again answers Resume again, at the same provider.
    let r1 = s
        .begin_with(&k, F, LEASE, Some(&primary()), 44)
        .await
        .unwrap();
    let r2 = s
        .begin_with(&k, F, LEASE, Some(&primary()), 44)
        .await
        .unwrap();
    for r in [r1, r2] {
        assert!(
            matches!(&r, Begin::Resume { pinned, lease, .. } if &**pinned == "backup" && lease.0 == 44),
            "{r:?}"
        );
    }
}

#[tokio::test]
async fn a_reply_lost_after_the_command_ran_is_an_error_and_the_retry_is_safe() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.socket()).await;
    let redis = connect(&proxy.url(), Duration::from_secs(2)).await;
    let s = records(&redis);
    let k = key("k");
    // Warm the scripts so that the cut reply is the step's own.
    let warm = new_lease(&s, &key("warm")).await;
    s.finish(&key("warm"), warm, answer()).await.unwrap();

    proxy.cut_next_reply();
    let lost = s.begin_with(&k, F, LEASE, Some(&primary()), 7).await;
    assert!(matches!(lost, Err(StateError::Unreachable(_))), "{lost:?}");
    let stored: std::collections::HashMap<String, Vec<u8>> =
        server.cmd(::redis::cmd("HGETALL").arg(s.key_of(&k))).await;
    assert_eq!(
        stored.get("s").map(|v| &v[..]),
        Some(&b"i"[..]),
        "the claim ran"
    );
    // The caller got no Ok, so it sent nothing; its retry of the same claim is answered New again,
    // and any other request still gets 409.
    let retry = s
        .begin_with(&k, F, LEASE, Some(&primary()), 7)
        .await
        .unwrap();
    assert!(matches!(retry, Begin::New(l) if l.0 == 7), "{retry:?}");
    assert!(matches!(
        s.begin(&k, F, LEASE, Some(&primary())).await.unwrap(),
        Begin::InFlight
    ));

    let lease = crate::idempotency::Lease(7);
    proxy.cut_next_reply();
    let lost = s.finish(&k, lease, answer()).await;
    assert!(lost.is_err(), "{lost:?}");
    s.finish(&k, lease, answer())
        .await
        .expect("the retried finish is Ok: it had applied");
    assert!(matches!(
        s.begin(&k, F, LEASE, Some(&primary())).await.unwrap(),
        Begin::Replay(_)
    ));
}

#[tokio::test]
async fn a_paused_redis_times_out_and_leaves_nothing_half_done() {
    let server = RedisServer::start();
    let timeout = Duration::from_millis(200);
    let redis = connect(&server.url(), timeout).await;
    let s = records(&redis);
    let k = key("k");
    // Warm the script.
    s.begin(&key("warm"), F, LEASE, None).await.unwrap();
    server.pause();
    let started = Instant::now();
    let r = s.begin(&k, F, LEASE, Some(&primary())).await;
    let took = started.elapsed();
    server.resume();
    assert!(
        matches!(r, Err(StateError::Timeout(t)) if t == timeout),
        "{r:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "bounded by our timeout: {took:?}"
    );
    assert!(!redis.up());
    // The claim was possibly applied: when Redis goes on it runs whole or not at all, and the key
    // is either free or held in flight, recorded as going to the primary (never half a record).
    let stored: std::collections::HashMap<String, String> =
        server.cmd(::redis::cmd("HGETALL").arg(s.key_of(&k))).await;
    if !stored.is_empty() {
        for field in ["f", "s", "a", "r", "t", "l", "e"] {
            assert!(stored.contains_key(field), "{field} missing: {stored:?}");
        }
        assert_eq!(stored["s"], "i");
        assert_eq!(stored["a"], "primary");
        assert!(matches!(
            s.begin(&k, F, LEASE, Some(&primary())).await.unwrap(),
            Begin::InFlight
        ));
        // After the lease, the key goes to the recorded provider only.
        redis.advance(LEASE + Duration::from_secs(1));
        assert!(matches!(
            s.begin(&k, F, LEASE, Some(&Arc::from("backup"))).await.unwrap(),
            Begin::Resume { pinned, .. } if &*pinned == "primary"
        ));
    }
    assert!(redis.up(), "up again");
}

#[tokio::test]
async fn a_killed_redis_is_unreachable_then_used_again_after_its_restart_as_one_that_forgot() {
    let mut server = RedisServer::start();
    let redis = connect(&server.url(), Duration::from_millis(300)).await;
    let s = records(&redis);
    let lease = new_lease(&s, &key("k")).await;
    s.finish(&key("k"), lease, Finish::unknown(Arc::from("backup")))
        .await
        .unwrap();
    server.kill();
    let r = s.begin(&key("k"), F, LEASE, Some(&primary())).await;
    assert!(
        matches!(r, Err(StateError::Unreachable(_) | StateError::Timeout(_))),
        "{r:?}"
    );
    assert!(!redis.degraded(), "fail_closed: failing, not degraded");
    server.restart();
    // The restarted Redis is empty: its epoch is new, and keyed payments are held to the primary.
    let mut answered = None;
    for _ in 0..100 {
        if let Ok(b) = s.begin(&key("k"), F, LEASE, Some(&primary())).await {
            answered = Some(b);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered.is_some(), "reconnected");
    assert!(
        redis.degraded(),
        "the epoch changed before the first call was served"
    );
    assert!(s.degraded());
    let left = redis.forgot().unwrap();
    assert!(left > Duration::from_secs(23 * 3600), "{left:?}");
}

#[tokio::test]
async fn a_flushall_is_noticed_and_holds_keyed_payments_to_the_primary() {
    let server = RedisServer::start();
    let redis = connect(&server.url(), Duration::from_secs(1)).await;
    let s = records(&redis);
    assert!(!redis.degraded());
    let lease = new_lease(&s, &key("k")).await;
    s.finish(&key("k"), lease, Finish::unknown(Arc::from("backup")))
        .await
        .unwrap();
    let _: () = server.cmd(&::redis::cmd("FLUSHALL")).await;
    assert!(
        eventually(|| s.degraded()).await,
        "the periodic check sees the new epoch"
    );
    // The record is gone: a claim is New, but the store says degraded, so the attempt loop keeps
    // the key on its priority-0 provider and never crosses.
    assert!(matches!(
        s.begin(&key("k"), F, LEASE, Some(&primary()))
            .await
            .unwrap(),
        Begin::New(_)
    ));
    assert!(s.degraded());
}

#[tokio::test]
async fn a_sidecar_restarted_after_redis_forgot_knows_it_from_its_epoch_file() {
    let mut server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("redis.epoch");
    let first = Redis::connect(&server.url(), Duration::from_secs(1), Some(&file))
        .await
        .unwrap();
    assert!(!first.degraded());
    drop(first);
    // A restart without persistence while the sidecar was down.
    server.restart();
    let second = Redis::connect(&server.url(), Duration::from_secs(1), Some(&file))
        .await
        .unwrap();
    assert!(second.degraded(), "noticed at start-up");
    drop(second);
    // And the hold survives the sidecar's own restart.
    let third = Redis::connect(&server.url(), Duration::from_secs(1), Some(&file))
        .await
        .unwrap();
    assert!(third.degraded());
}

#[tokio::test]
async fn primary_only_keeps_records_locally_while_redis_is_down_and_says_degraded() {
    let mut server = RedisServer::start();
    let mut o = options(Duration::from_millis(200));
    o.on_unavailable = OnUnavailable::PrimaryOnly;
    let redis = Redis::connect_with(&server.url(), o).await.unwrap();
    let local = Arc::new(MemoryStore::new(Limits {
        ttl: TTL,
        max_entries: 100,
        max_bytes: 1 << 20,
    }));
    let s = RedisRecords::new(redis.clone(), "pay", TTL, Some(Arc::clone(&local)));
    new_lease(&s, &key("before")).await;
    assert!(local.is_empty());
    server.kill();
    let k = key("k");
    let lease = new_lease(&s, &k).await;
    assert!(redis.degraded() && s.degraded());
    assert_eq!(local.len(), 1, "claimed in the local store");
    assert!(matches!(
        s.begin(&k, F, LEASE, Some(&primary())).await.unwrap(),
        Begin::InFlight
    ));
    s.attempt(&k, lease, &primary()).await.unwrap();
    s.finish(&k, lease, answer()).await.unwrap();
    assert!(matches!(
        s.begin(&k, F, LEASE, Some(&primary())).await.unwrap(),
        Begin::Replay(_)
    ));
}

#[tokio::test]
async fn fail_closed_fails_every_call_while_redis_is_down() {
    let mut server = RedisServer::start();
    let redis = connect(&server.url(), Duration::from_millis(200)).await;
    let s = records(&redis);
    let lease = new_lease(&s, &key("k")).await;
    server.kill();
    assert!(s
        .begin(&key("other"), F, LEASE, Some(&primary()))
        .await
        .is_err());
    assert!(s.attempt(&key("k"), lease, &primary()).await.is_err());
    assert!(s.finish(&key("k"), lease, answer()).await.is_err());
    let pins = RedisPins::new(redis.clone(), TTL);
    assert!(
        crate::idempotency::PinStore::remember(&pins, "pi_12345678", &primary())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn sidecars_share_one_quota_on_redis_time() {
    let server = RedisServer::start();
    let mut sidecars = Vec::new();
    for _ in 0..3 {
        sidecars.push(RedisQuota::new(
            connect(&server.url(), Duration::from_secs(2)).await,
        ));
    }
    // 1 a second with a burst of 5: whatever the number of sidecars, 5 go now, and the next one
    // is told to wait up to a second.
    let mut taken = 0;
    let mut waits = Vec::new();
    for round in 0..4 {
        for q in &sidecars {
            match q.acquire("stripe", 1, 5).await.unwrap() {
                Ok(()) => taken += 1,
                Err(wait) => waits.push((round, wait)),
            }
        }
    }
    // (6: a slot freed if this machine stalled for a second; three limits would have given 12.)
    assert!((5..=6).contains(&taken), "one limit for the fleet: {taken}");
    assert_eq!(waits.len(), 12 - taken);
    for (_, wait) in &waits {
        assert!(
            *wait > Duration::ZERO && *wait <= Duration::from_secs(1),
            "{wait:?}"
        );
    }
    // Another provider has its own limit.
    assert!(sidecars[0].acquire("adyen", 1, 5).await.unwrap().is_ok());
    // Once a slot's time has come, it is free again for any sidecar.
    for q in &sidecars {
        q.redis.advance(Duration::from_secs(1));
    }
    assert!(sidecars[2].acquire("stripe", 1, 5).await.unwrap().is_ok());
}

#[tokio::test]
async fn calls_are_counted_by_op_and_result() {
    let server = RedisServer::start();
    let registry = prometheus::Registry::new();
    let metrics = StateMetrics {
        operations: prometheus::IntCounterVec::new(
            prometheus::Opts::new("ops", "ops"),
            &["backend", "op", "result"],
        )
        .unwrap(),
        duration: prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new("d", "d"),
            &["backend", "op"],
        )
        .unwrap(),
        up: prometheus::IntGaugeVec::new(prometheus::Opts::new("up", "up"), &["backend"]).unwrap(),
        epoch_changes: prometheus::IntCounterVec::new(
            prometheus::Opts::new("epoch", "epoch"),
            &["backend"],
        )
        .unwrap(),
        degraded: prometheus::IntGauge::new("degraded", "degraded").unwrap(),
    };
    registry
        .register(Box::new(metrics.operations.clone()))
        .unwrap();
    let mut o = options(Duration::from_secs(1));
    o.metrics = Some(metrics.clone());
    let redis = Redis::connect_with(&server.url(), o).await.unwrap();
    let s = records(&redis);
    let lease = new_lease(&s, &key("k")).await;
    s.finish(&key("k"), lease, answer()).await.unwrap();
    let stale = s
        .finish(&key("k"), crate::idempotency::Lease(1), answer())
        .await;
    assert!(matches!(stale, Err(StateError::Fenced)));
    let count = |op: &str, result: &str| {
        metrics
            .operations
            .with_label_values(&["redis", op, result])
            .get()
    };
    assert_eq!(count("begin", "ok"), 1);
    assert_eq!(count("finish", "ok"), 1);
    assert_eq!(count("finish", "fenced"), 1);
    assert_eq!(metrics.up.with_label_values(&["redis"]).get(), 1);
    let _: () = server.cmd(&::redis::cmd("FLUSHALL")).await;
    assert!(
        eventually(|| metrics.epoch_changes.with_label_values(&["redis"]).get() == 1).await,
        "the forget is counted"
    );
    assert!(eventually(|| metrics.degraded.get() == 1).await);
}

/// What a record keeps for its resolution, for key `k`, due at `next_ms`.
fn kept(k: &str, next_ms: u64) -> Arc<crate::idempotency::Kept> {
    let request = crate::idempotency::KeptRequest::new(
        "tenant",
        k,
        &http::Method::POST,
        "/v1/payments",
        &HeaderMap::new(),
        &[],
        &bytes::Bytes::from_static(b"{\"amount\":1}"),
    )
    .unwrap();
    let mut kept = crate::idempotency::Kept::first(next_ms - 1_000, Ok(Arc::new(request)));
    kept.next_ms = next_ms;
    Arc::new(kept)
}

fn unknown_keeping(kept: &Arc<crate::idempotency::Kept>) -> Finish {
    Finish::Unknown {
        provider: primary(),
        kept: Some(Arc::clone(kept)),
    }
}

async fn index_len(server: &RedisServer, s: &RedisRecords) -> i64 {
    server.cmd(::redis::cmd("ZCARD").arg(s.index_key())).await
}

async fn resume(s: &RedisRecords, k: &RecordKey) -> (Lease, Option<Arc<crate::idempotency::Kept>>) {
    match s.begin(k, F, LEASE, Some(&primary())).await.unwrap() {
        Begin::Resume { lease, kept, .. } => (lease, kept),
        other => panic!("{other:?}"),
    }
}

use crate::idempotency::Lease;

#[tokio::test]
async fn the_index_of_what_may_be_unknown_does_not_grow_with_final_answers() {
    let server = RedisServer::start();
    let redis = connect(&server.url(), Duration::from_secs(2)).await;
    let s = records(&redis);
    assert_eq!(s.index_key(), "sy:u:{pay}");
    for i in 0..60 {
        let k = key(&format!("k{i}"));
        let lease = new_lease(&s, &k).await;
        assert_eq!(
            index_len(&server, &s).await,
            1,
            "a record in flight may become unknown"
        );
        match i % 3 {
            0 => s.finish(&k, lease, answer()).await.unwrap(),
            1 => s.finish(&k, lease, Finish::NothingSent).await.unwrap(),
            _ => {
                // Unknown first, then resolved by a final answer.
                s.finish(&k, lease, unknown_keeping(&kept("k", 5_000)))
                    .await
                    .unwrap();
                assert_eq!(index_len(&server, &s).await, 1);
                let (lease, _) = resume(&s, &k).await;
                s.finish(&k, lease, answer()).await.unwrap();
            }
        }
    }
    assert_eq!(index_len(&server, &s).await, 0);
    let exists: i64 = server.cmd(::redis::cmd("EXISTS").arg(s.index_key())).await;
    assert_eq!(exists, 0, "an empty index takes no memory");
    assert!(s.unknowns(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_kept_request_lives_in_its_record_and_leaves_with_the_final_answer() {
    let server = RedisServer::start();
    let redis = connect(&server.url(), Duration::from_secs(2)).await;
    let s = records(&redis);
    let k = key("k");
    let name = hex::encode(k.digest());
    let first = kept("k", 7_000);
    let lease = new_lease(&s, &k).await;
    s.finish(&k, lease, unknown_keeping(&first)).await.unwrap();
    let field = |f: &'static str| {
        let server = &server;
        let rkey = s.key_of(&k);
        async move {
            let v: Option<Vec<u8>> = server.cmd(::redis::cmd("HGET").arg(rkey).arg(f)).await;
            v
        }
    };
    let score = || async {
        let v: Option<f64> = server
            .cmd(::redis::cmd("ZSCORE").arg(s.index_key()).arg(&name))
            .await;
        v
    };
    assert_eq!(field("k").await, Some(first.to_bytes()));
    assert_eq!(
        score().await,
        Some(7_000.0),
        "scored by when the resolver tries next"
    );
    // Resumed: in flight with it; an unknown end without a new one keeps it, and its score.
    let (lease, got) = resume(&s, &k).await;
    assert_eq!(got, Some(Arc::clone(&first)));
    assert_eq!(field("k").await, Some(first.to_bytes()));
    s.finish(&k, lease, Finish::unknown(primary()))
        .await
        .unwrap();
    assert_eq!(field("k").await, Some(first.to_bytes()));
    assert_eq!(score().await, Some(7_000.0));
    // A resolver's try that gave up is kept too, scored last.
    let (lease, _) = resume(&s, &k).await;
    let mut gave_up = (*first).clone();
    gave_up.next_ms = crate::idempotency::GAVE_UP;
    let gave_up = Arc::new(gave_up);
    s.finish(&k, lease, unknown_keeping(&gave_up))
        .await
        .unwrap();
    assert!(score().await.is_some_and(|v| v > 1e19));
    assert_eq!(resume(&s, &k).await.1, Some(Arc::clone(&gave_up)));
    // In flight, it is scored by its lease end: after it, its holder may have died.
    assert!(score().await.is_some_and(|v| v > 1e12 && v < 1e19));
    // The held record is listed only once its holder's lease runs out.
    assert!(s.unknowns(10).await.unwrap().is_empty());
    redis.advance(LEASE + Duration::from_secs(1));
    let listed = s.unknowns(10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].kept, Some(Arc::clone(&gave_up)));
    // A final answer drops it, in the record and in the index.
    let (lease, _) = resume(&s, &k).await;
    s.finish(&k, lease, answer()).await.unwrap();
    assert_eq!(field("k").await, None);
    assert_eq!(score().await, None);
}

#[tokio::test]
async fn the_listing_drops_index_entries_whose_record_is_gone() {
    let server = RedisServer::start();
    let redis = connect(&server.url(), Duration::from_secs(2)).await;
    let s = records(&redis);
    for k in ["expires", "deleted", "stays"] {
        let lease = new_lease(&s, &key(k)).await;
        s.finish(&key(k), lease, unknown_keeping(&kept(k, 5_000)))
            .await
            .unwrap();
    }
    // Redis freed one record's memory (its PEXPIRE); the others are listed.
    let _: i64 = server
        .cmd(::redis::cmd("DEL").arg(s.key_of(&key("deleted"))))
        .await;
    assert_eq!(s.unknowns(10).await.unwrap().len(), 2);
    assert_eq!(
        index_len(&server, &s).await,
        2,
        "the freed record's entry is gone"
    );
    // Past the ttl, "expires" is no record any more; "stays" is settled again before that.
    redis.advance(TTL - Duration::from_secs(10));
    let (lease, _) = resume(&s, &key("stays")).await;
    s.finish(&key("stays"), lease, Finish::NothingSent)
        .await
        .unwrap();
    redis.advance(Duration::from_secs(20));
    let listed = s.unknowns(10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].digest, *key("stays").digest());
    assert_eq!(index_len(&server, &s).await, 1);
    assert_eq!(s.unknowns(0).await.unwrap().len(), 0);
}

#[tokio::test]
async fn steps_run_again_after_they_applied_keep_the_same_request() {
    let server = RedisServer::start();
    let redis = connect(&server.url(), Duration::from_secs(2)).await;
    let s = records(&redis);
    let k = key("k");
    let first = kept("k", 5_000);
    let lease = new_lease(&s, &k).await;
    s.finish(&k, lease, unknown_keeping(&first)).await.unwrap();
    // A resume whose reply was lost, run again: the same request both times.
    for _ in 0..2 {
        match s
            .begin_with(&k, F, LEASE, Some(&primary()), 61)
            .await
            .unwrap()
        {
            Begin::Resume { lease, kept, .. } => {
                assert_eq!(lease.0, 61);
                assert_eq!(kept, Some(Arc::clone(&first)));
            }
            other => panic!("{other:?}"),
        }
    }
    // A finish run again after it applied changes nothing, whatever it carries.
    let tried = Arc::new(first.tried(6_000, Duration::from_secs(86_400)));
    s.finish(&k, Lease(61), unknown_keeping(&tried))
        .await
        .unwrap();
    s.finish(&k, Lease(61), unknown_keeping(&first))
        .await
        .expect("a retried finish that applied is Ok");
    assert_eq!(resume(&s, &k).await.1, Some(tried));
}

#[tokio::test]
async fn primary_only_lists_what_its_fallback_holds_while_redis_is_down() {
    let mut server = RedisServer::start();
    let mut o = options(Duration::from_millis(200));
    o.on_unavailable = OnUnavailable::PrimaryOnly;
    let redis = Redis::connect_with(&server.url(), o).await.unwrap();
    let local = Arc::new(MemoryStore::new(Limits {
        ttl: TTL,
        max_entries: 100,
        max_bytes: 1 << 20,
    }));
    let s = RedisRecords::new(redis.clone(), "pay", TTL, Some(Arc::clone(&local)));
    server.kill();
    let k = key("k");
    let first = kept("k", 5_000);
    let lease = new_lease(&s, &k).await;
    s.finish(&k, lease, unknown_keeping(&first)).await.unwrap();
    let listed = s.unknowns(10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].digest, *k.digest());
    assert_eq!(listed[0].kept, Some(Arc::clone(&first)));
    assert_eq!(resume(&s, &k).await.1, Some(first));
}
