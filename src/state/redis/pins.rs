//! Payment-object pins on Redis: `sy:p:{digest of the id}` → the provider and when the pin ends.
//!
//! A lookup of all the ids a request names is one round trip: Redis's `TIME` and a `GET` per id in
//! one pipeline (one key per command, so a Redis Cluster client can split it by slot).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ::redis::Value;

use super::{bad_reply, digest, int, scripts, text, unreachable, Op, Redis};
use crate::idempotency::{Candidates, PinStore};
use crate::state::StateError;

/// Object id → provider, shared by the fleet.
#[derive(Debug, Clone)]
pub struct RedisPins {
    redis: Redis,
    ttl: Duration,
}

impl RedisPins {
    /// Pins kept for `ttl`.
    pub fn new(redis: Redis, ttl: Duration) -> Self {
        Self { redis, ttl }
    }

    fn key(id: &[u8]) -> String {
        format!("sy:p:{{{}}}", digest(id))
    }
}

impl PinStore for RedisPins {
    fn remember(
        &self,
        id: &str,
        provider: &Arc<str>,
    ) -> impl Future<Output = Result<(), StateError>> + Send {
        let key = Self::key(id.as_bytes());
        let provider = provider.to_string();
        let ttl = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let offset = self.redis.offset_ms();
        let mut conn = self.redis.conn();
        async move {
            self.redis
                .run(Op::PinRemember, async move {
                    let answer: Value = scripts::PIN
                        .key(&key)
                        .arg(&provider)
                        .arg(ttl)
                        .arg(offset)
                        .invoke_async(&mut conn)
                        .await
                        .map_err(|e| unreachable(&e))?;
                    match int(&answer) {
                        Some(1) => Ok(()),
                        _ => Err(bad_reply("a pin")),
                    }
                })
                .await
        }
    }

    fn find_any(
        &self,
        ids: &Candidates<'_>,
    ) -> impl Future<Output = Result<Option<Arc<str>>, StateError>> + Send {
        let mut pipe = ::redis::pipe();
        pipe.cmd("TIME");
        for id in ids.iter() {
            pipe.cmd("GET").arg(Self::key(id));
        }
        let offset = self.redis.offset_ms();
        let mut conn = self.redis.conn();
        async move {
            self.redis
                .run(Op::PinFind, async move {
                    let answers: Vec<Value> = pipe
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| unreachable(&e))?;
                    let mut answers = answers.into_iter();
                    let now = match answers.next() {
                        Some(Value::Array(t)) => {
                            match (t.first().and_then(int), t.get(1).and_then(int)) {
                                (Some(s), Some(us)) => s * 1000 + us / 1000 + offset as i64,
                                _ => return Err(bad_reply("TIME")),
                            }
                        }
                        _ => return Err(bad_reply("TIME")),
                    };
                    Ok(answers.find_map(|v| {
                        let v = text(&v)?;
                        let (provider, until) = v.rsplit_once('\n')?;
                        (until.parse::<i64>().ok()? > now).then(|| Arc::from(provider))
                    }))
                })
                .await
        }
    }
}
