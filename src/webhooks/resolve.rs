//! What a verified event says about an operation whose outcome is unknown: Stripe's events carry the
//! idempotency key of the request that made them (`request.idempotency_key`), Adyen's notifications
//! the shop's `merchantReference`. The resolver (`crate::resolver`) sends the operation with that key
//! again at once; the event itself is never taken for the provider's answer.

use crate::config::SignatureScheme;
use crate::resolver::EventKey;

/// Most keys taken from one event (an Adyen batch holds a few items).
const MAX_KEYS: usize = 16;

/// The keys and references a verified `body` of `scheme` names.
pub(super) fn event_keys(scheme: &SignatureScheme, body: &[u8]) -> Vec<EventKey> {
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    match scheme {
        SignatureScheme::Stripe => event
            .pointer("/request/idempotency_key")
            .and_then(|k| k.as_str())
            .filter(|k| !k.is_empty())
            .map(|k| vec![EventKey::ProviderKey(k.to_owned())])
            .unwrap_or_default(),
        SignatureScheme::Adyen => event
            .get("notificationItems")
            .and_then(|items| items.as_array())
            .into_iter()
            .flatten()
            .filter_map(|item| {
                item.pointer("/NotificationRequestItem/merchantReference")
                    .and_then(|r| r.as_str())
            })
            .filter(|r| !r.is_empty())
            .take(MAX_KEYS)
            .map(|r| EventKey::Reference(r.to_owned()))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stripe_event_names_its_request_key_and_an_adyen_batch_its_references() {
        let stripe = br#"{"id":"evt_1","type":"payment_intent.succeeded","request":{"id":"req_1","idempotency_key":"order-7"}}"#;
        let keys = event_keys(&SignatureScheme::Stripe, stripe);
        assert!(matches!(&keys[..], [EventKey::ProviderKey(k)] if k == "order-7"));
        let no_key = br#"{"id":"evt_2","request":{"id":null,"idempotency_key":null}}"#;
        assert!(event_keys(&SignatureScheme::Stripe, no_key).is_empty());
        assert!(event_keys(&SignatureScheme::Stripe, b"not json").is_empty());
    }
}
