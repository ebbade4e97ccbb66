//! Keeps refused webhooks (bad signature, stale, source not allowed, ...) from filling the audit trail:
//! anyone who can reach a webhook's path can send them as fast as the network allows, and each one used
//! to be a record with its body. At most [`REFUSED_PER_SECOND`] refused requests per webhook and UTC
//! second are recorded; the rest are counted, and folded into one [`SuppressedRecord`] per webhook and
//! second ("N refused webhooks suppressed") that the writer writes once that second is over.
//!
//! The decisions are pure (they take `now`), so tests drive them with any clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::record::SuppressedRecord;

/// Most refused-webhook records per webhook and second.
pub const REFUSED_PER_SECOND: u32 = 5;

/// Refused-webhook records admitted and suppressed, per webhook.
#[derive(Debug)]
pub(crate) struct RefusedLimit {
    per_second: u32,
    hooks: HashMap<Arc<str>, Window>,
}

#[derive(Debug)]
struct Window {
    /// The UTC second the admitted count is for.
    second: u64,
    admitted: u32,
    /// Suppressed since the last summary.
    suppressed: u64,
    first: SystemTime,
    last: SystemTime,
}

fn second_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl RefusedLimit {
    pub(crate) fn new(per_second: u32) -> Self {
        Self {
            per_second,
            hooks: HashMap::new(),
        }
    }

    /// Whether a refused request to `webhook` at `now` gets a record of its own; if not, it is counted
    /// for the next summary.
    pub(crate) fn admit(&mut self, webhook: &Arc<str>, now: SystemTime) -> bool {
        let second = second_of(now);
        let w = self.hooks.entry(Arc::clone(webhook)).or_insert(Window {
            second,
            admitted: 0,
            suppressed: 0,
            first: now,
            last: now,
        });
        if w.second != second {
            w.second = second;
            w.admitted = 0;
        }
        if w.admitted < self.per_second {
            w.admitted += 1;
            return true;
        }
        if w.suppressed == 0 {
            w.first = now;
        }
        w.suppressed += 1;
        w.last = now;
        false
    }

    /// The summaries due at `now`: of every webhook whose suppressed requests are all from a second that
    /// is over (or of every webhook with suppressed requests, when `all`). Webhooks with nothing left to
    /// report are forgotten.
    pub(crate) fn summaries(&mut self, now: SystemTime, all: bool) -> Vec<SuppressedRecord> {
        let current = second_of(now);
        let mut out = Vec::new();
        for (name, w) in &mut self.hooks {
            if w.suppressed > 0 && (all || second_of(w.last) < current) {
                out.push(SuppressedRecord {
                    timestamp: now,
                    webhook: Arc::clone(name),
                    suppressed: w.suppressed,
                    first: w.first,
                    last: w.last,
                });
                w.suppressed = 0;
            }
        }
        self.hooks
            .retain(|_, w| w.suppressed > 0 || w.second >= current);
        out.sort_by(|a, b| a.webhook.cmp(&b.webhook));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms)
    }

    #[test]
    fn at_most_n_per_second_per_webhook_and_the_rest_is_summarised_once_the_second_is_over() {
        let mut l = RefusedLimit::new(2);
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        let admitted: Vec<bool> = (0..5).map(|i| l.admit(&a, at(i * 10))).collect();
        assert_eq!(admitted, [true, true, false, false, false]);
        // Another webhook has its own limit.
        assert!(l.admit(&b, at(60)));
        // Nothing is due while the second lasts.
        assert!(l.summaries(at(900), false).is_empty());
        let due = l.summaries(at(1_000), false);
        assert_eq!(due.len(), 1);
        assert_eq!(&*due[0].webhook, "a");
        assert_eq!(due[0].suppressed, 3);
        assert_eq!(due[0].first, at(20));
        assert_eq!(due[0].last, at(40));
        // A new second admits again; a summary is written once.
        assert!(l.summaries(at(1_100), false).is_empty());
        assert!(l.admit(&a, at(1_200)));
        assert!(l.admit(&a, at(1_300)));
        assert!(!l.admit(&a, at(1_400)));
        // `all` (flush, close) reports what the current second suppressed so far.
        let due = l.summaries(at(1_500), true);
        assert_eq!(due[0].suppressed, 1);
        assert!(l.summaries(at(5_000), true).is_empty());
        assert!(l.hooks.is_empty(), "idle webhooks are forgotten");
    }
}
