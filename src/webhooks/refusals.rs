//! Refused webhook traffic, counted per source address, so that a source that keeps sending events
//! that fail verification is turned away before its next body is read: reading and HMAC-ing a
//! megabyte-sized forged event costs the sidecar milliseconds of CPU, answering 429 costs nothing. A
//! provider never fails verification (unless its secret is misconfigured: it then sees 429 and
//! delivers again later).
//!
//! A fixed one-second window per address; the table is bounded (started afresh when full, which only
//! forgets counts).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Refusals a source may get in one second before it is turned away unread.
pub(super) const REFUSALS_PER_SECOND: u32 = 50;
/// Most sources tracked at once.
const MAX_SOURCES: usize = 10_000;
const WINDOW: Duration = Duration::from_secs(1);

/// Refusals per source in the current window.
#[derive(Debug, Default)]
pub(super) struct Refusals {
    by_source: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Refusals {
    /// Whether `source` is over its refusals this second (its next event is not read).
    pub(super) fn over(&self, source: IpAddr, now: Instant) -> bool {
        let table = self.by_source.lock().unwrap_or_else(|p| p.into_inner());
        table.get(&source).is_some_and(|(start, n)| {
            now.saturating_duration_since(*start) < WINDOW && *n >= REFUSALS_PER_SECOND
        })
    }

    /// Counts one refusal of `source`.
    pub(super) fn count(&self, source: IpAddr, now: Instant) {
        let mut table = self.by_source.lock().unwrap_or_else(|p| p.into_inner());
        if table.len() >= MAX_SOURCES && !table.contains_key(&source) {
            table.clear();
        }
        let entry = table.entry(source).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_turned_away_after_its_refusals_for_the_rest_of_the_second() {
        let r = Refusals::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..REFUSALS_PER_SECOND - 1 {
            r.count(a, t0);
        }
        assert!(!r.over(a, t0), "under the limit");
        r.count(a, t0);
        assert!(r.over(a, t0 + Duration::from_millis(900)));
        assert!(!r.over(b, t0), "another source is not affected");
        assert!(!r.over(a, t0 + WINDOW), "the next second starts afresh");
        r.count(a, t0 + WINDOW);
        assert!(!r.over(a, t0 + WINDOW));
    }
}
