//! Idempotency records on Redis: one hash per record, `sy:r:{route:digest}`, each step one script.
//!
//! Fields: `f` fingerprint; `s` state (`i` in flight, `d` done, `u` unknown, `x` released: taken for
//! no record); `a` the provider an attempt was last recorded for (or the pinned one); `r` `1` when
//! the operation resumed an unknown outcome; `t` the claim's token; `l` lease end and `e` expiry
//! (milliseconds of Redis time); `b` the final answer ([`StoredAnswer::to_bytes`]); `ft` the token
//! that settled the record (a retried `finish` finds it and is answered `Ok` again).
//!
//! **Retries.** A claim carries a token the sidecar chose at random (fencing needs only that two
//! claims differ); a `begin` run again with the same token after its first run applied (the reply
//! was lost) finds the record in flight under that token and answers as the first run did, so a
//! claim never blocks itself. `attempt` writes the same provider again; `finish` finds its token in
//! `ft`. No step answers `Ok` before its write is applied: the script's reply is the `Ok`.
//!
//! **Fallback.** Under `primary_only`, while Redis is down, claims go to a local store; its leases
//! carry the top bit (Redis tokens never do), so `attempt` and `finish` go where the claim was made.

use std::sync::Arc;
use std::time::Duration;

use ::redis::Value;

use super::{bad_reply, int, scripts, text, token, unreachable, Op, Redis};
use crate::idempotency::{Begin, Finish, Lease, MemoryStore, RecordKey, Store, StoredAnswer};
use crate::state::StateError;

/// The top bit of a lease given by the fallback store.
const FALLBACK: u64 = 1 << 63;

/// The idempotency records of one route, on Redis, with a local store for `primary_only`.
pub struct RedisRecords<F: Store = MemoryStore> {
    redis: Redis,
    /// `sy:r:{route:` — the start of every key.
    prefix: String,
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
            ttl,
            fallback,
        }
    }

    /// The Redis key of a record.
    pub fn key_of(&self, key: &RecordKey) -> String {
        format!("{}{}}}", self.prefix, hex::encode(key.digest()))
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
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        let first = first.map(|p| p.to_string()).unwrap_or_default();
        let ttl = self.ttl_ms();
        let offset = self.redis.offset_ms();
        let mut conn = self.redis.conn();
        self.redis
            .run(Op::Begin, async move {
                let answer: Value = scripts::BEGIN
                    .key(&rkey)
                    .arg(&fingerprint[..])
                    .arg(token.to_string())
                    .arg(lease_ms)
                    .arg(&first)
                    .arg(ttl)
                    .arg(offset)
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
        ("replay", Some(Value::BulkString(bytes))) => Begin::Replay(Arc::new(
            StoredAnswer::from_bytes(bytes).ok_or_else(|| bad_reply("a stored answer"))?,
        )),
        ("resume", Some(p)) => Begin::Resume {
            kept: None,
            pinned: Arc::from(text(p).ok_or_else(|| bad_reply("a pinned provider"))?),
            lease,
        },
        _ => return Err(bad_reply("a claim")),
    })
}

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
        let (how, value) = match finish {
            Finish::Final(answer) => ("final", answer.to_bytes()),
            Finish::Unknown { provider, .. } => ("unknown", provider.as_bytes().to_vec()),
            Finish::NothingSent => ("nothing", Vec::new()),
        };
        let ttl = self.ttl_ms();
        let offset = self.redis.offset_ms();
        let mut conn = self.redis.conn();
        self.redis
            .run(Op::Finish, async move {
                let answer: Value = scripts::FINISH
                    .key(&rkey)
                    .arg(lease.0.to_string())
                    .arg(how)
                    .arg(value)
                    .arg(ttl)
                    .arg(offset)
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

    async fn unknowns(
        &self,
        _limit: usize,
    ) -> Result<Vec<crate::idempotency::UnknownOp>, StateError> {
        // To do: the index of open records (issue 14's redis part).
        Ok(Vec::new())
    }
}
