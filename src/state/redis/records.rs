//! Idempotency records on Redis: one hash per record, `sy:r:{route:digest}`, each step one script.
//!
//! Fields: `f` fingerprint; `s` state (`i` in flight, `d` done, `u` unknown, `x` released: taken for
//! no record); `a` the provider an attempt was last recorded for (or the pinned one); `r` `1` when
//! the operation resumed an unknown outcome; `t` the claim's token; `l` lease end and `e` expiry
//! (milliseconds of Redis time); `b` the final answer ([`StoredAnswer::to_bytes`]); `ft` the token
//! that settled the record (a retried `finish` finds it and is answered `Ok` again); `k` what a
//! record whose outcome is unknown keeps for its resolution ([`Kept::to_bytes`]) and `n` when the
//! resolver tries it next (its [`Kept::next_ms`]), both carried through a resume and dropped with a
//! final answer.
//!
//! **What may be unknown.** Each route has an index, the sorted set `sy:u:{route}` of the names
//! (hex digests) of its records that may be unknown, kept by the same scripts that change the
//! records: a claim adds its record, scored by its lease end (after it, a holder that recorded an
//! attempt and is gone leaves an unknown outcome); a record settled unknown is scored by `n` (0
//! when it keeps nothing), so the resolver finds those due first at the front; a final answer or a
//! release removes it. [`Store::unknowns`] walks the index from the front in one script, reading
//! each record, and removes the entries whose record has expired as it finds them (nothing else
//! removes those: an index whose route's resolver never lists keeps them until then). It looks at
//! no more than its limit plus [`LOOK_BEYOND`] entries, which bounds how long it holds Redis. A
//! successful payment still costs two round trips.
//!
//! **Redis Cluster.** The claim and finish scripts write a record and its route's index, which lie
//! in different hash slots (a record's slot is its own `{route:digest}`, so that a route's records
//! spread over a cluster); the listing reads records it finds in the index. These scripts would be
//! refused by a Redis Cluster (`CROSSSLOT`): the backend runs on one Redis (with replicas, or
//! Sentinel), as its client does. Record names are not changed to share a slot with their index:
//! a sidecar of the new build would then not find the records an older one wrote, during a rolling
//! upgrade, and could send a key to a second provider.
//!
//! **Retries.** A claim carries a token the sidecar chose at random (fencing needs only that two
//! claims differ); a `begin` run again with the same token after its first run applied (the reply
//! was lost) finds the record in flight under that token and answers as the first run did (with the
//! same kept request), so a claim never blocks itself. `attempt` writes the same provider again;
//! `finish` finds its token in `ft` and changes nothing. No step answers `Ok` before its write is
//! applied: the script's reply is the `Ok`. The listing writes nothing but the removal of index
//! entries of records that are gone.
//!
//! **Fallback.** Under `primary_only`, while Redis is down, claims go to a local store; its leases
//! carry the top bit (Redis tokens never do), so `attempt` and `finish` go where the claim was made.
//! While Redis is down the listing is the local store's.

use std::sync::Arc;
use std::time::Duration;

use ::redis::Value;

use super::{bad_reply, int, scripts, text, token, unreachable, Op, Redis};
use crate::idempotency::{
    Begin, Finish, Kept, Lease, MemoryStore, RecordKey, Store, StoredAnswer, UnknownOp,
};
use crate::state::StateError;

/// The top bit of a lease given by the fallback store.
const FALLBACK: u64 = 1 << 63;

/// The idempotency records of one route, on Redis, with a local store for `primary_only`.
pub struct RedisRecords<F: Store = MemoryStore> {
    redis: Redis,
    /// `sy:r:{route:` — the start of every key.
    prefix: String,
    /// `sy:u:{route}` — the index of the route's records that may be unknown.
    index: String,
    ttl: Duration,
    fallback: Option<Arc<F>>,
}

impl<F: Store> std::fmt::Debug for RedisRecords<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRecords")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl<F: Store> RedisRecords<F> {
    /// The records of route `route`, each kept for `ttl` from its last write; `fallback` takes the
    /// claims made while Redis is down under `primary_only` (none: fail closed).
    pub fn new(redis: Redis, route: &str, ttl: Duration, fallback: Option<Arc<F>>) -> Self {
        Self {
            redis,
            prefix: format!("sy:r:{{{route}:"),
            index: format!("sy:u:{{{route}}}"),
            ttl,
            fallback,
        }
    }

    /// The Redis key of a record.
    pub fn key_of(&self, key: &RecordKey) -> String {
        format!("{}{}}}", self.prefix, hex::encode(key.digest()))
    }

    /// The Redis key of the route's index of records that may be unknown.
    pub fn index_key(&self) -> &str {
        &self.index
    }

    fn fallback_now(&self) -> Option<&Arc<F>> {
        self.fallback.as_ref().filter(|_| self.redis.on_fallback())
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// The claim step with a token of the caller's: what `begin` runs, and what a retry of the
    /// same claim runs again.
    pub(crate) async fn begin_with(
        &self,
        key: &RecordKey,
        fingerprint: [u8; 32],
        lease: Duration,
        first: Option<&Arc<str>>,
        token: u64,
    ) -> Result<Begin, StateError> {
        let rkey = self.key_of(key);
        let name = hex::encode(key.digest());
        let index = self.index.clone();
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        let first = first.map(|p| p.to_string()).unwrap_or_default();
        let ttl = self.ttl_ms();
        let offset = self.redis.offset_ms();
        let mut conn = self.redis.conn();
        self.redis
            .run(Op::Begin, async move {
                let answer: Value = scripts::BEGIN
                    .key(&rkey)
                    .key(&index)
                    .arg(&fingerprint[..])
                    .arg(token.to_string())
                    .arg(lease_ms)
                    .arg(&first)
                    .arg(ttl)
                    .arg(offset)
                    .arg(&name)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| unreachable(&e))?;
                parse_begin(answer, token)
            })
            .await
    }

    /// A claim on the local store, its lease marked as the fallback's.
    async fn begin_local(
        fallback: &F,
        key: &RecordKey,
        fingerprint: [u8; 32],
        lease: Duration,
        first: Option<&Arc<str>>,
    ) -> Result<Begin, StateError> {
        Ok(
            match fallback.begin(key, fingerprint, lease, first).await? {
                Begin::New(l) => Begin::New(Lease(l.0 | FALLBACK)),
                Begin::Resume {
                    pinned,
                    lease,
                    kept,
                } => Begin::Resume {
                    kept,
                    pinned,
                    lease: Lease(lease.0 | FALLBACK),
                },
                other => other,
            },
        )
    }
}

fn parse_begin(answer: Value, token: u64) -> Result<Begin, StateError> {
    let Value::Array(items) = answer else {
        return Err(bad_reply("a claim"));
    };
    let word = items.first().and_then(text).unwrap_or_default();
    let lease = Lease(token);
    Ok(match (word.as_str(), items.get(1)) {
        ("new", _) => Begin::New(lease),
        ("inflight", _) => Begin::InFlight,
        ("mismatch", _) => Begin::Mismatch,
        ("replay", Some(Value::BulkString(bytes))) => Begin::Replay(
            StoredAnswer::from_bytes(bytes).ok_or_else(|| bad_reply("a stored answer"))?,
        ),
        ("resume", Some(p)) => Begin::Resume {
            kept: items.get(2).and_then(kept_of),
            pinned: Arc::from(text(p).ok_or_else(|| bad_reply("a pinned provider"))?),
            lease,
        },
        _ => return Err(bad_reply("a claim")),
    })
}

/// What a record keeps, as a script answers it (nil: nothing). Bytes that are not a [`Kept`] (a
/// later sidecar's format) are left out with a warning: the record still resumes at its pinned
/// provider, and the shop's retry or a webhook resolves it.
fn kept_of(v: &Value) -> Option<Arc<Kept>> {
    let Value::BulkString(bytes) = v else {
        return None;
    };
    let kept = Kept::from_bytes(bytes).map(Arc::new);
    if kept.is_none() {
        tracing::warn!("a record on Redis keeps a request this sidecar cannot read; it is resolved by the shop's retry or a webhook only");
    }
    kept
}

/// The records an `UNKNOWNS` run listed: name, provider and what it keeps, three items each.
fn parse_unknowns(answer: Value) -> Result<Vec<UnknownOp>, StateError> {
    let Value::Array(items) = answer else {
        return Err(bad_reply("a listing of unknown outcomes"));
    };
    let mut out = Vec::with_capacity(items.len() / 3);
    for item in items.chunks(3) {
        let [name, pinned, kept] = item else {
            return Err(bad_reply("a listing of unknown outcomes"));
        };
        let mut digest = [0u8; 16];
        text(name)
            .and_then(|n| hex::decode_to_slice(n, &mut digest).ok())
            .ok_or_else(|| bad_reply("a record's name"))?;
        out.push(UnknownOp {
            digest,
            pinned: Arc::from(text(pinned).ok_or_else(|| bad_reply("a pinned provider"))?),
            kept: kept_of(kept),
        });
    }
    Ok(out)
}

/// How many index entries one listing looks at beyond its limit (entries in flight whose lease
/// still runs are looked at and passed over): bounds the time the script holds Redis.
const LOOK_BEYOND: usize = 2_000;

fn fenced_or_ok(answer: Value, what: &str) -> Result<(), StateError> {
    match int(&answer) {
        Some(1) => Ok(()),
        Some(0) => Err(StateError::Fenced),
        _ => Err(bad_reply(what)),
    }
}

impl<F: Store> Store for RedisRecords<F> {
    async fn begin(
        &self,
        key: &RecordKey,
        fingerprint: [u8; 32],
        lease: Duration,
        first: Option<&Arc<str>>,
    ) -> Result<Begin, StateError> {
        if let Some(f) = self.fallback_now() {
            return Self::begin_local(f, key, fingerprint, lease, first).await;
        }
        match self
            .begin_with(key, fingerprint, lease, first, token())
            .await
        {
            Err(e @ (StateError::Timeout(_) | StateError::Unreachable(_))) => {
                match self.fallback_now() {
                    Some(f) => Self::begin_local(f, key, fingerprint, lease, first).await,
                    None => Err(e),
                }
            }
            other => other,
        }
    }

    async fn attempt(
        &self,
        key: &RecordKey,
        lease: Lease,
        provider: &Arc<str>,
    ) -> Result<(), StateError> {
        if lease.0 & FALLBACK != 0 {
            return match &self.fallback {
                Some(f) => f.attempt(key, Lease(lease.0 & !FALLBACK), provider).await,
                None => Err(StateError::Fenced),
            };
        }
        let rkey = self.key_of(key);
        let provider = provider.to_string();
        let offset = self.redis.offset_ms();
        let mut conn = self.redis.conn();
        self.redis
            .run(Op::Attempt, async move {
                let answer: Value = scripts::ATTEMPT
                    .key(&rkey)
                    .arg(lease.0.to_string())
                    .arg(&provider)
                    .arg(offset)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| unreachable(&e))?;
                fenced_or_ok(answer, "an attempt")
            })
            .await
    }

    async fn finish(
        &self,
        key: &RecordKey,
        lease: Lease,
        finish: Finish,
    ) -> Result<(), StateError> {
        if lease.0 & FALLBACK != 0 {
            return match &self.fallback {
                Some(f) => f.finish(key, Lease(lease.0 & !FALLBACK), finish).await,
                None => Err(StateError::Fenced),
            };
        }
        let rkey = self.key_of(key);
        let name = hex::encode(key.digest());
        let index = self.index.clone();
        let (how, value, kept) = match finish {
            Finish::Final(answer) => ("final", answer.to_bytes(), None),
            Finish::Unknown { provider, kept } => ("unknown", provider.as_bytes().to_vec(), kept),
            Finish::NothingSent => ("nothing", Vec::new(), None),
        };
        let (kept, next_ms) = match &kept {
            Some(k) => (k.to_bytes(), k.next_ms.to_string()),
            None => (Vec::new(), String::new()),
        };
        let ttl = self.ttl_ms();
        let offset = self.redis.offset_ms();
        let mut conn = self.redis.conn();
        self.redis
            .run(Op::Finish, async move {
                let answer: Value = scripts::FINISH
                    .key(&rkey)
                    .key(&index)
                    .arg(lease.0.to_string())
                    .arg(how)
                    .arg(value)
                    .arg(ttl)
                    .arg(offset)
                    .arg(kept)
                    .arg(next_ms)
                    .arg(&name)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| unreachable(&e))?;
                fenced_or_ok(answer, "a finish")
            })
            .await
    }

    fn degraded(&self) -> bool {
        self.redis.degraded()
    }

    async fn unknowns(&self, limit: usize) -> Result<Vec<UnknownOp>, StateError> {
        if let Some(f) = self.fallback_now() {
            return f.unknowns(limit).await;
        }
        if limit == 0 {
            return Ok(Vec::new());
        }
        let index = self.index.clone();
        let prefix = self.prefix.clone();
        let offset = self.redis.offset_ms();
        let mut conn = self.redis.conn();
        let mut listed = self
            .redis
            .run(Op::Unknowns, async move {
                let answer: Value = scripts::UNKNOWNS
                    .key(&index)
                    .arg(&prefix)
                    .arg(limit)
                    .arg(offset)
                    .arg(limit.saturating_add(LOOK_BEYOND))
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| unreachable(&e))?;
                parse_unknowns(answer)
            })
            .await?;
        // The index is in score order; a dead holder's record is scored by its lease end, and is
        // listed, as every backend lists it, by what it keeps (first when nothing).
        listed.sort_by_key(|u| u.kept.as_ref().map_or(0, |k| k.next_ms));
        Ok(listed)
    }
}
