//! The Stripe-like API of the sandbox: the calls a shop makes, with Stripe's object types, state
//! moves and error envelope.
//!
//! - `POST /v1/payment_intents` creates a PaymentIntent. It is confirmed at once when `confirm=true`,
//!   or when neither `confirm` nor `payment_method` is given (card data, or the sandbox's default
//!   card); otherwise it waits in `requires_confirmation` / `requires_payment_method`.
//! - Confirming takes the money (`succeeded`), or with `capture_method=manual` only authorises it
//!   (`requires_capture`) and `…/capture` takes it. `…/cancel` cancels what is not yet paid.
//! - Stripe's decline test cards (by number in `payment_method_data[card][number]` or `card[number]`,
//!   or as `pm_card_chargeDeclined…`) answer 402 `card_error` and leave the intent in
//!   `requires_payment_method`. Card numbers are never stored.
//! - `POST /v1/refunds` refunds a succeeded PaymentIntent (all, or `amount`) and answers a Refund.
//! - `POST /v1/customers` creates a Customer. `GET` reads any object back; `GET /v1/payment_intents`
//!   lists them.

use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::model::{test_card_decline, Answer, Book, Call, Failure, Model};

/// The Stripe API model.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stripe;

fn error(status: StatusCode, kind: &str, code: Option<&str>, message: &str) -> Answer {
    let mut e = json!({ "type": kind, "message": message });
    if let Some(code) = code {
        e["code"] = code.into();
        e["doc_url"] = format!(
            "https://docs.stripe.com/error-codes/{}",
            code.replace('_', "-")
        )
        .into();
    }
    Answer::json(status, &json!({ "error": e }))
}

fn missing(what: &str, id: &str) -> Answer {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        Some("resource_missing"),
        &format!("No such {what}: '{id}'"),
    )
}

fn unexpected_state(pi: &Value, action: &str) -> Answer {
    let status = pi["status"].as_str().unwrap_or("");
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        Some("payment_intent_unexpected_state"),
        &format!("You cannot {action} this PaymentIntent because it has a status of {status}."),
    )
}

/// The card or payment method a call names, if any.
fn card(call: &Call<'_>) -> Option<String> {
    [
        "payment_method_data[card][number]",
        "card[number]",
        "payment_method",
    ]
    .iter()
    .find_map(|k| call.param(k))
    .map(str::to_owned)
}

fn amount(call: &Call<'_>, name: &str) -> Result<Option<i64>, Answer> {
    match call.param(name) {
        None => Ok(None),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|a| *a > 0)
            .map(Some)
            .ok_or_else(|| {
                error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    Some("parameter_invalid_integer"),
                    &format!("Invalid positive integer: {name}"),
                )
            }),
    }
}

impl Stripe {
    fn create_intent(&self, book: &mut Book, provider: &str, call: &Call<'_>) -> Answer {
        let amount = match amount(call, "amount") {
            Ok(Some(a)) => a,
            Ok(None) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    Some("parameter_missing"),
                    "Missing required param: amount.",
                )
            }
            Err(e) => return e,
        };
        let id = book.new_id("pi", provider);
        let currency = call
            .param("currency")
            .filter(|c| c.chars().all(|ch| ch.is_ascii_alphabetic()))
            .map(str::to_ascii_lowercase)
            .unwrap_or_else(|| "eur".into());
        let card = card(call);
        let pi = json!({
            "id": id,
            "object": "payment_intent",
            "amount": amount,
            "amount_received": 0,
            "amount_refunded": 0,
            "currency": currency,
            "capture_method": if call.param("capture_method") == Some("manual") { "manual" } else { "automatic" },
            "customer": call.param("customer"),
            "description": call.param("description"),
            "status": if card.is_some() { "requires_confirmation" } else { "requires_payment_method" },
            "provider": provider,
            "livemode": false,
        });
        // Card data (`card[number]`, `payment_method_data`) is confirmed at once, as Stripe only takes it
        // with a confirm; a `payment_method` alone waits for one.
        let confirm = match call.param("confirm") {
            Some(v) => v == "true",
            None => call.param("payment_method").is_none(),
        };
        if confirm {
            return self.confirm(book, pi, card.as_deref());
        }
        book.put(&id, pi.clone());
        Answer::json(StatusCode::OK, &pi)
    }

    /// Confirms `pi` with `card` (the sandbox's default card when `None`) and stores it.
    fn confirm(&self, book: &mut Book, mut pi: Value, card: Option<&str>) -> Answer {
        let id = pi["id"].as_str().unwrap_or_default().to_owned();
        if let Some((code, decline_code)) = card.and_then(test_card_decline) {
            pi["status"] = "requires_payment_method".into();
            let message = match decline_code {
                "insufficient_funds" => "Your card has insufficient funds.",
                "expired_card" => "Your card has expired.",
                "incorrect_cvc" => "Your card's security code is incorrect.",
                "processing_error" => {
                    "An error occurred while processing your card. Try again in a little bit."
                }
                _ => "Your card was declined.",
            };
            let last_error = json!({
                "type": "card_error",
                "code": code,
                "decline_code": decline_code,
                "message": message,
            });
            pi["last_payment_error"] = last_error.clone();
            book.put(&id, pi.clone());
            let mut e = last_error;
            e["doc_url"] = format!(
                "https://docs.stripe.com/error-codes/{}",
                code.replace('_', "-")
            )
            .into();
            e["payment_intent"] = pi;
            return Answer::json(StatusCode::PAYMENT_REQUIRED, &json!({ "error": e }));
        }
        pi["last_payment_error"] = Value::Null;
        pi["payment_method"] = card
            .filter(|c| c.starts_with("pm_"))
            .unwrap_or("pm_card_visa")
            .into();
        let charged = pi["capture_method"] != "manual";
        if charged {
            pi["status"] = "succeeded".into();
            pi["amount_received"] = pi["amount"].clone();
        } else {
            pi["status"] = "requires_capture".into();
        }
        book.put(&id, pi.clone());
        Answer {
            charged,
            ..Answer::json(StatusCode::OK, &pi)
        }
    }

    fn intent_action(&self, book: &mut Book, id: &str, action: &str, call: &Call<'_>) -> Answer {
        let Some(mut pi) = book
            .objects
            .get(id)
            .filter(|o| o["object"] == "payment_intent")
            .cloned()
        else {
            return missing("payment_intent", id);
        };
        let status = pi["status"].as_str().unwrap_or_default().to_owned();
        match action {
            "confirm" => {
                if !matches!(
                    status.as_str(),
                    "requires_confirmation" | "requires_payment_method"
                ) {
                    return unexpected_state(&pi, "confirm");
                }
                let card = card(call).or_else(|| pi["payment_method"].as_str().map(str::to_owned));
                if call.param("capture_method") == Some("manual") {
                    pi["capture_method"] = "manual".into();
                }
                self.confirm(book, pi, card.as_deref())
            }
            "capture" => {
                if status != "requires_capture" {
                    return unexpected_state(&pi, "capture");
                }
                let take = match amount(call, "amount_to_capture") {
                    Ok(a) => a.unwrap_or_else(|| pi["amount"].as_i64().unwrap_or(0)),
                    Err(e) => return e,
                };
                if take > pi["amount"].as_i64().unwrap_or(0) {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request_error",
                        Some("amount_too_large"),
                        "The amount to capture is larger than the amount authorised.",
                    );
                }
                pi["status"] = "succeeded".into();
                pi["amount_received"] = take.into();
                book.put(id, pi.clone());
                Answer {
                    charged: true,
                    ..Answer::json(StatusCode::OK, &pi)
                }
            }
            "cancel" => {
                if matches!(status.as_str(), "succeeded" | "canceled") {
                    return unexpected_state(&pi, "cancel");
                }
                pi["status"] = "canceled".into();
                pi["cancellation_reason"] = call.param("cancellation_reason").into();
                book.put(id, pi.clone());
                Answer::json(StatusCode::OK, &pi)
            }
            _ => missing("endpoint", action),
        }
    }

    fn refund(&self, book: &mut Book, provider: &str, call: &Call<'_>) -> Answer {
        let Some(pi_id) = call
            .param("payment_intent")
            .or_else(|| call.param("charge"))
        else {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("parameter_missing"),
                "One of the following params should be provided for this request: payment_intent or charge.",
            );
        };
        let Some(mut pi) = book
            .objects
            .get(pi_id)
            .filter(|o| o["object"] == "payment_intent")
            .cloned()
        else {
            return missing("payment_intent", pi_id);
        };
        if pi["status"] != "succeeded" {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("charge_not_refundable"),
                "This PaymentIntent has no successful charge to refund.",
            );
        }
        let received = pi["amount_received"].as_i64().unwrap_or(0);
        let refunded = pi["amount_refunded"].as_i64().unwrap_or(0);
        let left = received - refunded;
        let amount = match amount(call, "amount") {
            Ok(a) => a.unwrap_or(left),
            Err(e) => return e,
        };
        if left <= 0 {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("charge_already_refunded"),
                "This charge has already been refunded.",
            );
        }
        if amount > left {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("amount_too_large"),
                "Refund amount is greater than the unrefunded amount.",
            );
        }
        pi["amount_refunded"] = (refunded + amount).into();
        book.put(pi_id, pi.clone());
        let id = book.new_id("re", provider);
        let refund = json!({
            "id": id,
            "object": "refund",
            "amount": amount,
            "currency": pi["currency"],
            "payment_intent": pi_id,
            "reason": call.param("reason"),
            "status": "succeeded",
            "provider": provider,
        });
        book.put(&id, refund.clone());
        Answer {
            refunded: true,
            ..Answer::json(StatusCode::OK, &refund)
        }
    }

    fn customer(&self, book: &mut Book, provider: &str, call: &Call<'_>) -> Answer {
        let id = book.new_id("cus", provider);
        let customer = json!({
            "id": id,
            "object": "customer",
            "email": call.param("email"),
            "name": call.param("name"),
            "description": call.param("description"),
            "livemode": false,
        });
        book.put(&id, customer.clone());
        Answer::json(StatusCode::OK, &customer)
    }

    fn list(&self, book: &Book, object: &str, call: &Call<'_>) -> Answer {
        let limit = call
            .param("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .unwrap_or(10)
            .clamp(1, 100);
        let all: Vec<&Value> = book
            .order
            .iter()
            .rev()
            .filter_map(|id| book.objects.get(id))
            .filter(|o| o["object"] == object)
            .filter(|o| call.param("customer").is_none_or(|c| o["customer"] == c))
            .collect();
        let data: Vec<&Value> = all.iter().take(limit).copied().collect();
        Answer::json(
            StatusCode::OK,
            &json!({
                "object": "list",
                "data": data,
                "has_more": all.len() > limit,
                "url": format!("/v1/{object}s"),
            }),
        )
    }
}

impl Model for Stripe {
    fn serves(&self, _path: &str) -> bool {
        true
    }

    fn call(&self, book: &mut Book, provider: &str, call: &Call<'_>) -> Answer {
        let segments: Vec<&str> = call.path.trim_matches('/').split('/').collect();
        match (call.method, segments.as_slice()) {
            (&Method::POST, ["v1", "payment_intents"]) => self.create_intent(book, provider, call),
            (&Method::POST, ["v1", "payment_intents", id, action]) => {
                self.intent_action(book, id, action, call)
            }
            (&Method::GET, ["v1", "payment_intents"]) => self.list(book, "payment_intent", call),
            (&Method::POST, ["v1", "refunds"]) => self.refund(book, provider, call),
            (&Method::GET, ["v1", "refunds"]) => self.list(book, "refund", call),
            (&Method::POST, ["v1", "customers"]) => self.customer(book, provider, call),
            (&Method::GET, ["v1", "customers"]) => self.list(book, "customer", call),
            (&Method::GET, ["v1", kind, id]) => {
                let object = kind.trim_end_matches('s');
                match book.objects.get(*id).filter(|o| o["object"] == object) {
                    Some(o) => Answer::json(StatusCode::OK, o),
                    None => missing(object, id),
                }
            }
            _ => error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                None,
                &format!("Unrecognized request URL ({} {}).", call.method, call.path),
            ),
        }
    }

    fn failure(&self, failure: Failure, message: &str) -> (StatusCode, Value) {
        let (status, kind, code) = match failure {
            Failure::RateLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                Some("rate_limit"),
            ),
            Failure::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "api_error", None),
            Failure::KeyInUse => (
                StatusCode::CONFLICT,
                "idempotency_error",
                Some("idempotency_key_in_use"),
            ),
            Failure::KeyReused => (StatusCode::BAD_REQUEST, "idempotency_error", None),
            Failure::BadRequest => (StatusCode::BAD_REQUEST, "invalid_request_error", None),
        };
        let a = error(status, kind, code, message);
        (
            status,
            serde_json::from_slice(&a.body).unwrap_or(Value::Null),
        )
    }
}
