//! The Adyen-like API of the sandbox (Checkout API): `POST /payments` authorises a card payment and
//! `POST /payments/{pspReference}/captures` captures it, with or without a `/vNN` version prefix.
//! It shows that the sandbox's engine is not Stripe-only.
//!
//! A payment is captured at once unless `additionalData.manualCapture` is `"true"` (then it waits for
//! a capture). Stripe's decline test card numbers are `Refused`. Errors are Adyen's
//! `{status, errorCode, message, errorType}`.

use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::model::{test_card_decline, Answer, Book, Call, Failure, Model};

/// The Adyen API model.
#[derive(Debug, Default, Clone, Copy)]
pub struct Adyen;

/// The path without a `/vNN` version prefix, when it is one of Adyen's payment paths.
fn unversioned(path: &str) -> Option<&str> {
    let rest = match path.strip_prefix("/v") {
        Some(r) => {
            let digits = r.len() - r.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits == 0 {
                return None;
            }
            &r[digits..]
        }
        None => path,
    };
    (rest == "/payments" || rest.starts_with("/payments/")).then_some(rest)
}

fn error(status: StatusCode, code: &str, message: &str, kind: &str) -> Answer {
    Answer::json(
        status,
        &json!({ "status": status.as_u16(), "errorCode": code, "message": message, "errorType": kind }),
    )
}

impl Adyen {
    fn authorise(&self, book: &mut Book, provider: &str, call: &Call<'_>) -> Answer {
        let value = call
            .param("amount[value]")
            .and_then(|v| v.parse::<i64>().ok());
        let (Some(value), Some(currency)) = (value, call.param("amount[currency]")) else {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "100",
                "Required field 'amount' is not provided.",
                "validation",
            );
        };
        let psp = book.new_id("psp", provider);
        let number = call
            .param("paymentMethod[number]")
            .or_else(|| call.param("paymentMethod[encryptedCardNumber]"))
            .unwrap_or("");
        let manual = call.param("additionalData[manualCapture]") == Some("true");
        let refused = test_card_decline(number);
        let result = if refused.is_some() {
            "Refused"
        } else {
            "Authorised"
        };
        let mut payment = json!({
            "pspReference": psp,
            "resultCode": result,
            "amount": { "value": value, "currency": currency },
            "merchantReference": call.param("reference"),
        });
        if let Some((_, reason)) = refused {
            payment["refusalReason"] = match reason {
                "insufficient_funds" => "Not enough balance",
                "expired_card" => "Expired Card",
                "incorrect_cvc" => "CVC Declined",
                _ => "Refused",
            }
            .into();
        }
        let mut stored = payment.clone();
        stored["object"] = "adyen_payment".into();
        stored["captured"] = (refused.is_none() && !manual).into();
        book.put(&psp, stored);
        Answer {
            charged: refused.is_none() && !manual,
            ..Answer::json(StatusCode::OK, &payment)
        }
    }

    fn capture(&self, book: &mut Book, provider: &str, psp: &str, call: &Call<'_>) -> Answer {
        let Some(mut payment) = book
            .objects
            .get(psp)
            .filter(|o| o["object"] == "adyen_payment")
            .cloned()
        else {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "167",
                "Original pspReference required for this operation",
                "validation",
            );
        };
        if payment["resultCode"] != "Authorised" || payment["captured"] == true {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "167",
                "This payment cannot be captured",
                "validation",
            );
        }
        payment["captured"] = true.into();
        book.put(psp, payment.clone());
        let capture = json!({
            "pspReference": book.new_id("psp", provider),
            "paymentPspReference": psp,
            "merchantAccount": call.param("merchantAccount"),
            "status": "received",
            "amount": call.json.as_ref().and_then(|j| j.get("amount")).cloned().unwrap_or_else(|| payment["amount"].clone()),
        });
        Answer {
            charged: true,
            ..Answer::json(StatusCode::CREATED, &capture)
        }
    }
}

impl Model for Adyen {
    fn serves(&self, path: &str) -> bool {
        unversioned(path).is_some()
    }

    fn call(&self, book: &mut Book, provider: &str, call: &Call<'_>) -> Answer {
        let path = unversioned(call.path).unwrap_or("");
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (call.method, segments.as_slice()) {
            (&Method::POST, ["payments"]) => self.authorise(book, provider, call),
            (&Method::POST, ["payments", psp, "captures"]) => {
                self.capture(book, provider, psp, call)
            }
            _ => error(StatusCode::NOT_FOUND, "000", "Not found", "validation"),
        }
    }

    fn failure(&self, failure: Failure, message: &str) -> (StatusCode, Value) {
        let (status, code, kind) = match failure {
            Failure::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limited", "internal"),
            Failure::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "000", "internal"),
            Failure::KeyInUse => (StatusCode::CONFLICT, "704", "validation"),
            Failure::KeyReused => (StatusCode::UNPROCESSABLE_ENTITY, "704", "validation"),
            Failure::BadRequest => (StatusCode::BAD_REQUEST, "702", "validation"),
        };
        let a = error(status, code, message, kind);
        (
            status,
            serde_json::from_slice(&a.body).unwrap_or(Value::Null),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adyen_paths_with_and_without_a_version() {
        assert_eq!(unversioned("/payments"), Some("/payments"));
        assert_eq!(
            unversioned("/v71/payments/psp_1/captures"),
            Some("/payments/psp_1/captures")
        );
        assert_eq!(unversioned("/v1/payment_intents"), None);
        assert_eq!(unversioned("/vx/payments"), None);
    }
}
