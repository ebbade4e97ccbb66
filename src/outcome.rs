//! What one attempt at a provider means for the payment: the outcome classes of
//! `PAYMENT_RULES.md` §1, as one pure function of what was seen of it: the provider's answer, or how
//! the send failed ([`SendFailure`]). A local refusal (breaker open, quota exhausted) sends nothing
//! and is not classified: the attempt loop's `decide` takes it as such.
//!
//! | seen | class |
//! |---|---|
//! | connect refused / timeout, DNS, TLS handshake failure | [`OutcomeClass::NotSent`] |
//! | a pooled connection that failed before the request was written | [`OutcomeClass::NotSent`] |
//! | HTTP/2 REFUSED_STREAM, GOAWAY below our stream, 429, Adyen `transient-error: true`, 409 with `Stripe-Should-Retry: true` | [`OutcomeClass::NotProcessed`] |
//! | timeout or reset after the request was written, any other 5xx | [`OutcomeClass::Unknown`] |
//! | 409 to a retry of a key whose earlier attempt at this provider is unknown (still processing) | [`OutcomeClass::Unknown`] |
//! | 2xx, and every other 4xx (declines included) | [`OutcomeClass::Processed`] |
//!
//! With the class come what the provider's breaker makes of it and the provider's retry hints.

use std::time::Duration;

use http::{HeaderMap, StatusCode};

use crate::error::Reached;

/// The outcome class of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutcomeClass {
    /// The request certainly did not reach the provider.
    NotSent,
    /// The provider says it did not execute the request.
    NotProcessed,
    /// The request may have been executed; nobody knows.
    Unknown,
    /// The provider gave its final answer (a success or a refusal such as a decline).
    Processed,
}

impl OutcomeClass {
    /// Its label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotSent => "not_sent",
            Self::NotProcessed => "not_processed",
            Self::Unknown => "unknown",
            Self::Processed => "processed",
        }
    }

    /// Whether the attempt may have reached the provider (and so pins the operation to it): the one
    /// answer the attempt loop, its errors and the shop's "outcome unknown" header follow.
    pub fn reached(self) -> Reached {
        match self {
            Self::Unknown | Self::Processed => Reached::Maybe,
            Self::NotSent | Self::NotProcessed => Reached::No,
        }
    }
}

/// How an attempt failed, as far as telling whether the request was written goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFailure {
    /// DNS, refused, connect timeout.
    Connect,
    /// TLS handshake failed or was refused.
    Tls,
    /// Failed before the request was written (a pooled connection closed first).
    BeforeWrite,
    /// HTTP/2 REFUSED_STREAM: the provider did not process it.
    RefusedStream,
    /// HTTP/2 GOAWAY that excluded our stream: the provider did not process it.
    GoAway,
    /// The attempt timed out after the request was (or may have been) written.
    TimeoutAfterWrite,
    /// The exchange failed after the request was (or may have been) written.
    AfterWrite,
}

/// What the provider's breaker makes of the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerEffect {
    /// A success (the provider answered; a decline is not an outage).
    Success,
    /// A technical failure.
    Failure,
    /// Throttled (429): the provider is kept out of traffic for a while, the breaker is untouched.
    Throttled,
    /// Nothing to count (the attempt never left the proxy, or the provider was not at fault).
    None,
}

/// The provider's word on retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryHint {
    /// No hint.
    None,
    /// `Stripe-Should-Retry: false`: do not retry.
    DoNotRetry,
    /// `Retry-After`: not before this long.
    After(Duration),
}

/// The classification of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classified {
    /// The outcome class.
    pub class: OutcomeClass,
    /// What the breaker counts.
    pub breaker: BreakerEffect,
    /// The provider's retry hint.
    pub hint: RetryHint,
}

/// Stripe's retry advice on an answer.
const STRIPE_SHOULD_RETRY: http::HeaderName = http::HeaderName::from_static("stripe-should-retry");
/// Adyen's mark of a transient error.
const TRANSIENT_ERROR: http::HeaderName = http::HeaderName::from_static("transient-error");

/// Whether header `name` is `value` (ASCII case ignored). `name` is a `HeaderName`: a `&str` would be
/// parsed and hashed again at each lookup.
fn header_is(headers: &HeaderMap, name: &http::HeaderName, value: &str) -> bool {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(value))
}

/// Parses `Retry-After`: delay-seconds, or an HTTP date relative to `now`.
pub fn retry_after(headers: &HeaderMap, now: std::time::SystemTime) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An IMF-fixdate (`Wed, 21 Oct 2015 07:28:00 GMT`).
fn http_date(value: &str) -> Option<std::time::SystemTime> {
    let rest = value.split_once(", ")?.1.strip_suffix(" GMT")?;
    let mut it = rest.split(' ');
    let (day, month, year, time) = (it.next()?, it.next()?, it.next()?, it.next()?);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = MONTHS.iter().position(|&x| x == month)? + 1;
    humantime::parse_rfc3339_weak(&format!("{year}-{m:02}-{day:0>2} {time}")).ok()
}

/// What was seen of one attempt: the provider's status and headers, or how the send failed.
pub type Seen<'a> = Result<(StatusCode, &'a HeaderMap), SendFailure>;

/// Classifies one attempt. `retry_of_unknown` says that an earlier attempt with this key at this
/// provider has an unknown outcome: a 409 then is the provider's "still processing this key" (Stripe's
/// `idempotency_key_in_use`), which leaves the outcome unknown — never a final answer, whatever other
/// marker it carries.
pub fn classify(seen: Seen<'_>, retry_of_unknown: bool, now: std::time::SystemTime) -> Classified {
    let plain = |class, breaker| Classified {
        class,
        breaker,
        hint: RetryHint::None,
    };
    match seen {
        Err(SendFailure::Connect | SendFailure::Tls) => {
            plain(OutcomeClass::NotSent, BreakerEffect::Failure)
        }
        Err(SendFailure::BeforeWrite) => plain(OutcomeClass::NotSent, BreakerEffect::None),
        Err(SendFailure::RefusedStream | SendFailure::GoAway) => {
            plain(OutcomeClass::NotProcessed, BreakerEffect::Failure)
        }
        Err(SendFailure::TimeoutAfterWrite | SendFailure::AfterWrite) => {
            plain(OutcomeClass::Unknown, BreakerEffect::Failure)
        }
        Ok((status, headers)) => {
            let hint = if header_is(headers, &STRIPE_SHOULD_RETRY, "false") {
                RetryHint::DoNotRetry
            } else {
                retry_after(headers, now).map_or(RetryHint::None, RetryHint::After)
            };
            let (class, breaker) = if status == StatusCode::TOO_MANY_REQUESTS {
                (OutcomeClass::NotProcessed, BreakerEffect::Throttled)
            } else if status == StatusCode::CONFLICT && retry_of_unknown {
                // In progress: the earlier attempt may still charge. Not an outage either.
                (OutcomeClass::Unknown, BreakerEffect::None)
            } else if header_is(headers, &TRANSIENT_ERROR, "true") {
                // Adyen: the request was not executed and may be sent again.
                let breaker = if status.is_server_error() {
                    BreakerEffect::Failure
                } else {
                    BreakerEffect::None
                };
                (OutcomeClass::NotProcessed, breaker)
            } else if status == StatusCode::CONFLICT
                && header_is(headers, &STRIPE_SHOULD_RETRY, "true")
            {
                // Stripe: a concurrent request with the same key was in progress; nothing was executed.
                (OutcomeClass::NotProcessed, BreakerEffect::None)
            } else if status == StatusCode::NOT_IMPLEMENTED {
                // The provider does not do this (an odd method): not an outage to open a breaker
                // for, still a 5xx without a not-executed marker.
                (OutcomeClass::Unknown, BreakerEffect::None)
            } else if status.is_server_error() {
                (OutcomeClass::Unknown, BreakerEffect::Failure)
            } else {
                (OutcomeClass::Processed, BreakerEffect::Success)
            };
            Classified {
                class,
                breaker,
                hint,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    use BreakerEffect as B;
    use OutcomeClass as C;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn every_row_of_the_outcome_table() {
        let now = SystemTime::now();
        let none = HeaderMap::new();
        let cases: Vec<(SendFailure, C, B)> = vec![
            (SendFailure::Connect, C::NotSent, B::Failure),
            (SendFailure::Tls, C::NotSent, B::Failure),
            (SendFailure::BeforeWrite, C::NotSent, B::None),
            (SendFailure::RefusedStream, C::NotProcessed, B::Failure),
            (SendFailure::GoAway, C::NotProcessed, B::Failure),
            (SendFailure::TimeoutAfterWrite, C::Unknown, B::Failure),
            (SendFailure::AfterWrite, C::Unknown, B::Failure),
        ];
        for (failure, class, breaker) in cases {
            let c = classify(Err(failure), false, now);
            assert_eq!((c.class, c.breaker), (class, breaker), "{failure:?}");
        }
        let response = |status: u16, h: &HeaderMap| {
            let c = classify(Ok((StatusCode::from_u16(status).unwrap(), h)), false, now);
            (c.class, c.breaker)
        };
        for ok in [200, 201, 202, 204] {
            assert_eq!(response(ok, &none), (C::Processed, B::Success), "{ok}");
        }
        for final_4xx in [400, 401, 402, 403, 404, 409, 422] {
            assert_eq!(
                response(final_4xx, &none),
                (C::Processed, B::Success),
                "{final_4xx}"
            );
        }
        assert_eq!(response(429, &none), (C::NotProcessed, B::Throttled));
        let stripe_retry = headers(&[("stripe-should-retry", "true")]);
        assert_eq!(response(409, &stripe_retry), (C::NotProcessed, B::None));
        let adyen = headers(&[("transient-error", "true")]);
        assert_eq!(response(503, &adyen), (C::NotProcessed, B::Failure));
        assert_eq!(response(422, &adyen), (C::NotProcessed, B::None));
        for unknown in [500, 502, 503, 504] {
            assert_eq!(
                response(unknown, &none),
                (C::Unknown, B::Failure),
                "{unknown}"
            );
        }
        assert_eq!(response(501, &none), (C::Unknown, B::None), "not an outage");
        assert_eq!(response(405, &none), (C::Processed, B::Success));
        // Stripe-Should-Retry: true on a 5xx does not say it was not executed.
        assert_eq!(response(500, &stripe_retry), (C::Unknown, B::Failure));
    }

    #[test]
    fn provider_retry_hints() {
        let now = SystemTime::now();
        let h = headers(&[("stripe-should-retry", "false"), ("retry-after", "5")]);
        let c = classify(Ok((StatusCode::SERVICE_UNAVAILABLE, &h)), false, now);
        assert_eq!(c.hint, RetryHint::DoNotRetry, "should-retry false wins");
        let h = headers(&[("retry-after", "3")]);
        let c = classify(Ok((StatusCode::TOO_MANY_REQUESTS, &h)), false, now);
        assert_eq!(c.hint, RetryHint::After(Duration::from_secs(3)));
    }

    #[test]
    fn a_409_to_a_retry_of_an_unknown_attempt_is_still_unknown() {
        let now = SystemTime::now();
        let in_progress = |h: &HeaderMap, retry_of_unknown: bool| {
            let c = classify(Ok((StatusCode::CONFLICT, h)), retry_of_unknown, now);
            (c.class, c.breaker, c.hint)
        };
        let none = HeaderMap::new();
        assert_eq!(
            in_progress(&none, true),
            (C::Unknown, B::None, RetryHint::None),
            "Stripe's idempotency_key_in_use: still processing, not final, not an outage"
        );
        let marked = headers(&[("stripe-should-retry", "true"), ("retry-after", "2")]);
        assert_eq!(
            in_progress(&marked, true),
            (
                C::Unknown,
                B::None,
                RetryHint::After(Duration::from_secs(2))
            ),
            "its not-executed marker speaks of this attempt, not of the earlier one"
        );
        // A first attempt's 409 is the provider's final answer (or, marked, not processed).
        assert_eq!(in_progress(&none, false).0, C::Processed);
        assert_eq!(in_progress(&marked, false).0, C::NotProcessed);
        // Other statuses keep their rows.
        let c = classify(Ok((StatusCode::OK, &none)), true, now);
        assert_eq!(c.class, C::Processed);
    }

    #[test]
    fn retry_after_as_http_date() {
        let now = humantime::parse_rfc3339("2015-10-21T07:27:50Z").unwrap();
        let h = headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]);
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(10)));
        let later = humantime::parse_rfc3339("2015-10-21T08:00:00Z").unwrap();
        assert_eq!(retry_after(&h, later), Some(Duration::ZERO));
        let h = headers(&[("retry-after", "soon")]);
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn only_unknown_and_processed_pin() {
        assert_eq!(C::NotSent.reached(), Reached::No);
        assert_eq!(C::NotProcessed.reached(), Reached::No);
        assert_eq!(C::Unknown.reached(), Reached::Maybe);
        assert_eq!(C::Processed.reached(), Reached::Maybe);
    }
}
