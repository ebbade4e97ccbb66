//! Signature checks of the three schemes, and the event id each scheme's events carry. Pure functions
//! of the raw bytes, the headers and `now`: no I/O, so they are tested against the providers' published
//! vectors and fuzzed (`fuzz/`).
//!
//! Every comparison of a signature is constant-time (`hmac`'s `verify_slice`), and every configured key
//! is tried (rotation): a signature made with any active key verifies.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{GenericHmac, SignatureEncoding, SignatureScheme, SigningKey, Verify};

type HmacSha256 = Hmac<Sha256>;

/// The header Stripe signs with.
pub const STRIPE_SIGNATURE: &str = "stripe-signature";
/// Longest signature header read; longer ones are refused unread.
const MAX_HEADER_LEN: usize = 8 * 1024;

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No signature, an unreadable one, or none that verifies with any key.
    BadSignature(&'static str),
    /// The signature verifies but its timestamp is outside the tolerance.
    Stale,
    /// The body is not what the scheme needs (not JSON, no notification items, no event id).
    Malformed(&'static str),
}

/// HMAC-SHA256 of `parts` (concatenated) under `key`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = mac(key);
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length; this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key"))
}

/// Whether `signature` is the HMAC of `parts` under any of `keys`, compared in constant time.
fn any_key_signs(keys: &[SigningKey], parts: &[&[u8]], signature: &[u8]) -> bool {
    keys.iter().any(|k| {
        let mut m = mac(k.as_bytes());
        for p in parts {
            m.update(p);
        }
        m.verify_slice(signature).is_ok()
    })
}

/// A parsed `Stripe-Signature` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeSignature {
    /// `t=`: Unix seconds when Stripe signed.
    pub timestamp: i64,
    /// Every well-formed `v1=` signature (32 bytes each).
    pub v1: Vec<[u8; 32]>,
}

/// Parses `t=…,v1=…[,v1=…][,v0=…]`. Unknown keys and `v1` values that are not 64 hex digits are ignored,
/// as Stripe's libraries do; a missing or repeated `t`, or no usable `v1`, is an error.
pub fn parse_stripe_signature(header: &str) -> Result<StripeSignature, Rejection> {
    if header.len() > MAX_HEADER_LEN {
        return Err(Rejection::BadSignature("signature header too long"));
    }
    let mut timestamp = None;
    let mut v1 = Vec::new();
    for item in header.split(',') {
        let Some((k, v)) = item.split_once('=') else {
            continue;
        };
        match k.trim() {
            "t" => {
                if timestamp.is_some() {
                    return Err(Rejection::BadSignature("more than one timestamp"));
                }
                let t = v
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| Rejection::BadSignature("timestamp is not a number"))?;
                timestamp = Some(t);
            }
            "v1" => {
                let mut sig = [0u8; 32];
                if hex::decode_to_slice(v.trim(), &mut sig).is_ok() {
                    v1.push(sig);
                }
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(Rejection::BadSignature("no timestamp (t=)"))?;
    if v1.is_empty() {
        return Err(Rejection::BadSignature("no v1 signature"));
    }
    Ok(StripeSignature { timestamp, v1 })
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Whether `timestamp` (Unix seconds) is within `tolerance` of `now`, either way.
fn fresh(timestamp: i64, now: SystemTime, tolerance: Duration) -> bool {
    let age = unix_secs(now).saturating_sub(timestamp).unsigned_abs();
    age <= tolerance.as_secs()
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, Rejection> {
    headers
        .get(name)
        .ok_or(Rejection::BadSignature("no signature header"))?
        .to_str()
        .map_err(|_| Rejection::BadSignature("signature header is not text"))
}

/// Stripe: HMAC-SHA256 over `"{t}.{body}"`, any `v1` may match, then `t` must be within `tolerance`.
pub fn verify_stripe(
    keys: &[SigningKey],
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
    tolerance: Duration,
) -> Result<(), Rejection> {
    let sig = parse_stripe_signature(header_text(headers, STRIPE_SIGNATURE)?)?;
    let t = sig.timestamp.to_string();
    let parts: [&[u8]; 3] = [t.as_bytes(), b".", body];
    if !sig.v1.iter().any(|v| any_key_signs(keys, &parts, v)) {
        return Err(Rejection::BadSignature("no signature matches"));
    }
    if !fresh(sig.timestamp, now, tolerance) {
        return Err(Rejection::Stale);
    }
    Ok(())
}

/// One Adyen notification item: the fields that are signed, its signature, and its dedupe identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdyenItem {
    /// `pspReference:originalReference:merchantAccountCode:merchantReference:value:currency:eventCode:success`.
    pub signing_string: String,
    /// `additionalData.hmacSignature`, base64-decoded (`None` when absent or not base64).
    pub signature: Option<Vec<u8>>,
    /// `pspReference:eventCode:success`.
    pub event_id: String,
}

fn field_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

/// The items of an Adyen notification body (`notificationItems[].NotificationRequestItem`).
pub fn adyen_items(body: &[u8]) -> Result<Vec<AdyenItem>, Rejection> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|_| Rejection::Malformed("body is not JSON"))?;
    let items = doc
        .get("notificationItems")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .ok_or(Rejection::Malformed("no notificationItems"))?;
    items
        .iter()
        .map(|wrapper| {
            let item = wrapper
                .get("NotificationRequestItem")
                .ok_or(Rejection::Malformed(
                    "an item has no NotificationRequestItem",
                ))?;
            Ok(adyen_item(item))
        })
        .collect()
}

/// The signing string, signature and identity of one `NotificationRequestItem`.
pub fn adyen_item(item: &Value) -> AdyenItem {
    let f = |name: &str| field_text(item.get(name));
    let amount = item.get("amount");
    let value = field_text(amount.and_then(|a| a.get("value")));
    let currency = field_text(amount.and_then(|a| a.get("currency")));
    let signing_string = [
        f("pspReference"),
        f("originalReference"),
        f("merchantAccountCode"),
        f("merchantReference"),
        value,
        currency,
        f("eventCode"),
        f("success"),
    ]
    .join(":");
    let signature = item
        .get("additionalData")
        .and_then(|d| d.get("hmacSignature"))
        .and_then(Value::as_str)
        .and_then(|s| {
            base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .ok()
        });
    AdyenItem {
        signing_string,
        signature,
        event_id: format!("{}:{}:{}", f("pspReference"), f("eventCode"), f("success")),
    }
}

/// The base64 HMAC Adyen puts in `additionalData.hmacSignature` for `signing_string` under `key` (the
/// hex-decoded HMAC key).
pub fn adyen_signature(key: &[u8], signing_string: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(hmac_sha256(key, &[signing_string.as_bytes()]))
}

/// Adyen: every item must carry a signature that verifies with one of `keys`. Returns the items.
pub fn verify_adyen(keys: &[SigningKey], body: &[u8]) -> Result<Vec<AdyenItem>, Rejection> {
    let items = adyen_items(body)?;
    for item in &items {
        let sig = item
            .signature
            .as_deref()
            .ok_or(Rejection::BadSignature("an item has no hmacSignature"))?;
        if !any_key_signs(keys, &[item.signing_string.as_bytes()], sig) {
            return Err(Rejection::BadSignature(
                "an item's signature does not match",
            ));
        }
    }
    Ok(items)
}

/// Reads a generic signature header value: `prefix` removed, then hex or base64 decoded.
pub fn parse_generic_signature(
    value: &str,
    prefix: &str,
    encoding: SignatureEncoding,
) -> Option<Vec<u8>> {
    if value.len() > MAX_HEADER_LEN {
        return None;
    }
    let sig = value.trim().strip_prefix(prefix)?.trim();
    match encoding {
        SignatureEncoding::Hex => hex::decode(sig).ok(),
        SignatureEncoding::Base64 => base64::engine::general_purpose::STANDARD.decode(sig).ok(),
    }
}

/// Generic HMAC-SHA256 over the body, or over `"{timestamp}.{body}"` with a timestamp header (which
/// must then be within `tolerance`). Every value of the signature header is tried.
pub fn verify_generic(
    g: &GenericHmac,
    keys: &[SigningKey],
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
    tolerance: Duration,
) -> Result<(), Rejection> {
    let timestamp = match &g.timestamp_header {
        None => None,
        Some(name) => {
            let text = headers
                .get(name)
                .ok_or(Rejection::BadSignature("no timestamp header"))?
                .to_str()
                .map_err(|_| Rejection::BadSignature("timestamp header is not text"))?
                .trim();
            let t: i64 = text
                .parse()
                .map_err(|_| Rejection::BadSignature("timestamp is not a number"))?;
            Some((text, t))
        }
    };
    let mut parts: Vec<&[u8]> = Vec::with_capacity(3);
    if let Some((text, _)) = timestamp {
        parts.push(text.as_bytes());
        parts.push(b".");
    }
    parts.push(body);
    let mut seen = false;
    let mut ok = false;
    for value in headers.get_all(&g.header) {
        seen = true;
        let Some(sig) = value
            .to_str()
            .ok()
            .and_then(|v| parse_generic_signature(v, &g.prefix, g.encoding))
        else {
            continue;
        };
        ok |= any_key_signs(keys, &parts, &sig);
    }
    if !seen {
        return Err(Rejection::BadSignature("no signature header"));
    }
    if !ok {
        return Err(Rejection::BadSignature("no signature matches"));
    }
    if let Some((_, t)) = timestamp {
        if !fresh(t, now, tolerance) {
            return Err(Rejection::Stale);
        }
    }
    Ok(())
}

/// What a verified event is known by, for deduplication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The event id: Stripe's and Checkout.com's `id`; for Adyen, `pspReference:eventCode:success` of
    /// each item; `sha256:…` of the body when the body has no id.
    pub event_id: String,
    /// For a batch (Adyen), each item's id in body order, so that the items the shop already has are
    /// not delivered again; empty for single events.
    pub item_ids: Vec<String>,
}

/// What the headers alone show, before the body is read: an event whose signature header is missing
/// or unreadable, or whose signed timestamp is outside the tolerance, can never verify, so its body
/// is not worth reading. Adyen signs inside the body: nothing to check here.
pub fn precheck(v: &Verify, headers: &HeaderMap, now: SystemTime) -> Result<(), Rejection> {
    match &v.scheme {
        SignatureScheme::Stripe => {
            let sig = parse_stripe_signature(header_text(headers, STRIPE_SIGNATURE)?)?;
            if !fresh(sig.timestamp, now, v.tolerance) {
                return Err(Rejection::Stale);
            }
        }
        SignatureScheme::Adyen => {}
        SignatureScheme::HmacSha256(g) => {
            if headers.get(&g.header).is_none() {
                return Err(Rejection::BadSignature("no signature header"));
            }
            if let Some(name) = &g.timestamp_header {
                let t: i64 = headers
                    .get(name)
                    .ok_or(Rejection::BadSignature("no timestamp header"))?
                    .to_str()
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                    .ok_or(Rejection::BadSignature("timestamp is not a number"))?;
                if !fresh(t, now, v.tolerance) {
                    return Err(Rejection::Stale);
                }
            }
        }
    }
    Ok(())
}

/// Verifies an event by its webhook's scheme and finds its id. The raw body is checked before anything
/// else reads it (Adyen's signature is inside the body, so its items are read to verify them).
pub fn verify(
    v: &Verify,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Result<Verified, Rejection> {
    let mut item_ids = Vec::new();
    let event_id = match &v.scheme {
        SignatureScheme::Stripe => {
            verify_stripe(&v.keys, headers, body, now, v.tolerance)?;
            json_id(body)?
        }
        SignatureScheme::Adyen => {
            let items = verify_adyen(&v.keys, body)?;
            item_ids = items.into_iter().map(|i| i.event_id).collect();
            item_ids.join(",")
        }
        SignatureScheme::HmacSha256(g) => {
            verify_generic(g, &v.keys, headers, body, now, v.tolerance)?;
            match json_id(body) {
                Ok(id) => id,
                Err(_) => body_digest(body),
            }
        }
    };
    Ok(Verified { event_id, item_ids })
}

/// The top-level `"id"` of a JSON event (a string or a number), or the body's digest when it has none.
/// A body that is not JSON is malformed.
fn json_id(body: &[u8]) -> Result<String, Rejection> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|_| Rejection::Malformed("body is not JSON"))?;
    Ok(match doc.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => body_digest(body),
    })
}

fn body_digest(body: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(body)))
}

/// The `sign_for_shop` header value: `t={now},v1={hex HMAC-SHA256 over "{t}.{body}"}`.
pub fn shop_signature(key: &SigningKey, body: &[u8], now: SystemTime) -> String {
    let t = unix_secs(now).to_string();
    let sig = hmac_sha256(key.as_bytes(), &[t.as_bytes(), b".", body]);
    format!("t={t},v1={}", hex::encode(sig))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    fn keys(list: &[&[u8]]) -> Vec<SigningKey> {
        list.iter().map(|k| SigningKey::new(k.to_vec())).collect()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// RFC 4231 test case 2: the HMAC primitive every scheme uses.
    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        assert_eq!(
            hex::encode(hmac_sha256(
                b"Jefe",
                &[b"what do ya want ", b"for nothing?"]
            )),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// A Stripe header made the way Stripe documents it, independently of the code under test.
    fn stripe_header(secret: &str, t: u64, body: &str) -> String {
        let mut m = <HmacSha256 as Mac>::new_from_slice(secret.as_bytes()).unwrap();
        m.update(format!("{t}.{body}").as_bytes());
        format!(
            "t={t},v1={},v0=deadbeef",
            hex::encode(m.finalize().into_bytes())
        )
    }

    #[test]
    fn stripe_valid_changed_stale_and_rotated() {
        let body = r#"{"id":"evt_1","type":"payment_intent.succeeded"}"#;
        let t = 1_700_000_000;
        let tol = Duration::from_secs(300);
        let h = headers(&[(STRIPE_SIGNATURE, &stripe_header("whsec_a", t, body))]);
        let k = keys(&[b"whsec_a"]);
        assert_eq!(
            verify_stripe(&k, &h, body.as_bytes(), at(t + 10), tol),
            Ok(())
        );
        // One byte changed.
        let changed = body.replace("evt_1", "evt_2");
        assert_eq!(
            verify_stripe(&k, &h, changed.as_bytes(), at(t + 10), tol),
            Err(Rejection::BadSignature("no signature matches"))
        );
        // Older than the tolerance (and as far in the future).
        assert_eq!(
            verify_stripe(&k, &h, body.as_bytes(), at(t + 301), tol),
            Err(Rejection::Stale)
        );
        assert_eq!(
            verify_stripe(&k, &h, body.as_bytes(), at(t - 301), tol),
            Err(Rejection::Stale)
        );
        // Rotation: signed with the old secret, both configured.
        let rotated = keys(&[b"whsec_new", b"whsec_a"]);
        assert_eq!(
            verify_stripe(&rotated, &h, body.as_bytes(), at(t), tol),
            Ok(())
        );
        assert!(verify_stripe(&keys(&[b"whsec_new"]), &h, body.as_bytes(), at(t), tol).is_err());
        // A second v1 (Stripe sends one per active secret) may be the one that matches.
        let both = format!(
            "t={t},v1={},{}",
            "00".repeat(32),
            stripe_header("whsec_a", t, body).split(',').nth(1).unwrap()
        );
        let h2 = headers(&[(STRIPE_SIGNATURE, &both)]);
        assert_eq!(verify_stripe(&k, &h2, body.as_bytes(), at(t), tol), Ok(()));
    }

    #[test]
    fn stripe_headers_that_do_not_parse_are_bad_signatures() {
        for (value, why) in [
            ("", "no timestamp (t=)"),
            ("v1=00", "no timestamp (t=)"),
            ("t=abc,v1=00", "timestamp is not a number"),
            ("t=1,t=2,v1=00", "more than one timestamp"),
            ("t=1,v1=nothex", "no v1 signature"),
            ("t=1,v0=abcd", "no v1 signature"),
        ] {
            assert_eq!(
                parse_stripe_signature(value),
                Err(Rejection::BadSignature(why)),
                "{value}"
            );
        }
        let ok = parse_stripe_signature(&format!(" t=5 , v1={} ,x=y", "ab".repeat(32))).unwrap();
        assert_eq!(ok.timestamp, 5);
        assert_eq!(ok.v1, vec![[0xab; 32]]);
        assert!(matches!(
            verify_stripe(&[], &HeaderMap::new(), b"", at(0), Duration::ZERO),
            Err(Rejection::BadSignature("no signature header"))
        ));
    }

    /// Adyen's published vectors (their API libraries' HMAC tests): key, item, expected signature.
    #[test]
    fn adyen_matches_the_published_vectors() {
        let item: Value = serde_json::from_str(
            r#"{"pspReference":"7914073381342284","merchantAccountCode":"TestMerchant",
                "merchantReference":"TestPayment-1407325143704","amount":{"value":1130,"currency":"EUR"},
                "eventCode":"AUTHORISATION","success":"true"}"#,
        )
        .unwrap();
        let parsed = adyen_item(&item);
        assert_eq!(
            parsed.signing_string,
            "7914073381342284::TestMerchant:TestPayment-1407325143704:1130:EUR:AUTHORISATION:true"
        );
        assert_eq!(parsed.event_id, "7914073381342284:AUTHORISATION:true");
        let key = hex::decode("DFB1EB5485895CFA84146406857104ABB4CBCABDC8AAF103A624C8F6A3EAAB00")
            .unwrap();
        assert_eq!(
            adyen_signature(&key, &parsed.signing_string),
            "Ny9gS2veKo5E4w8/OL6xz1/wvT/hYkAXy1xNc/QvO4I="
        );
        let refund: Value = serde_json::from_str(
            r#"{"pspReference":"7914073381342284","merchantAccountCode":"TestMerchant",
                "merchantReference":"TestPayment-1407325143704","amount":{"value":0,"currency":"EUR"},
                "eventCode":"REFUND","success":"true"}"#,
        )
        .unwrap();
        let key = hex::decode("44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056")
            .unwrap();
        assert_eq!(
            adyen_signature(&key, &adyen_item(&refund).signing_string),
            "J7HhsgZo5KwqdB7LFZJV6rfQgp+RqC2kuYyw/3x3w+8="
        );
    }

    fn adyen_body(items: &[(&str, &str, Option<&str>)]) -> String {
        let items: Vec<String> = items
            .iter()
            .map(|(psp, event, sig)| {
                let sig = sig.map_or(String::new(), |s| format!(r#","additionalData":{{"hmacSignature":"{s}"}}"#));
                format!(
                    r#"{{"NotificationRequestItem":{{"pspReference":"{psp}","merchantAccountCode":"M","merchantReference":"order-1","amount":{{"value":1000,"currency":"EUR"}},"eventCode":"{event}","success":"true"{sig}}}}}"#
                )
            })
            .collect();
        format!(
            r#"{{"live":"false","notificationItems":[{}]}}"#,
            items.join(",")
        )
    }

    #[test]
    fn adyen_valid_changed_rotated_and_every_item_must_verify() {
        let key = [7u8; 32];
        let sign = |psp: &str, event: &str| {
            adyen_signature(&key, &format!("{psp}::M:order-1:1000:EUR:{event}:true"))
        };
        let (s1, s2) = (sign("psp1", "AUTHORISATION"), sign("psp2", "CAPTURE"));
        let body = adyen_body(&[
            ("psp1", "AUTHORISATION", Some(&s1)),
            ("psp2", "CAPTURE", Some(&s2)),
        ]);
        let k = keys(&[&key]);
        let items = verify_adyen(&k, body.as_bytes()).unwrap();
        assert_eq!(items.len(), 2);
        // A changed byte in a signed field.
        let changed = body.replace("\"value\":1000", "\"value\":1001");
        assert!(matches!(
            verify_adyen(&k, changed.as_bytes()),
            Err(Rejection::BadSignature(_))
        ));
        // One good item and one unsigned item: refused.
        let half = adyen_body(&[
            ("psp1", "AUTHORISATION", Some(&s1)),
            ("psp2", "CAPTURE", None),
        ]);
        assert_eq!(
            verify_adyen(&k, half.as_bytes()),
            Err(Rejection::BadSignature("an item has no hmacSignature"))
        );
        // Rotation.
        assert!(verify_adyen(&keys(&[&[1u8; 32], &key]), body.as_bytes()).is_ok());
        assert!(verify_adyen(&keys(&[&[1u8; 32]]), body.as_bytes()).is_err());
        // Not a notification.
        assert_eq!(
            verify_adyen(&k, b"[accepted]"),
            Err(Rejection::Malformed("body is not JSON"))
        );
        assert_eq!(
            verify_adyen(&k, br#"{"notificationItems":[]}"#),
            Err(Rejection::Malformed("no notificationItems"))
        );
        // The event id names every item.
        let v = Verify {
            scheme: SignatureScheme::Adyen,
            keys: k,
            tolerance: Duration::ZERO,
        };
        assert_eq!(
            verify(&v, &HeaderMap::new(), body.as_bytes(), at(0))
                .unwrap()
                .event_id,
            "psp1:AUTHORISATION:true,psp2:CAPTURE:true"
        );
    }

    fn generic(encoding: SignatureEncoding, prefix: &str, ts: bool) -> GenericHmac {
        GenericHmac {
            header: HeaderName::from_static("cko-signature"),
            encoding,
            prefix: prefix.into(),
            timestamp_header: ts.then(|| HeaderName::from_static("x-timestamp")),
        }
    }

    #[test]
    fn generic_hmac_valid_changed_encodings_and_rotation() {
        let body = br#"{"id":"evt_cko_1","type":"payment_captured"}"#;
        let reference = {
            let mut m = <HmacSha256 as Mac>::new_from_slice(b"cko-secret").unwrap();
            m.update(body);
            m.finalize().into_bytes()
        };
        let tol = Duration::from_secs(300);
        let k = keys(&[b"other", b"cko-secret"]);
        let hex_sig = hex::encode(reference);
        let h = headers(&[("cko-signature", &hex_sig)]);
        let g = generic(SignatureEncoding::Hex, "", false);
        assert_eq!(verify_generic(&g, &k, &h, body, at(0), tol), Ok(()));
        // Upper-case hex is the same signature.
        let h_upper = headers(&[("cko-signature", &hex_sig.to_uppercase())]);
        assert_eq!(verify_generic(&g, &k, &h_upper, body, at(0), tol), Ok(()));
        let mut changed = body.to_vec();
        changed[3] ^= 1;
        assert!(verify_generic(&g, &k, &h, &changed, at(0), tol).is_err());
        assert!(verify_generic(&g, &keys(&[b"other"]), &h, body, at(0), tol).is_err());
        // Base64 with a prefix.
        let b64 = format!(
            "sha256={}",
            base64::engine::general_purpose::STANDARD.encode(reference)
        );
        let g64 = generic(SignatureEncoding::Base64, "sha256=", false);
        let h64 = headers(&[("cko-signature", &b64)]);
        assert_eq!(verify_generic(&g64, &k, &h64, body, at(0), tol), Ok(()));
        // The prefix is required when configured.
        let bare = headers(&[("cko-signature", b64.trim_start_matches("sha256="))]);
        assert!(verify_generic(&g64, &k, &bare, body, at(0), tol).is_err());
        assert_eq!(
            verify_generic(&g, &k, &HeaderMap::new(), body, at(0), tol),
            Err(Rejection::BadSignature("no signature header"))
        );
    }

    #[test]
    fn generic_hmac_with_a_timestamp_rejects_old_ones() {
        let body = br#"{"id":"e"}"#;
        let t = 1_700_000_000u64;
        let sig = hex::encode(hmac_sha256(b"s", &[t.to_string().as_bytes(), b".", body]));
        let h = headers(&[("cko-signature", &sig), ("x-timestamp", &t.to_string())]);
        let g = generic(SignatureEncoding::Hex, "", true);
        let k = keys(&[b"s"]);
        let tol = Duration::from_secs(60);
        assert_eq!(verify_generic(&g, &k, &h, body, at(t + 60), tol), Ok(()));
        assert_eq!(
            verify_generic(&g, &k, &h, body, at(t + 61), tol),
            Err(Rejection::Stale)
        );
        // A replay with a fresh timestamp but the old signature does not verify.
        let replay = headers(&[
            ("cko-signature", &sig),
            ("x-timestamp", &(t + 100).to_string()),
        ]);
        assert_eq!(
            verify_generic(&g, &k, &replay, body, at(t + 100), tol),
            Err(Rejection::BadSignature("no signature matches"))
        );
    }

    #[test]
    fn event_ids_come_from_the_body() {
        let v = |scheme| Verify {
            scheme,
            keys: keys(&[b"k"]),
            tolerance: Duration::from_secs(300),
        };
        let body = br#"{"id":"evt_9"}"#;
        let t = 1_700_000_000u64;
        let mut m = <HmacSha256 as Mac>::new_from_slice(b"k").unwrap();
        m.update(format!("{t}.").as_bytes());
        m.update(body);
        let header = format!("t={t},v1={}", hex::encode(m.finalize().into_bytes()));
        let h = headers(&[(STRIPE_SIGNATURE, &header)]);
        assert_eq!(
            verify(&v(SignatureScheme::Stripe), &h, body, at(t))
                .unwrap()
                .event_id,
            "evt_9"
        );
        // A signed Stripe body that is not JSON is malformed.
        let mut m = <HmacSha256 as Mac>::new_from_slice(b"k").unwrap();
        m.update(format!("{t}.not json").as_bytes());
        let header = format!("t={t},v1={}", hex::encode(m.finalize().into_bytes()));
        let h = headers(&[(STRIPE_SIGNATURE, &header)]);
        assert_eq!(
            verify(&v(SignatureScheme::Stripe), &h, b"not json", at(t)),
            Err(Rejection::Malformed("body is not JSON"))
        );
        // A generic body without an id is known by its digest.
        let g = generic(SignatureEncoding::Hex, "", false);
        let sig = hex::encode(hmac_sha256(b"k", &[b"plain text"]));
        let h = headers(&[("cko-signature", &sig)]);
        let id = verify(&v(SignatureScheme::HmacSha256(g)), &h, b"plain text", at(0))
            .unwrap()
            .event_id;
        assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    }

    #[test]
    fn the_shop_signature_is_stripe_shaped() {
        let key = SigningKey::new(b"shop".to_vec());
        let v = shop_signature(&key, b"{}", at(1_700_000_000));
        let parsed = parse_stripe_signature(&v).unwrap();
        assert_eq!(parsed.timestamp, 1_700_000_000);
        assert_eq!(parsed.v1[0], hmac_sha256(b"shop", &[b"1700000000.{}"]));
    }
}
