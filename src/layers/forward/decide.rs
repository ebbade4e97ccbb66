//! What comes after one attempt, as one pure function: [`decide`] takes the operation's state, what
//! became of the attempt and `now`, and answers with the next step. Every rule of `PAYMENT_RULES.md`
//! §1–4 that chooses between another provider, the same one again, waiting, or stopping lives here,
//! table-tested row by row; the attempt loop only carries the steps out.
//!
//! - *Not sent* may go to the next target at once; *not processed* too when the route allows it.
//! - *Unknown* pins the operation: the same provider only, and only with a key or an idempotent method.
//! - *Processed* ends it: a decline is never retried.
//! - `Stripe-Should-Retry: false` stops; `Retry-After` is honoured up to the route's cap; otherwise
//!   exponential backoff with full jitter (the random fraction is passed in); never past the deadline;
//!   a retry at the same provider takes from the retry budget.
//! - A pinned provider whose breaker is open is waited for within `retry.pinned_wait`, then answered
//!   with 503 `pinned_provider_unavailable`; never another provider.
//! - The shop's retry of a key whose outcome is unknown makes one provider attempt, and gets 503 at
//!   once while its provider's breaker is open (no amplification of the shop's own retries).

use std::time::Duration;

use tokio::time::Instant;

use crate::config::Route;
use crate::outcome::{OutcomeClass, RetryHint};
use crate::retry::backoff;

/// The shortest wait announced for an open breaker.
const MIN_BREAKER_WAIT: Duration = Duration::from_millis(100);
/// The wait announced for a pinned provider that is not in the running config.
const UNCONFIGURED_WAIT: Duration = Duration::from_secs(1);

/// Why an operation may only go to one provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PinReason {
    /// An earlier request with this key may have reached it: its outcome there is unknown.
    Resumed,
    /// The request names a payment object the provider holds (a capture, refund or void).
    PaymentObject,
    /// An attempt of this operation may have reached it.
    Reached,
}

/// The route's rules for one operation, read once.
#[derive(Debug, Clone, Copy)]
pub(super) struct Policy {
    /// Most attempts, the first included.
    pub(super) attempts: u32,
    /// Backoff base and cap.
    pub(super) backoff: Duration,
    pub(super) max_backoff: Duration,
    /// The longest `Retry-After` honoured.
    pub(super) retry_after_cap: Duration,
    /// Whether a *not processed* attempt may move to the next target.
    pub(super) failover_on_not_processed: bool,
    /// When the route's timeout runs out.
    pub(super) deadline: Instant,
    /// Until when a pinned operation waits for its provider's breaker (never past the deadline).
    pub(super) pinned_wait_until: Instant,
}

impl Policy {
    /// The policy of `route` for an operation whose route deadline is `deadline`, which entered at
    /// `started`.
    pub(super) fn of(route: &Route, started: Instant, deadline: Instant) -> Self {
        Self {
            attempts: route.retry.attempts,
            backoff: route.retry.backoff,
            max_backoff: route.retry.max_backoff,
            retry_after_cap: route.retry.retry_after_cap,
            failover_on_not_processed: route.failover_on_not_processed,
            deadline,
            pinned_wait_until: deadline.min(started + route.retry.pinned_wait),
        }
    }
}

/// What is known of the operation, the attempt being decided on included.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct OpState {
    /// Whether (and why) the operation may only go to the provider of this attempt.
    pub(super) pinned: Option<PinReason>,
    /// Whether the route's plan has a target after this one (never, once pinned).
    pub(super) more_targets: bool,
    /// Attempts sent so far, this one included.
    pub(super) sent: u32,
    /// Retries at the same provider so far.
    pub(super) retries: u32,
    /// Whether the operation has an idempotency key.
    pub(super) keyed: bool,
    /// Whether the method is idempotent (RFC 9110 §9.2.2).
    pub(super) idempotent: bool,
    /// Whether an earlier attempt of this operation at this provider had an unknown outcome: a
    /// provider's 409 to the next one is its "still processing this key", classified unknown
    /// (`outcome::classify`), so it is retried there or answered unknown, never stored or failed over.
    pub(super) unknown_before: bool,
}

/// What became of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Attempt {
    /// The provider is not in the running config.
    Unconfigured,
    /// The provider's breaker refused it locally; it may let one through in `retry_in`.
    BreakerOpen {
        /// When the breaker may admit again.
        retry_in: Duration,
    },
    /// The provider account's quota had no slot in time.
    QuotaExhausted,
    /// It was sent, and classified.
    Sent {
        /// Its outcome class.
        class: OutcomeClass,
        /// The provider's retry hint.
        hint: RetryHint,
    },
}

/// The next step of the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// The next target of the route's plan, now.
    NextTarget,
    /// The same provider again, after this pause.
    Retry {
        /// The pause.
        after: Duration,
    },
    /// Wait this long for the pinned provider's breaker, then try it again.
    WaitForPinned {
        /// The pause.
        after: Duration,
    },
    /// No further attempt.
    Stop(Stop),
}

/// Why the operation stops, which says what the shop gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// The provider's final answer: passed on (and kept for replay).
    Answer,
    /// Out of attempts, time, or provider consent to retry: the last attempt's answer (the provider's
    /// own, or the proxy's error; `outcome_unknown` when it may have been executed).
    Exhausted,
    /// As [`Stop::Exhausted`], because the route's retry budget is spent (counted in a metric).
    BudgetExhausted,
    /// 503 `pinned_provider_unavailable`: the pinned provider cannot take it now, no other may.
    PinnedUnavailable {
        /// When it may take it again.
        retry_after: Duration,
    },
    /// 429 `provider_quota_exhausted`: the pinned provider's quota has no slot, no other may.
    PinnedQuotaExhausted,
}

/// Most attempts for this operation: the route's, except for the shop's retry of a key whose outcome
/// is unknown, which makes one provider attempt per shop request. A shop SDK that retries on its own
/// (Stripe's retries 5xx and 409 twice) times the route's attempts would otherwise send one payment
/// nine times.
fn attempts_allowed(state: &OpState, policy: &Policy) -> u32 {
    if state.pinned == Some(PinReason::Resumed) {
        1
    } else {
        policy.attempts
    }
}

/// The wait announced for a breaker that may admit again in `retry_in`.
pub(super) fn breaker_wait(retry_in: Duration) -> Duration {
    retry_in.max(MIN_BREAKER_WAIT)
}

/// The next step after `attempt`. `budget` takes a retry from the route's retry budget and is asked
/// only when a retry at the same provider is next; `jitter` draws the uniform fraction in [0, 1) of
/// the backoff and is asked only when the provider gave no `Retry-After`.
pub(super) fn decide(
    state: &OpState,
    attempt: Attempt,
    policy: &Policy,
    now: Instant,
    budget: impl FnOnce() -> bool,
    jitter: impl FnOnce() -> f64,
) -> Step {
    let (class, hint) = match attempt {
        Attempt::Unconfigured => {
            return match state.pinned {
                Some(_) => Step::Stop(Stop::PinnedUnavailable {
                    retry_after: UNCONFIGURED_WAIT,
                }),
                None => Step::NextTarget,
            }
        }
        Attempt::BreakerOpen { retry_in } => {
            let wait = breaker_wait(retry_in);
            return match state.pinned {
                None => Step::NextTarget,
                // The shop's own retry of an unknown outcome is answered at once: the shop (or its
                // SDK) retries on its own schedule, and waiting here too would stack the two.
                Some(PinReason::Resumed) => {
                    Step::Stop(Stop::PinnedUnavailable { retry_after: wait })
                }
                // No other provider may take it: wait for this one while the route allows (a breaker
                // opened by a brownout lets probes through soon), so the shop gets the payment's
                // answer rather than a 503 to retry.
                Some(_) if now + wait < policy.pinned_wait_until => {
                    Step::WaitForPinned { after: wait }
                }
                Some(_) => Step::Stop(Stop::PinnedUnavailable { retry_after: wait }),
            };
        }
        Attempt::QuotaExhausted => {
            return match state.pinned {
                Some(_) => Step::Stop(Stop::PinnedQuotaExhausted),
                None => Step::NextTarget,
            }
        }
        Attempt::Sent { class, hint } => (class, hint),
    };
    if class == OutcomeClass::Processed {
        return Step::Stop(Stop::Answer);
    }
    let may_retry = hint != RetryHint::DoNotRetry
        && match class {
            OutcomeClass::NotSent | OutcomeClass::NotProcessed => true,
            OutcomeClass::Unknown => state.keyed || state.idempotent,
            OutcomeClass::Processed => false,
        }
        && state.sent < attempts_allowed(state, policy);
    if !may_retry {
        return Step::Stop(Stop::Exhausted);
    }
    // Nothing reached this provider: the next target (the backup channel) takes it now.
    let may_fail_over = state.pinned.is_none()
        && state.more_targets
        && match class {
            OutcomeClass::NotSent => true,
            OutcomeClass::NotProcessed => policy.failover_on_not_processed,
            OutcomeClass::Unknown | OutcomeClass::Processed => false,
        };
    if may_fail_over {
        return Step::NextTarget;
    }
    // The same provider again, after a pause, if the budget and the deadline allow.
    if !budget() {
        return Step::Stop(Stop::BudgetExhausted);
    }
    let pause = match hint {
        RetryHint::After(d) => d.min(policy.retry_after_cap),
        RetryHint::None | RetryHint::DoNotRetry => backoff(
            state.retries + 1,
            policy.backoff,
            policy.max_backoff,
            jitter(),
        ),
    };
    if now + pause >= policy.deadline {
        return Step::Stop(Stop::Exhausted);
    }
    Step::Retry { after: pause }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use OutcomeClass as C;

    const MS: Duration = Duration::from_millis(1);

    fn t0() -> Instant {
        Instant::from_std(std::time::Instant::now())
    }

    fn policy(now: Instant, failover_on_not_processed: bool) -> Policy {
        Policy {
            attempts: 3,
            backoff: 100 * MS,
            max_backoff: 400 * MS,
            retry_after_cap: 2_000 * MS,
            failover_on_not_processed,
            deadline: now + 10_000 * MS,
            pinned_wait_until: now + 5_000 * MS,
        }
    }

    /// The state after a first attempt of a POST at the route's first target of two.
    fn first(keyed: bool, idempotent: bool) -> OpState {
        OpState {
            pinned: None,
            more_targets: true,
            sent: 1,
            retries: 0,
            keyed,
            idempotent,
            unknown_before: false,
        }
    }

    fn sent(class: OutcomeClass, hint: RetryHint) -> Attempt {
        Attempt::Sent { class, hint }
    }

    /// Decides with a budget that always allows and a jitter of one half; says whether the budget
    /// was asked.
    fn run(state: &OpState, attempt: Attempt, policy: &Policy, now: Instant) -> (Step, bool) {
        let asked = Cell::new(false);
        let step = decide(
            state,
            attempt,
            policy,
            now,
            || {
                asked.set(true);
                true
            },
            || 0.5,
        );
        (step, asked.get())
    }

    #[test]
    fn every_row_of_the_outcome_table() {
        let now = t0();
        let none = RetryHint::None;
        let half_base = Step::Retry { after: 50 * MS };
        // (class, hint, failover on not processed, keyed, idempotent, pinned, expected step)
        let rows: Vec<(C, RetryHint, bool, bool, bool, bool, Step)> = vec![
            // Not sent: another provider at once, whatever the route, key or method.
            (
                C::NotSent,
                none,
                true,
                false,
                false,
                false,
                Step::NextTarget,
            ),
            (
                C::NotSent,
                none,
                false,
                false,
                false,
                false,
                Step::NextTarget,
            ),
            (
                C::NotSent,
                none,
                false,
                true,
                false,
                false,
                Step::NextTarget,
            ),
            // ... or the same provider again, when it is the last target or the one pinned.
            (C::NotSent, none, true, true, false, true, half_base),
            // Not processed: another provider if the route allows it, else the same one again.
            (
                C::NotProcessed,
                none,
                true,
                false,
                false,
                false,
                Step::NextTarget,
            ),
            (C::NotProcessed, none, false, false, false, false, half_base),
            (C::NotProcessed, none, false, true, false, false, half_base),
            (C::NotProcessed, none, true, true, false, true, half_base),
            // Unknown: never another provider; the same one only with a key or an idempotent method.
            (C::Unknown, none, true, true, false, true, half_base),
            (C::Unknown, none, true, false, true, true, half_base),
            (C::Unknown, none, true, true, true, true, half_base),
            (
                C::Unknown,
                none,
                true,
                false,
                false,
                true,
                Step::Stop(Stop::Exhausted),
            ),
            (
                C::Unknown,
                none,
                false,
                false,
                false,
                true,
                Step::Stop(Stop::Exhausted),
            ),
            // Processed (2xx, a decline, any final 4xx): the answer, never a retry.
            (
                C::Processed,
                none,
                true,
                true,
                false,
                true,
                Step::Stop(Stop::Answer),
            ),
            (
                C::Processed,
                none,
                false,
                false,
                true,
                true,
                Step::Stop(Stop::Answer),
            ),
            (
                C::Processed,
                none,
                true,
                false,
                false,
                false,
                Step::Stop(Stop::Answer),
            ),
        ];
        for (class, hint, failover, keyed, idempotent, pinned, expected) in rows {
            let mut state = first(keyed, idempotent);
            if pinned {
                state.pinned = Some(PinReason::Reached);
                state.more_targets = false;
            }
            let p = policy(now, failover);
            let (step, _) = run(&state, sent(class, hint), &p, now);
            assert_eq!(
                step, expected,
                "{class:?} failover={failover} keyed={keyed} idempotent={idempotent} pinned={pinned}"
            );
        }
    }

    #[test]
    fn a_not_processed_answer_to_a_retry_of_an_unknown_key_stays_with_the_provider() {
        // A 409 "still processing" to the shop's retry of an unknown outcome: never another provider,
        // and no retry of ours on top of the shop's (one attempt per shop request).
        let now = t0();
        let state = OpState {
            pinned: Some(PinReason::Resumed),
            unknown_before: true,
            ..first(true, false)
        };
        let hint = RetryHint::After(Duration::from_secs(1));
        let (step, _) = run(&state, sent(C::NotProcessed, hint), &policy(now, true), now);
        assert_eq!(step, Step::Stop(Stop::Exhausted));
    }

    #[test]
    fn provider_hints_win() {
        let now = t0();
        let p = policy(now, true);
        let state = OpState {
            more_targets: false,
            ..first(true, false)
        };
        // Stripe-Should-Retry: false stops, whatever the class.
        for class in [C::NotSent, C::NotProcessed, C::Unknown] {
            let (step, asked) = run(&state, sent(class, RetryHint::DoNotRetry), &p, now);
            assert_eq!(step, Step::Stop(Stop::Exhausted), "{class:?}");
            assert!(
                !asked,
                "no budget is taken for a retry that will not happen"
            );
        }
        // Retry-After is honoured, up to the cap.
        let after = |secs| sent(C::NotProcessed, RetryHint::After(Duration::from_secs(secs)));
        assert_eq!(
            run(&state, after(1), &p, now).0,
            Step::Retry { after: 1_000 * MS }
        );
        assert_eq!(
            run(&state, after(60), &p, now).0,
            Step::Retry { after: 2_000 * MS }
        );
    }

    #[test]
    fn backoff_grows_with_full_jitter_within_the_deadline() {
        let now = t0();
        let p = policy(now, true);
        let mut state = OpState {
            more_targets: false,
            ..first(true, false)
        };
        let unknown = sent(C::Unknown, RetryHint::None);
        let jittered =
            |state: &OpState, unit: f64| decide(state, unknown, &p, now, || true, || unit);
        assert_eq!(jittered(&state, 1.0), Step::Retry { after: 100 * MS });
        assert_eq!(
            jittered(&state, 0.0),
            Step::Retry {
                after: Duration::ZERO
            }
        );
        state.retries = 1;
        state.sent = 2;
        assert_eq!(jittered(&state, 1.0), Step::Retry { after: 200 * MS });
        assert_eq!(jittered(&state, 0.25), Step::Retry { after: 50 * MS });
        // A pause that would end past the deadline ends the operation instead.
        let late = p.deadline - 150 * MS;
        assert_eq!(
            decide(&state, unknown, &p, late, || true, || 1.0),
            Step::Stop(Stop::Exhausted)
        );
        assert_eq!(
            decide(&state, unknown, &p, late, || true, || 0.5),
            Step::Retry { after: 100 * MS }
        );
    }

    #[test]
    fn attempts_and_budget_bound_retries() {
        let now = t0();
        let p = policy(now, true);
        let state = OpState {
            more_targets: false,
            sent: 3,
            retries: 2,
            ..first(true, false)
        };
        let (step, asked) = run(&state, sent(C::NotSent, RetryHint::None), &p, now);
        assert_eq!(step, Step::Stop(Stop::Exhausted), "retry.attempts reached");
        assert!(!asked);
        let state = OpState {
            more_targets: false,
            ..first(true, false)
        };
        let step = decide(
            &state,
            sent(C::Unknown, RetryHint::None),
            &p,
            now,
            || false,
            || 0.5,
        );
        assert_eq!(step, Step::Stop(Stop::BudgetExhausted));
        // Moving to another target is not a retry: the budget is not asked.
        let (step, asked) = run(
            &first(false, false),
            sent(C::NotSent, RetryHint::None),
            &p,
            now,
        );
        assert_eq!(step, Step::NextTarget);
        assert!(!asked);
    }

    #[test]
    fn local_refusals_move_on_unless_pinned() {
        let now = t0();
        let p = policy(now, true);
        let free = first(true, false);
        let pinned = OpState {
            pinned: Some(PinReason::PaymentObject),
            more_targets: false,
            sent: 0,
            ..free
        };
        let open = |ms| Attempt::BreakerOpen { retry_in: ms * MS };
        assert_eq!(run(&free, open(300), &p, now).0, Step::NextTarget);
        assert_eq!(
            run(&free, Attempt::QuotaExhausted, &p, now).0,
            Step::NextTarget
        );
        assert_eq!(
            run(&free, Attempt::Unconfigured, &p, now).0,
            Step::NextTarget
        );
        // A pinned provider's open breaker is waited for within retry.pinned_wait (at least 100 ms).
        assert_eq!(
            run(&pinned, open(300), &p, now).0,
            Step::WaitForPinned { after: 300 * MS }
        );
        assert_eq!(
            run(&pinned, open(0), &p, now).0,
            Step::WaitForPinned { after: 100 * MS }
        );
        // ... and past it the shop gets 503 pinned_provider_unavailable, never another provider.
        assert_eq!(
            run(&pinned, open(6_000), &p, now).0,
            Step::Stop(Stop::PinnedUnavailable {
                retry_after: 6_000 * MS
            })
        );
        let later = p.pinned_wait_until - 200 * MS;
        assert_eq!(
            run(&pinned, open(300), &p, later).0,
            Step::Stop(Stop::PinnedUnavailable {
                retry_after: 300 * MS
            })
        );
        assert_eq!(
            run(&pinned, Attempt::QuotaExhausted, &p, now).0,
            Step::Stop(Stop::PinnedQuotaExhausted)
        );
        assert_eq!(
            run(&pinned, Attempt::Unconfigured, &p, now).0,
            Step::Stop(Stop::PinnedUnavailable {
                retry_after: Duration::from_secs(1)
            })
        );
    }

    #[test]
    fn a_shop_retry_of_an_unknown_outcome_makes_one_attempt_and_never_waits() {
        let now = t0();
        let p = policy(now, true);
        let resumed = OpState {
            pinned: Some(PinReason::Resumed),
            keyed: true,
            unknown_before: true,
            sent: 1,
            ..OpState::default()
        };
        // Its provider's breaker is open: 503 at once, not a wait within pinned_wait.
        let before_sending = OpState { sent: 0, ..resumed };
        assert_eq!(
            run(
                &before_sending,
                Attempt::BreakerOpen { retry_in: 300 * MS },
                &p,
                now
            )
            .0,
            Step::Stop(Stop::PinnedUnavailable {
                retry_after: 300 * MS
            })
        );
        // One attempt sent, whatever became of it: no retry here, the shop retries.
        for class in [C::NotSent, C::NotProcessed, C::Unknown] {
            let attempt = Attempt::Sent {
                class,
                hint: RetryHint::None,
            };
            assert_eq!(
                run(&resumed, attempt, &p, now).0,
                Step::Stop(Stop::Exhausted),
                "{class:?}"
            );
        }
        // The same outcome within one request of the shop's is still retried there.
        let reached = OpState {
            pinned: Some(PinReason::Reached),
            ..resumed
        };
        let unknown = Attempt::Sent {
            class: C::Unknown,
            hint: RetryHint::None,
        };
        assert!(matches!(
            run(&reached, unknown, &p, now).0,
            Step::Retry { .. }
        ));
    }
}
