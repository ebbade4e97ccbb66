//! `ProxyError`: every way the proxy itself can fail a request, as one closed enum.
//!
//! Each error knows its [`ErrorKind`] (a closed set: it feeds metric labels and the
//! `x-switchyard-error` header), where it came from ([`Origin`]), and whether the request can have
//! reached a provider ([`ProxyError::reached`]): an error that may follow an attempt which reached a
//! provider carries the attempt loop's answer with it, so the shop is told "outcome unknown" from the
//! error alone. The mapping from kinds to HTTP answers lives in one place,
//! `layers::rescue`.

use std::time::Duration;

use crate::body::BoxError;

/// A request the proxy could not complete, and why.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route in the current config matches the request.
    #[error("no route matches {method} {path}")]
    NoRoute {
        /// The request method.
        method: http::Method,
        /// The request path (never the query string, which may carry identifiers).
        path: String,
    },
    /// The request body is larger than the route's `max_body`.
    #[error("request body exceeds the route's max_body of {limit} bytes")]
    BodyTooLarge {
        /// The route's limit in bytes.
        limit: usize,
    },
    /// The shop's request could not be read or is not acceptable.
    #[error("bad request: {reason}")]
    BadRequest {
        /// What is wrong with it, in words safe to show.
        reason: String,
    },
    /// No connection to the provider could be made (DNS, refused, connect timeout).
    #[error("provider {provider} is unreachable: {source}")]
    ProviderUnreachable {
        /// The provider's config name.
        provider: String,
        /// The connect error.
        #[source]
        source: BoxError,
    },
    /// The TLS handshake with the provider failed (bad certificate, wrong CA, protocol).
    #[error("TLS handshake with provider {provider} failed: {source}")]
    ProviderTls {
        /// The provider's config name.
        provider: String,
        /// The TLS error.
        #[source]
        source: BoxError,
    },
    /// The provider did not answer within its attempt `timeout`.
    #[error("provider {provider} did not answer within {}", Human(*timeout))]
    ProviderTimeout {
        /// The provider's config name.
        provider: String,
        /// The attempt timeout that ran out.
        timeout: Duration,
    },
    /// The exchange with the provider failed after it was connected (reset, protocol error).
    #[error("provider {provider} failed the exchange: {source}")]
    ProviderFailed {
        /// The provider's config name.
        provider: String,
        /// The transport error.
        #[source]
        source: BoxError,
    },
    /// The provider refused the request without processing it (HTTP/2 REFUSED_STREAM or GOAWAY).
    #[error("provider {provider} refused the request without processing it")]
    ProviderRefused {
        /// The provider's config name.
        provider: String,
    },
    /// The route's overall `timeout` ran out.
    #[error("the route's timeout of {} ran out", Human(*timeout))]
    DeadlineExceeded {
        /// The route timeout.
        timeout: Duration,
        /// Whether an attempt may have reached a provider before it ran out.
        reached: Reached,
    },
    /// The route's rate limit refused the request.
    #[error("the route's rate limit is exceeded; retry in {}", RetryIn(*retry_after))]
    RateLimited {
        /// When a request may be allowed again.
        retry_after: Duration,
    },
    /// No target of the route can take the request now (breakers open, checks failing, drained,
    /// throttled).
    #[error("no provider of this route can take requests now; retry in {}", RetryIn(*retry_after))]
    NoHealthyProvider {
        /// When one may take requests again.
        retry_after: Duration,
    },
    /// Every provider that could take the request is at its account quota.
    #[error("provider {provider} is at its rate quota; retry in {}", RetryIn(*retry_after))]
    ProviderQuotaExhausted {
        /// The provider's config name.
        provider: String,
        /// When it has a slot again.
        retry_after: Duration,
        /// Whether an earlier attempt of the operation may have reached it.
        reached: Reached,
    },
    /// A POST/PATCH on a route that requires an idempotency key came without one.
    #[error("this route requires an idempotency key in the {header} header")]
    IdempotencyKeyRequired {
        /// The header's name.
        header: String,
    },
    /// Another request with the same idempotency key is still in flight.
    #[error(
        "a request with this idempotency key is still in flight; retry later with the same key"
    )]
    IdempotencyConflict,
    /// The resolver's resend found no record whose outcome is unknown (settled meanwhile, or gone with
    /// its ttl): nothing was sent, since a resend without the record could be a new payment.
    #[error("the operation has no unknown outcome to resolve any more")]
    NothingToResolve,
    /// The idempotency key was used before with another payload.
    #[error("this idempotency key was used with another request (method, path or body differ)")]
    IdempotencyMismatch,
    /// The operation is pinned to a provider that cannot take it now; no other provider may.
    #[error("this payment is pinned to provider {provider}, which cannot take requests now; retry in {} with the same key", RetryIn(*retry_after))]
    PinnedProviderUnavailable {
        /// The provider holding the operation.
        provider: String,
        /// When it may take requests again.
        retry_after: Duration,
        /// Whether an earlier attempt of the operation may have reached it (its outcome is unknown).
        reached: Reached,
    },
    /// The provider may have executed the request, and no retry settled it.
    #[error("the outcome at provider {provider} is unknown{}; retry with the same idempotency key or reconcile", match status { Some(s) => format!(" (it answered {s})"), None => String::new() })]
    OutcomeUnknown {
        /// The provider.
        provider: String,
        /// The provider's status, when its last answer was a 5xx (or its "still processing" 409).
        status: Option<u16>,
        /// When the shop should retry with the same key: the provider's `Retry-After` (capped), else
        /// a second.
        retry_after: Duration,
    },
    /// The store of payment state (idempotency records, pins) could not answer; nothing was sent
    /// anywhere, least of all to another provider.
    #[error("the payment state cannot be reached ({reason}); retry in {retry_after:?} with the same key")]
    StateUnavailable {
        /// What failed, in words safe to show.
        reason: String,
        /// When the shop may try again.
        retry_after: Duration,
    },
    /// The proxy itself failed (a bug); the detail is logged, not shown.
    #[error("internal error: {0}")]
    Internal(String),
    /// The request body did not arrive in full within the listener's `body_read_timeout`.
    #[error("the request body did not arrive within {timeout:?}")]
    BodyTimeout {
        /// The listener's body read timeout.
        timeout: Duration,
    },
    /// The proxy is at a process-wide bound (buffered bytes) and refuses more work for now.
    #[error("the proxy is overloaded ({reason}); retry shortly")]
    Overloaded {
        /// Which bound (`buffered_bytes`).
        reason: &'static str,
    },
    /// The request asks for something the proxy does not forward: a method outside the standard ones,
    /// or a transfer coding other than `chunked` (RFC 9112 §6.1). Answered locally, never sent.
    #[error("not implemented: {reason}")]
    NotImplemented {
        /// What is not supported, in words safe to show.
        reason: String,
    },
    /// The drain timeout of a shutdown ran out while the request was in flight.
    #[error("the proxy is shutting down and its drain timeout ran out before this request ended")]
    ShuttingDown {
        /// Whether an attempt may have reached a provider before the cut.
        reached: Reached,
    },
}

/// The closed set of error kinds, used as metric label values and in the `x-switchyard-error` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// See [`ProxyError::NoRoute`].
    NoRoute,
    /// See [`ProxyError::BodyTooLarge`].
    BodyTooLarge,
    /// See [`ProxyError::BadRequest`].
    BadRequest,
    /// See [`ProxyError::ProviderUnreachable`].
    ProviderUnreachable,
    /// See [`ProxyError::ProviderTls`].
    ProviderTls,
    /// See [`ProxyError::ProviderTimeout`].
    ProviderTimeout,
    /// See [`ProxyError::ProviderFailed`].
    ProviderFailed,
    /// See [`ProxyError::ProviderRefused`].
    ProviderRefused,
    /// See [`ProxyError::DeadlineExceeded`].
    DeadlineExceeded,
    /// See [`ProxyError::RateLimited`].
    RateLimited,
    /// See [`ProxyError::NoHealthyProvider`].
    NoHealthyProvider,
    /// See [`ProxyError::ProviderQuotaExhausted`].
    ProviderQuotaExhausted,
    /// See [`ProxyError::IdempotencyKeyRequired`].
    IdempotencyKeyRequired,
    /// See [`ProxyError::IdempotencyConflict`].
    IdempotencyConflict,
    /// See [`ProxyError::IdempotencyMismatch`].
    IdempotencyMismatch,
    /// See [`ProxyError::PinnedProviderUnavailable`].
    PinnedProviderUnavailable,
    /// See [`ProxyError::OutcomeUnknown`].
    OutcomeUnknown,
    /// See [`ProxyError::StateUnavailable`].
    StateUnavailable,
    /// See [`ProxyError::Internal`].
    Internal,
    /// See [`ProxyError::BodyTimeout`].
    BodyTimeout,
    /// See [`ProxyError::Overloaded`].
    Overloaded,
    /// See [`ProxyError::ShuttingDown`].
    ShuttingDown,
    /// See [`ProxyError::NotImplemented`].
    NotImplemented,
}

/// Where an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The shop's request is at fault.
    Shop,
    /// The proxy (config, deadline, a bug).
    Proxy,
    /// The provider or the network to it.
    Provider,
}

/// Whether the request may have reached the provider, as far as this one error tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    /// Nothing was sent to any provider.
    No,
    /// The request may have been sent and processed: its outcome is unknown.
    Maybe,
}

impl Reached {
    /// `Maybe` when `maybe`.
    pub fn maybe(maybe: bool) -> Self {
        if maybe {
            Self::Maybe
        } else {
            Self::No
        }
    }
}

impl ProxyError {
    /// The error's kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::NoRoute { .. } => ErrorKind::NoRoute,
            Self::BodyTooLarge { .. } => ErrorKind::BodyTooLarge,
            Self::BadRequest { .. } => ErrorKind::BadRequest,
            Self::ProviderUnreachable { .. } => ErrorKind::ProviderUnreachable,
            Self::ProviderTls { .. } => ErrorKind::ProviderTls,
            Self::ProviderTimeout { .. } => ErrorKind::ProviderTimeout,
            Self::ProviderFailed { .. } => ErrorKind::ProviderFailed,
            Self::ProviderRefused { .. } => ErrorKind::ProviderRefused,
            Self::DeadlineExceeded { .. } => ErrorKind::DeadlineExceeded,
            Self::RateLimited { .. } => ErrorKind::RateLimited,
            Self::NoHealthyProvider { .. } => ErrorKind::NoHealthyProvider,
            Self::ProviderQuotaExhausted { .. } => ErrorKind::ProviderQuotaExhausted,
            Self::IdempotencyKeyRequired { .. } => ErrorKind::IdempotencyKeyRequired,
            Self::IdempotencyConflict => ErrorKind::IdempotencyConflict,
            Self::IdempotencyMismatch => ErrorKind::IdempotencyMismatch,
            Self::PinnedProviderUnavailable { .. } => ErrorKind::PinnedProviderUnavailable,
            Self::OutcomeUnknown { .. } => ErrorKind::OutcomeUnknown,
            Self::StateUnavailable { .. } => ErrorKind::StateUnavailable,
            Self::Internal(_) | Self::NothingToResolve => ErrorKind::Internal,
            Self::BodyTimeout { .. } => ErrorKind::BodyTimeout,
            Self::Overloaded { .. } => ErrorKind::Overloaded,
            Self::ShuttingDown { .. } => ErrorKind::ShuttingDown,
            Self::NotImplemented { .. } => ErrorKind::NotImplemented,
        }
    }

    /// When the shop may try again, for the errors that know (sent as `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after }
            | Self::NoHealthyProvider { retry_after }
            | Self::ProviderQuotaExhausted { retry_after, .. }
            | Self::PinnedProviderUnavailable { retry_after, .. }
            | Self::StateUnavailable { retry_after, .. }
            | Self::OutcomeUnknown { retry_after, .. } => Some(*retry_after),
            Self::IdempotencyConflict | Self::Overloaded { .. } => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// Whether the request may have reached a provider (unknown outcome) or certainly did not: the
    /// answer the error carries, or the one its kind implies.
    pub fn reached(&self) -> Reached {
        match self {
            Self::DeadlineExceeded { reached, .. }
            | Self::ProviderQuotaExhausted { reached, .. }
            | Self::PinnedProviderUnavailable { reached, .. }
            | Self::ShuttingDown { reached } => return *reached,
            _ => {}
        }
        match self.kind() {
            ErrorKind::ProviderTimeout | ErrorKind::ProviderFailed | ErrorKind::OutcomeUnknown => {
                Reached::Maybe
            }
            ErrorKind::NoRoute
            | ErrorKind::BodyTooLarge
            | ErrorKind::BadRequest
            | ErrorKind::ProviderUnreachable
            | ErrorKind::ProviderTls
            | ErrorKind::ProviderRefused
            | ErrorKind::DeadlineExceeded
            | ErrorKind::RateLimited
            | ErrorKind::NoHealthyProvider
            | ErrorKind::ProviderQuotaExhausted
            | ErrorKind::IdempotencyKeyRequired
            | ErrorKind::IdempotencyConflict
            | ErrorKind::IdempotencyMismatch
            | ErrorKind::PinnedProviderUnavailable
            | ErrorKind::StateUnavailable
            | ErrorKind::Internal
            | ErrorKind::BodyTimeout
            | ErrorKind::Overloaded
            | ErrorKind::NotImplemented
            // Carried by the error itself (above).
            | ErrorKind::ShuttingDown => Reached::No,
        }
    }
}

impl ErrorKind {
    /// Every kind, for metrics that want a zero for each.
    pub const ALL: [ErrorKind; 23] = [
        Self::NoRoute,
        Self::BodyTooLarge,
        Self::BadRequest,
        Self::ProviderUnreachable,
        Self::ProviderTls,
        Self::ProviderTimeout,
        Self::ProviderFailed,
        Self::ProviderRefused,
        Self::DeadlineExceeded,
        Self::RateLimited,
        Self::NoHealthyProvider,
        Self::ProviderQuotaExhausted,
        Self::IdempotencyKeyRequired,
        Self::IdempotencyConflict,
        Self::IdempotencyMismatch,
        Self::PinnedProviderUnavailable,
        Self::OutcomeUnknown,
        Self::StateUnavailable,
        Self::Internal,
        Self::BodyTimeout,
        Self::Overloaded,
        Self::ShuttingDown,
        Self::NotImplemented,
    ];

    /// The kind's stable name, as used in headers, metric labels and problem types.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::BodyTooLarge => "body_too_large",
            Self::BadRequest => "bad_request",
            Self::ProviderUnreachable => "provider_unreachable",
            Self::ProviderTls => "provider_tls",
            Self::ProviderTimeout => "provider_timeout",
            Self::ProviderFailed => "provider_failed",
            Self::ProviderRefused => "provider_refused",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::RateLimited => "rate_limited",
            Self::NoHealthyProvider => "no_healthy_provider",
            Self::ProviderQuotaExhausted => "provider_quota_exhausted",
            Self::IdempotencyKeyRequired => "idempotency_key_required",
            Self::IdempotencyConflict => "idempotency_conflict",
            Self::IdempotencyMismatch => "idempotency_mismatch",
            Self::PinnedProviderUnavailable => "pinned_provider_unavailable",
            Self::OutcomeUnknown => "outcome_unknown",
            Self::StateUnavailable => "state_unavailable",
            Self::Internal => "internal",
            Self::BodyTimeout => "body_timeout",
            Self::Overloaded => "overloaded",
            Self::ShuttingDown => "shutting_down",
            Self::NotImplemented => "not_implemented",
        }
    }

    /// Where errors of this kind come from.
    pub fn origin(self) -> Origin {
        match self {
            Self::NoRoute
            | Self::BodyTooLarge
            | Self::BadRequest
            | Self::RateLimited
            | Self::IdempotencyKeyRequired
            | Self::IdempotencyConflict
            | Self::IdempotencyMismatch
            | Self::BodyTimeout
            | Self::NotImplemented => Origin::Shop,
            Self::DeadlineExceeded
            | Self::StateUnavailable
            | Self::Internal
            | Self::Overloaded
            | Self::ShuttingDown => Origin::Proxy,
            Self::NoHealthyProvider
            | Self::ProviderQuotaExhausted
            | Self::PinnedProviderUnavailable
            | Self::OutcomeUnknown => Origin::Provider,
            Self::ProviderUnreachable
            | Self::ProviderTls
            | Self::ProviderTimeout
            | Self::ProviderFailed
            | Self::ProviderRefused => Origin::Provider,
        }
    }
}

/// A duration for people: `250ms`, `1.5s`, `10s`, `2m 30s` (never `994.516443ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Human(pub Duration);

impl std::fmt::Display for Human {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_millis();
        if ms < 1_000 {
            return write!(f, "{ms}ms");
        }
        let tenths = (ms + 50) / 100;
        if tenths < 600 {
            return match tenths % 10 {
                0 => write!(f, "{}s", tenths / 10),
                t => write!(f, "{}.{t}s", tenths / 10),
            };
        }
        let secs = (ms + 500) / 1_000;
        match (secs / 60, secs % 60) {
            (m, 0) => write!(f, "{m}m"),
            (m, s) => write!(f, "{m}m {s}s"),
        }
    }
}

/// A wait before a retry, as the shop should read it: whole seconds rounded up and at least 1, the
/// same figure as the `Retry-After` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryIn(pub Duration);

impl RetryIn {
    /// The wait in whole seconds, rounded up, at least 1.
    pub fn secs(self) -> u64 {
        (self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0)).max(1)
    }
}

impl std::fmt::Display for RetryIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", Human(Duration::from_secs(self.secs())))
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_details_read_like_people_write_them() {
        let ms = Duration::from_millis;
        assert_eq!(Human(ms(250)).to_string(), "250ms");
        assert_eq!(Human(ms(1_000)).to_string(), "1s");
        assert_eq!(Human(ms(1_520)).to_string(), "1.5s");
        assert_eq!(Human(ms(30_000)).to_string(), "30s");
        assert_eq!(Human(ms(150_000)).to_string(), "2m 30s");
        assert_eq!(Human(ms(120_000)).to_string(), "2m");
        assert_eq!(RetryIn(Duration::from_nanos(994_516_443)).to_string(), "1s");
        assert_eq!(RetryIn(ms(0)).to_string(), "1s");
        assert_eq!(RetryIn(ms(2_001)).to_string(), "3s");
        let e = ProxyError::RateLimited {
            retry_after: Duration::from_nanos(994_516_443),
        };
        assert_eq!(
            e.to_string(),
            "the route's rate limit is exceeded; retry in 1s"
        );
        let e = ProxyError::ProviderTimeout {
            provider: "psp".into(),
            timeout: ms(2_500),
        };
        assert_eq!(e.to_string(), "provider psp did not answer within 2.5s");
    }
}
