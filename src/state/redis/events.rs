//! Webhook event ids on Redis: `sy:e:{webhook:digest of the id}`, in flight under a lease, then
//! delivered for the dedupe ttl.
//!
//! A copy that comes while another sidecar delivers the event gets [`Begin::Wait`] with a receiver
//! that a small task ends after [`POLL`]: the caller then begins again and finds the outcome (Redis
//! has no cheap way to tell one waiter; keyspace notifications need a configured server). A
//! delivery whose sidecar died frees its id when the lease runs out.

use std::future::Future;
use std::time::Duration;

use ::redis::Value;
use tokio::sync::watch;

use super::{bad_reply, digest, int, scripts, text, token, unreachable, Op, Redis};
use crate::config::Dedupe;
use crate::state::StateError;
use crate::webhooks::dedupe::{Begin, EventStore, Token};

/// How long a waiting copy waits before it asks again.
pub(super) const POLL: Duration = Duration::from_millis(50);

/// The event ids of one webhook, shared by the fleet.
#[derive(Debug, Clone)]
pub struct RedisEvents {
    redis: Redis,
    prefix: String,
    lease: Duration,
}

impl RedisEvents {
    /// The ids of webhook `webhook`; a delivery holds its id for `lease` at most (longer than the
    /// shop's timeout).
    pub fn new(redis: Redis, webhook: &str, lease: Duration) -> Self {
        Self {
            redis,
            prefix: format!("sy:e:{{{webhook}:"),
            lease,
        }
    }

    fn key(&self, id: &str) -> String {
        format!("{}{}}}", self.prefix, digest(id.as_bytes()))
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl EventStore for RedisEvents {
    fn begin(&self, id: &str) -> impl Future<Output = Result<Begin<Token>, StateError>> + Send {
        let key = self.key(id);
        let token = token();
        let lease = ms(self.lease).max(1);
        let offset = self.redis.offset_ms();
        let mut conn = self.redis.conn();
        async move {
            let word = self
                .redis
                .run(Op::EventBegin, async move {
                    let answer: Value = scripts::EVENT_BEGIN
                        .key(&key)
                        .arg(token.to_string())
                        .arg(lease)
                        .arg(offset)
                        .invoke_async(&mut conn)
                        .await
                        .map_err(|e| unreachable(&e))?;
                    match answer {
                        Value::Array(items) => items
                            .first()
                            .and_then(text)
                            .ok_or_else(|| bad_reply("an event")),
                        _ => Err(bad_reply("an event")),
                    }
                })
                .await?;
            match word.as_str() {
                "deliver" => Ok(Begin::Deliver(Token(token))),
                "duplicate" => Ok(Begin::Duplicate),
                "wait" => {
                    let (tx, rx) = watch::channel(());
                    tokio::spawn(async move {
                        tokio::time::sleep(POLL).await;
                        drop(tx);
                    });
                    Ok(Begin::Wait(rx))
                }
                _ => Err(bad_reply("an event")),
            }
        }
    }

    fn finish(
        &self,
        id: &str,
        token: Token,
        delivered: Option<Dedupe>,
    ) -> impl Future<Output = Result<(), StateError>> + Send {
        let key = self.key(id);
        let ttl = delivered.map(|d| ms(d.ttl).max(1)).unwrap_or(0);
        let offset = self.redis.offset_ms();
        let mut conn = self.redis.conn();
        async move {
            self.redis
                .run(Op::EventFinish, async move {
                    let answer: Value = scripts::EVENT_FINISH
                        .key(&key)
                        .arg(token.0.to_string())
                        .arg(ttl)
                        .arg(offset)
                        .invoke_async(&mut conn)
                        .await
                        .map_err(|e| unreachable(&e))?;
                    // 0: not this delivery's any more, which changes nothing (as in memory).
                    int(&answer)
                        .map(|_| ())
                        .ok_or_else(|| bad_reply("an event"))
                })
                .await
        }
    }
}
