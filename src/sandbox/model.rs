//! The provider model the sandbox serves: one [`Model`] per provider API, over a [`Book`] of the
//! objects it holds. The engine around it (modes, idempotency keys, counters) is the same for every
//! model; a model only says what one call does and whether it took money.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::Value;

/// One API call, its body already decoded into flat parameters.
#[derive(Debug)]
pub struct Call<'a> {
    /// The method.
    pub method: &'a Method,
    /// The path, without the query.
    pub path: &'a str,
    /// Form fields (`a[b][c]=v` kept as the key `a[b][c]`), JSON fields flattened the same way, and
    /// the query string's fields.
    pub params: BTreeMap<String, String>,
    /// The JSON body, when it is JSON.
    pub json: Option<Value>,
}

impl Call<'_> {
    /// A parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// What a call did.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The JSON body.
    pub body: Bytes,
    /// Whether money was taken (a capture, or a confirm that captures at once).
    pub charged: bool,
    /// Whether money was given back.
    pub refunded: bool,
}

impl Answer {
    /// An answer that moved no money.
    pub fn json(status: StatusCode, body: &Value) -> Self {
        Self {
            status,
            body: Bytes::from(body.to_string()),
            charged: false,
            refunded: false,
        }
    }
}

/// The class of an error the sandbox itself makes (its modes), written in each model's envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 429: too many requests, nothing done.
    RateLimited,
    /// 503/500: the service failed.
    Unavailable,
    /// 409: the key is being processed.
    KeyInUse,
    /// 400: the key was used with other parameters.
    KeyReused,
    /// 400: the request could not be read.
    BadRequest,
}

/// The objects one sandbox holds, shared by its models.
#[derive(Debug, Default)]
pub struct Book {
    /// Objects by id.
    pub objects: BTreeMap<String, Value>,
    /// Ids in creation order.
    pub order: Vec<String>,
    counter: u64,
}

impl Book {
    /// A new id `{prefix}_{provider}_{n}`.
    pub fn new_id(&mut self, prefix: &str, provider: &str) -> String {
        self.counter += 1;
        format!(
            "{prefix}_{}_{:06}",
            provider.replace(['-', '.'], "_"),
            self.counter
        )
    }

    /// Stores `object` under its `id`.
    pub fn put(&mut self, id: &str, object: Value) {
        if self.objects.insert(id.to_owned(), object).is_none() {
            self.order.push(id.to_owned());
        }
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

/// A provider API.
pub trait Model: Send + Sync {
    /// Whether this model serves `path`.
    fn serves(&self, path: &str) -> bool;
    /// Does `call` against `book` for the provider named `provider`.
    fn call(&self, book: &mut Book, provider: &str, call: &Call<'_>) -> Answer;
    /// An error the engine makes, in this API's envelope.
    fn failure(&self, failure: Failure, message: &str) -> (StatusCode, Value);
}

/// Decodes a form body or query (`application/x-www-form-urlencoded`).
pub fn form(text: &str, into: &mut BTreeMap<String, String>) {
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        into.insert(percent_decode(k), percent_decode(v));
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Flattens a JSON object into `a[b][c]` keys, as Stripe's form encoding writes them.
pub fn flatten(prefix: &str, v: &Value, into: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}[{k}]")
                };
                flatten(&key, v, into);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, into);
            }
        }
        Value::String(s) => {
            into.insert(prefix.to_owned(), s.clone());
        }
        Value::Null => {}
        other => {
            into.insert(prefix.to_owned(), other.to_string());
        }
    }
}

/// How a test card number or payment method declines, as Stripe documents its test cards: the
/// error `code` and the `decline_code`. `None`: it pays.
pub fn test_card_decline(card: &str) -> Option<(&'static str, &'static str)> {
    Some(match card {
        "4000000000000002" | "pm_card_chargeDeclined" | "pm_card_visa_chargeDeclined" => {
            ("card_declined", "generic_decline")
        }
        "4000000000009995"
        | "pm_card_chargeDeclinedInsufficientFunds"
        | "pm_card_visa_chargeDeclinedInsufficientFunds" => ("card_declined", "insufficient_funds"),
        "4000000000009987"
        | "pm_card_chargeDeclinedLostCard"
        | "pm_card_visa_chargeDeclinedLostCard" => ("card_declined", "lost_card"),
        "4000000000009979"
        | "pm_card_chargeDeclinedStolenCard"
        | "pm_card_visa_chargeDeclinedStolenCard" => ("card_declined", "stolen_card"),
        "4000000000000069"
        | "pm_card_chargeDeclinedExpiredCard"
        | "pm_card_visa_chargeDeclinedExpiredCard" => ("expired_card", "expired_card"),
        "4000000000000127"
        | "pm_card_chargeDeclinedIncorrectCvc"
        | "pm_card_visa_chargeDeclinedIncorrectCvc" => ("incorrect_cvc", "incorrect_cvc"),
        "4000000000000119"
        | "pm_card_chargeDeclinedProcessingError"
        | "pm_card_visa_chargeDeclinedProcessingError" => ("processing_error", "processing_error"),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_and_json_flattens_to_the_same_keys() {
        let mut p = BTreeMap::new();
        form(
            "amount=1000&payment_method_data%5Bcard%5D%5Bnumber%5D=4000000000000002&d=a+b%2",
            &mut p,
        );
        assert_eq!(p["amount"], "1000");
        assert_eq!(p["payment_method_data[card][number]"], "4000000000000002");
        assert_eq!(p["d"], "a b%2");
        let mut j = BTreeMap::new();
        flatten(
            "",
            &serde_json::json!({"amount": {"value": 5, "currency": "EUR"}, "x": [true]}),
            &mut j,
        );
        assert_eq!(j["amount[value]"], "5");
        assert_eq!(j["amount[currency]"], "EUR");
        assert_eq!(j["x[0]"], "true");
    }

    #[test]
    fn stripe_decline_test_cards() {
        assert_eq!(
            test_card_decline("4000000000000002"),
            Some(("card_declined", "generic_decline"))
        );
        assert_eq!(
            test_card_decline("4000000000009995"),
            Some(("card_declined", "insufficient_funds"))
        );
        assert_eq!(test_card_decline("4242424242424242"), None);
        assert_eq!(test_card_decline("pm_card_visa"), None);
    }
}
