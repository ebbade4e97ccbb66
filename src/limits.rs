//! Rate limits, on governor's GCRA: a route's limit on the shop (optionally keyed by client IP or a
//! header) and a provider account's quota.
//!
//! Keyed limiter state is bounded: once a route tracks `max_keys` keys, keys idle long enough to be back
//! at a full burst are dropped, and if that is not enough the table is started afresh (every key gets a
//! full burst once more), rather than growing without bound.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota as Gcra, RateLimiter};

use crate::config::Snapshot;
use crate::config::{Quota, RateLimit};
use crate::state::redis::RedisQuota;

fn gcra(rps: u32, burst: u32) -> Gcra {
    let rps = NonZeroU32::new(rps).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Gcra::per_second(rps).allow_burst(burst)
}

/// A route's limit on the shop.
pub struct RouteLimiter {
    config: RateLimit,
    limiter: arc_swap::ArcSwap<DefaultKeyedRateLimiter<String>>,
}

impl std::fmt::Debug for RouteLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteLimiter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RouteLimiter {
    /// A limiter for `config`.
    pub fn new(config: RateLimit) -> Self {
        let limiter =
            arc_swap::ArcSwap::from_pointee(RateLimiter::keyed(gcra(config.rps, config.burst)));
        Self { config, limiter }
    }

    /// Its settings.
    pub fn config(&self) -> &RateLimit {
        &self.config
    }

    /// Takes one request for `key`; `Err(wait)` when over the limit, with the time until one is allowed.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let mut limiter = self.limiter.load();
        if limiter.len() >= self.config.max_keys {
            limiter.retain_recent();
            if limiter.len() >= self.config.max_keys {
                tracing::warn!(
                    max_keys = self.config.max_keys,
                    "rate limit key table full of active keys; starting it afresh"
                );
                self.limiter.store(Arc::new(RateLimiter::keyed(gcra(
                    self.config.rps,
                    self.config.burst,
                ))));
                limiter = self.limiter.load();
            }
            limiter.shrink_to_fit();
        }
        let key = key.to_owned();
        limiter
            .check_key(&key)
            // The limiter's own clock: making a new one calibrates it (CPUID and all), far too slow here.
            .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }

    /// Keys tracked now.
    pub fn keys(&self) -> usize {
        self.limiter.load().len()
    }
}

/// Every route's limiter, by route name. Kept across reloads for routes whose limit is unchanged.
#[derive(Debug, Default)]
pub struct RouteLimits {
    by_route: crate::config::NameMap<Arc<RouteLimiter>>,
}

impl RouteLimits {
    /// Limiters for the routes of `snapshot` that have a limit, reusing `previous` ones.
    pub fn build(snapshot: &Snapshot, previous: Option<&RouteLimits>) -> Self {
        let mut by_route = crate::config::NameMap::default();
        for route in &snapshot.routes {
            let Some(config) = &route.rate_limit else {
                continue;
            };
            let limiter = previous
                .and_then(|p| p.by_route.get(&route.name))
                .filter(|l| l.config() == config)
                .cloned()
                .unwrap_or_else(|| Arc::new(RouteLimiter::new(config.clone())));
            by_route.insert(Arc::clone(&route.name), limiter);
        }
        Self { by_route }
    }

    /// The limiter of route `name`, if it has one.
    pub fn get(&self, name: &str) -> Option<&Arc<RouteLimiter>> {
        self.by_route.get(name)
    }
}

/// A provider account's quota: requests wait up to `max_wait` for a slot.
pub struct QuotaGate {
    quota: Quota,
    limiter: DefaultDirectRateLimiter,
    /// The fleet's one count of the provider account's quota, when the state store shares it.
    shared: Option<SharedQuota>,
}

/// A provider quota counted for the whole fleet in the shared store (a GCRA on the store's clock).
struct SharedQuota {
    store: RedisQuota,
    provider: Arc<str>,
}

impl std::fmt::Debug for QuotaGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuotaGate")
            .field("quota", &self.quota)
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

impl QuotaGate {
    /// A gate for `quota`, counted in this process.
    pub fn new(quota: Quota) -> Self {
        Self {
            quota,
            limiter: RateLimiter::direct(gcra(quota.rps, quota.burst)),
            shared: None,
        }
    }

    /// A gate for `provider`'s `quota`, counted for the whole fleet in `store`. While the store cannot
    /// answer, this sidecar takes `share` of the quota from a limiter of its own (with N sidecars,
    /// `1/N` keeps the fleet within the account's limit).
    pub fn shared(quota: Quota, provider: Arc<str>, store: RedisQuota, share: f64) -> Self {
        let part = |n: u32| ((f64::from(n) * share).floor() as u32).max(1);
        Self {
            quota,
            limiter: RateLimiter::direct(gcra(part(quota.rps), part(quota.burst))),
            shared: Some(SharedQuota { store, provider }),
        }
    }

    /// Whether the fleet shares this gate's count.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Its settings.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// Waits for a slot up to `max_wait`; `Err(wait)` when none comes in time (nothing is taken then).
    pub async fn acquire(&self) -> Result<(), Duration> {
        let mut waited = Duration::ZERO;
        if let Some(s) = &self.shared {
            loop {
                // Boxed: a Redis exchange inline would make every payment's future larger.
                match Box::pin(
                    s.store
                        .acquire(&s.provider, self.quota.rps, self.quota.burst),
                )
                .await
                {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(wait)) => {
                        if waited + wait > self.quota.max_wait {
                            return Err(wait);
                        }
                        tokio::time::sleep(wait).await;
                        waited += wait;
                    }
                    Err(e) => {
                        // The fleet's count cannot be read: this sidecar's share, counted here.
                        tracing::debug!(provider = %s.provider, error = %e, "shared quota unavailable; using this sidecar's share");
                        break;
                    }
                }
            }
        }
        loop {
            match self.limiter.check() {
                Ok(()) => return Ok(()),
                Err(not_until) => {
                    let wait = not_until.wait_time_from(self.limiter.clock().now());
                    if waited + wait > self.quota.max_wait {
                        return Err(wait);
                    }
                    tokio::time::sleep(wait).await;
                    waited += wait;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateLimitKey;

    fn limit(rps: u32, burst: u32, max_keys: usize) -> RateLimit {
        RateLimit {
            rps,
            burst,
            by: RateLimitKey::None,
            max_keys,
        }
    }

    #[test]
    fn a_burst_then_refusal_with_a_wait() {
        let l = RouteLimiter::new(limit(1, 3, 10));
        for _ in 0..3 {
            assert_eq!(l.check("k"), Ok(()));
        }
        let wait = l.check("k").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Another key has its own bucket.
        assert_eq!(l.check("other"), Ok(()));
    }

    #[test]
    fn the_key_table_stays_bounded() {
        let l = RouteLimiter::new(limit(1, 1, 50));
        for i in 0..500 {
            let _ = l.check(&format!("tenant-{i}"));
            assert!(l.keys() <= 50, "{} keys", l.keys());
        }
    }

    #[tokio::test]
    async fn quota_waits_up_to_max_wait() {
        let gate = QuotaGate::new(Quota {
            rps: 20,
            burst: 1,
            max_wait: Duration::from_millis(200),
        });
        assert_eq!(gate.acquire().await, Ok(()));
        // The next slot comes after 50 ms: within max_wait, so it waits.
        let start = std::time::Instant::now();
        assert_eq!(gate.acquire().await, Ok(()));
        assert!(start.elapsed() >= Duration::from_millis(40));

        let strict = QuotaGate::new(Quota {
            rps: 1,
            burst: 1,
            max_wait: Duration::from_millis(10),
        });
        assert_eq!(strict.acquire().await, Ok(()));
        assert!(
            strict.acquire().await.is_err(),
            "a 1 s wait exceeds max_wait"
        );
    }
}
