//! What every call to a store of payment state costs and how it ended, counted with handles resolved
//! once per backend and op (no label lookup per call): `switchyard_state_operations_total`,
//! `switchyard_state_duration_seconds`, and `switchyard_state_up` (1 after a call that worked, 0
//! after one that failed). The in-memory backend is not metered: its calls cannot fail or wait.

use std::time::Instant;

use prometheus::{Histogram, IntCounter, IntGauge};

use super::StateError;
use crate::metrics::{Metrics, STATE_OPS};

/// The kinds of call, in [`STATE_OPS`] order.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// Claim a key.
    Begin = 0,
    /// Record an attempt's provider.
    Attempt = 1,
    /// Settle a key.
    Finish = 2,
    /// Look a payment object up.
    PinFind = 3,
    /// Pin a payment object.
    PinRemember = 4,
    /// Claim a webhook event.
    EventBegin = 5,
    /// Settle a webhook event.
    EventFinish = 6,
    /// Take a slot of a shared provider quota.
    Quota = 7,
}

#[derive(Debug)]
struct OpMeter {
    ok: IntCounter,
    error: IntCounter,
    timeout: IntCounter,
    fenced: IntCounter,
    duration: Histogram,
}

/// The meters of one backend.
#[derive(Debug)]
pub struct Meter {
    ops: Vec<OpMeter>,
    up: IntGauge,
}

impl Meter {
    /// Handles for `backend`'s series in `metrics`.
    pub fn new(metrics: &Metrics, backend: &str) -> Self {
        let ops = STATE_OPS
            .iter()
            .map(|op| {
                let count = |result: &str| {
                    metrics
                        .state_operations_total
                        .with_label_values(&[backend, op, result])
                };
                OpMeter {
                    ok: count("ok"),
                    error: count("error"),
                    timeout: count("timeout"),
                    fenced: count("fenced"),
                    duration: metrics
                        .state_duration_seconds
                        .with_label_values(&[backend, op]),
                }
            })
            .collect();
        Self {
            ops,
            up: metrics.state_up.with_label_values(&[backend]),
        }
    }

    /// Counts a call of kind `op` begun at `started` that ended in `result`.
    pub fn observe<T>(&self, op: Op, started: Instant, result: &Result<T, StateError>) {
        let Some(m) = self.ops.get(op as usize) else {
            return;
        };
        m.duration.observe(started.elapsed().as_secs_f64());
        let (counter, up) = match result {
            Ok(_) => (&m.ok, true),
            // The store answered; this holder's claim was over.
            Err(StateError::Fenced) => (&m.fenced, true),
            Err(StateError::Timeout(_)) => (&m.timeout, false),
            Err(StateError::Unreachable(_)) => (&m.error, false),
            Err(StateError::Forgot(_)) => (&m.error, true),
        };
        counter.inc();
        self.up.set(i64::from(up));
    }
}
