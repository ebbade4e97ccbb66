//! The proxy's own answers in a provider's dialect (`routes[N].errors`), so that the shop's official
//! SDK raises its own typed error for them, with the headers readable.
//!
//! Stripe's SDKs pick the exception from the status and `error.type` (400/404 + `idempotency_error`
//! is an `IdempotencyError`, 429 a `RateLimitError`, other statuses an `APIError`), and retry by
//! `Stripe-Should-Retry`. So the Stripe dialect answers a reused key with 400 (as Stripe does, where
//! the problem dialect says 422) and a body over `max_body` with 400 (413 there), and sets `Stripe-Should-Retry` to what is true: `true` where a retry
//! with the same key is safe, `false` where it never helps. Adyen's libraries read
//! `{status, errorCode, message, errorType}`. Everything here is a pure function of the kind.

use http::StatusCode;

use crate::config::ErrorDialect;
use crate::error::ErrorKind;

/// What Stripe's SDKs need to know about one kind of answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StripeError {
    /// The status line (Stripe's own for the same situation).
    pub status: StatusCode,
    /// `error.type`.
    pub kind: &'static str,
    /// `error.code`: Stripe's code where Stripe has one, else switchyard's kind.
    pub code: &'static str,
    /// `Stripe-Should-Retry`, where the answer is known.
    pub should_retry: Option<bool>,
}

/// The Stripe view of `kind` (answered by the problem dialect with `status`).
pub fn stripe(kind: ErrorKind, status: StatusCode) -> StripeError {
    let e = |kind, code, should_retry| StripeError {
        status,
        kind,
        code,
        should_retry,
    };
    const INVALID: &str = "invalid_request_error";
    const API: &str = "api_error";
    match kind {
        ErrorKind::NoRoute => e(INVALID, "resource_missing", Some(false)),
        // The SDKs type only 400 and 404 as invalid requests; a 413 would be an untyped APIError.
        ErrorKind::BodyTooLarge => StripeError {
            status: StatusCode::BAD_REQUEST,
            ..e(INVALID, kind.as_str(), Some(false))
        },
        ErrorKind::BadRequest | ErrorKind::IdempotencyKeyRequired => {
            e(INVALID, kind.as_str(), Some(false))
        }
        // The SDKs type only 400 and 404 as invalid requests.
        ErrorKind::NotImplemented => StripeError {
            status: StatusCode::BAD_REQUEST,
            ..e(INVALID, kind.as_str(), Some(false))
        },
        // Nothing was sent: the same request again is safe.
        ErrorKind::BodyTimeout => StripeError {
            status: StatusCode::BAD_REQUEST,
            ..e(INVALID, kind.as_str(), Some(true))
        },
        ErrorKind::IdempotencyMismatch => StripeError {
            status: StatusCode::BAD_REQUEST,
            ..e("idempotency_error", kind.as_str(), Some(false))
        },
        ErrorKind::IdempotencyConflict => {
            e("idempotency_error", "idempotency_key_in_use", Some(true))
        }
        ErrorKind::RateLimited | ErrorKind::ProviderQuotaExhausted => {
            e("rate_limit_error", "rate_limit", Some(true))
        }
        // Nothing was sent, or the outcome is unknown and the provider deduplicates the key: a retry
        // with the same key is safe either way.
        ErrorKind::ProviderUnreachable
        | ErrorKind::ProviderTls
        | ErrorKind::ProviderTimeout
        | ErrorKind::ProviderFailed
        | ErrorKind::ProviderRefused
        | ErrorKind::DeadlineExceeded
        | ErrorKind::NoHealthyProvider
        | ErrorKind::PinnedProviderUnavailable
        | ErrorKind::StateUnavailable
        | ErrorKind::Overloaded
        | ErrorKind::ShuttingDown
        | ErrorKind::OutcomeUnknown => e(API, kind.as_str(), Some(true)),
        ErrorKind::Internal => e(API, kind.as_str(), None),
    }
}

/// Stripe's documentation page for `code`, or its error reference for switchyard's own codes.
pub fn stripe_doc_url(code: &str) -> String {
    match code {
        "idempotency_key_in_use" | "rate_limit" | "resource_missing" => format!(
            "https://docs.stripe.com/error-codes/{}",
            code.replace('_', "-")
        ),
        _ => "https://docs.stripe.com/api/errors".to_owned(),
    }
}

/// Adyen's `errorType` for `kind`.
pub fn adyen_error_type(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::NoRoute
        | ErrorKind::BodyTooLarge
        | ErrorKind::BadRequest
        | ErrorKind::IdempotencyKeyRequired
        | ErrorKind::IdempotencyMismatch
        | ErrorKind::BodyTimeout
        | ErrorKind::NotImplemented => "validation",
        ErrorKind::IdempotencyConflict
        | ErrorKind::RateLimited
        | ErrorKind::ProviderQuotaExhausted
        | ErrorKind::ProviderUnreachable
        | ErrorKind::ProviderTls
        | ErrorKind::ProviderTimeout
        | ErrorKind::ProviderFailed
        | ErrorKind::ProviderRefused
        | ErrorKind::DeadlineExceeded
        | ErrorKind::NoHealthyProvider
        | ErrorKind::PinnedProviderUnavailable
        | ErrorKind::OutcomeUnknown
        | ErrorKind::StateUnavailable
        | ErrorKind::Overloaded
        | ErrorKind::ShuttingDown
        | ErrorKind::Internal => "internal",
    }
}

/// The body, content type and status of an answer of `kind` in `dialect` (`None` for `problem`,
/// which the caller writes).
pub fn render(
    dialect: ErrorDialect,
    kind: ErrorKind,
    status: StatusCode,
    message: &str,
    request_id: Option<&str>,
) -> Option<(StatusCode, serde_json::Value, Option<bool>)> {
    match dialect {
        ErrorDialect::Problem => None,
        ErrorDialect::Stripe => {
            let s = stripe(kind, status);
            let mut error = serde_json::json!({
                "type": s.kind,
                "code": s.code,
                "message": message,
                "doc_url": stripe_doc_url(s.code),
            });
            if let Some(id) = request_id {
                error["request_id"] = id.into();
            }
            Some((
                s.status,
                serde_json::json!({ "error": error }),
                s.should_retry,
            ))
        }
        ErrorDialect::Adyen => Some((
            status,
            serde_json::json!({
                "status": status.as_u16(),
                "errorCode": kind.as_str(),
                "message": message,
                "errorType": adyen_error_type(kind),
            }),
            None,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::rescue::status_and_title;

    fn stripe_of(kind: ErrorKind) -> StripeError {
        stripe(kind, status_and_title(kind).0)
    }

    #[test]
    fn stripe_types_codes_and_retry_hints_per_kind() {
        use ErrorKind::*;
        let table: [(ErrorKind, u16, &str, &str, Option<bool>); 23] = [
            (
                NoRoute,
                404,
                "invalid_request_error",
                "resource_missing",
                Some(false),
            ),
            (
                BodyTooLarge,
                400,
                "invalid_request_error",
                "body_too_large",
                Some(false),
            ),
            (
                BadRequest,
                400,
                "invalid_request_error",
                "bad_request",
                Some(false),
            ),
            (
                IdempotencyKeyRequired,
                400,
                "invalid_request_error",
                "idempotency_key_required",
                Some(false),
            ),
            (
                IdempotencyMismatch,
                400,
                "idempotency_error",
                "idempotency_mismatch",
                Some(false),
            ),
            (
                IdempotencyConflict,
                409,
                "idempotency_error",
                "idempotency_key_in_use",
                Some(true),
            ),
            (
                RateLimited,
                429,
                "rate_limit_error",
                "rate_limit",
                Some(true),
            ),
            (
                ProviderQuotaExhausted,
                429,
                "rate_limit_error",
                "rate_limit",
                Some(true),
            ),
            (
                ProviderUnreachable,
                502,
                "api_error",
                "provider_unreachable",
                Some(true),
            ),
            (ProviderTls, 502, "api_error", "provider_tls", Some(true)),
            (
                ProviderTimeout,
                504,
                "api_error",
                "provider_timeout",
                Some(true),
            ),
            (
                ProviderFailed,
                502,
                "api_error",
                "provider_failed",
                Some(true),
            ),
            (
                ProviderRefused,
                503,
                "api_error",
                "provider_refused",
                Some(true),
            ),
            (
                DeadlineExceeded,
                504,
                "api_error",
                "deadline_exceeded",
                Some(true),
            ),
            (
                NoHealthyProvider,
                503,
                "api_error",
                "no_healthy_provider",
                Some(true),
            ),
            (
                PinnedProviderUnavailable,
                503,
                "api_error",
                "pinned_provider_unavailable",
                Some(true),
            ),
            (
                OutcomeUnknown,
                502,
                "api_error",
                "outcome_unknown",
                Some(true),
            ),
            (Internal, 500, "api_error", "internal", None),
            (
                StateUnavailable,
                503,
                "api_error",
                "state_unavailable",
                Some(true),
            ),
            (
                BodyTimeout,
                400,
                "invalid_request_error",
                "body_timeout",
                Some(true),
            ),
            (Overloaded, 503, "api_error", "overloaded", Some(true)),
            (ShuttingDown, 503, "api_error", "shutting_down", Some(true)),
            (
                NotImplemented,
                400,
                "invalid_request_error",
                "not_implemented",
                Some(false),
            ),
        ];
        assert_eq!(table.len(), ErrorKind::ALL.len());
        for (kind, status, ty, code, retry) in table {
            let s = stripe_of(kind);
            assert_eq!(
                (s.status.as_u16(), s.kind, s.code, s.should_retry),
                (status, ty, code, retry),
                "{kind}"
            );
        }
    }

    #[test]
    fn stripe_envelope_has_type_code_message_and_doc_url() {
        let (status, body, retry) = render(
            ErrorDialect::Stripe,
            ErrorKind::IdempotencyConflict,
            StatusCode::CONFLICT,
            "in flight",
            Some("req_1"),
        )
        .unwrap();
        assert_eq!(status, 409);
        assert_eq!(retry, Some(true));
        assert_eq!(body["error"]["type"], "idempotency_error");
        assert_eq!(body["error"]["code"], "idempotency_key_in_use");
        assert_eq!(body["error"]["message"], "in flight");
        assert_eq!(
            body["error"]["doc_url"],
            "https://docs.stripe.com/error-codes/idempotency-key-in-use"
        );
        assert_eq!(body["error"]["request_id"], "req_1");
    }

    #[test]
    fn adyen_body_per_kind_keeps_the_status() {
        for kind in ErrorKind::ALL {
            let status = status_and_title(kind).0;
            let (s, body, retry) = render(ErrorDialect::Adyen, kind, status, "m", None).unwrap();
            assert_eq!(s, status, "{kind}");
            assert_eq!(retry, None);
            assert_eq!(body["status"], status.as_u16());
            assert_eq!(body["errorCode"], kind.as_str());
            assert_eq!(body["message"], "m");
            let ty = body["errorType"].as_str().unwrap();
            // A method or coding the proxy does not forward is the request's fault, though 501.
            let shops = status.is_client_error() || kind == ErrorKind::NotImplemented;
            let expected = if shops && status != 409 && status != 429 {
                "validation"
            } else {
                "internal"
            };
            assert_eq!(ty, expected, "{kind}");
        }
    }

    #[test]
    fn problem_is_written_by_the_caller() {
        assert!(render(
            ErrorDialect::Problem,
            ErrorKind::Internal,
            StatusCode::INTERNAL_SERVER_ERROR,
            "m",
            None
        )
        .is_none());
    }
}
