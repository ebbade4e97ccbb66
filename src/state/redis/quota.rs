//! A provider account's quota shared by the fleet: GCRA on Redis's time, one script per request,
//! key `sy:q:{provider}` (the theoretical arrival time, in microseconds).
//!
//! One account limit holds for every sidecar together, whatever their clocks say. The caller keeps
//! the waiting (up to the quota's `max_wait`) and falls back to its local limiter, with its share of
//! the limit, when this fails.

use std::time::Duration;

use ::redis::Value;

use super::{bad_reply, int, scripts, unreachable, Op, Redis};
use crate::state::StateError;

/// The fleet's provider quotas.
#[derive(Debug, Clone)]
pub struct RedisQuota {
    pub(super) redis: Redis,
}

impl RedisQuota {
    /// Quotas on `redis`.
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    /// Takes one slot of `provider`'s quota of `rate_per_s` with bursts of `burst`: `Ok(Ok(()))`
    /// taken, `Ok(Err(wait))` none free for `wait` (nothing taken).
    pub async fn acquire(
        &self,
        provider: &str,
        rate_per_s: u32,
        burst: u32,
    ) -> Result<Result<(), Duration>, StateError> {
        let key = format!("sy:q:{{{provider}}}");
        let interval_us = 1_000_000 / u64::from(rate_per_s.max(1));
        let burst = burst.max(1);
        let offset = self.redis.offset_ms();
        let mut conn = self.redis.conn();
        self.redis
            .run(Op::Quota, async move {
                let answer: Value = scripts::QUOTA
                    .key(&key)
                    .arg(interval_us.max(1))
                    .arg(burst)
                    .arg(offset)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| unreachable(&e))?;
                let Value::Array(items) = answer else {
                    return Err(bad_reply("a quota"));
                };
                match (items.first().and_then(int), items.get(1).and_then(int)) {
                    (Some(1), _) => Ok(Ok(())),
                    (Some(0), Some(us)) => Ok(Err(Duration::from_micros(us.max(1) as u64))),
                    _ => Err(bad_reply("a quota")),
                }
            })
            .await
    }
}
