//! Removes card data and secrets from any text the proxy writes: logs, error details, problem bodies, and
//! the request and response bodies kept in the audit trail (`PAYMENT_RULES.md` §6).
//!
//! Two mechanisms, applied together:
//! - **Card numbers anywhere.** A run of 13–19 digits (single spaces or dashes between groups allowed, as
//!   people type them) that passes the Luhn check is shown as its first 6 and last 4 digits with the rest
//!   masked, as PCI DSS allows. A longer run of groups (a card number followed by its CVC, say) is
//!   searched for such a number on group boundaries.
//! - **Known sensitive fields.** A field whose name says it holds a card number, CVC/CVV, track data, PIN,
//!   expiry, cryptogram, IBAN or account number, or a secret (password, API key, token, client secret), has
//!   its value replaced by [`REDACTED`] (a card number keeps its first 6 and last 4 digits). Fields are
//!   found in JSON (parsed), form-encoded bodies (parsed) and, as a fallback, in any text that looks like
//!   `name=value`, `"name": value` or `<name>value`.
//!
//! Text without anything to mask is returned as is, without allocating.

use std::borrow::Cow;

/// What a masked field value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// `text` with every Luhn-valid 13–19 digit run masked.
pub fn mask_pans(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // A run: groups of digits, with single spaces or dashes between them.
        let mut groups: Vec<(usize, usize)> = Vec::new();
        let mut group_start = i;
        let mut j = i;
        while j < bytes.len() {
            let b = bytes[j];
            if b.is_ascii_digit() {
                j += 1;
            } else if (b == b' ' || b == b'-')
                && j + 1 < bytes.len()
                && bytes[j + 1].is_ascii_digit()
            {
                groups.push((group_start, j));
                j += 1;
                group_start = j;
            } else {
                break;
            }
        }
        groups.push((group_start, j));
        i = j;
        for (start, end) in card_numbers(bytes, &groups) {
            let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
            o.push_str(&text[copied..start]);
            let digits = bytes[start..end]
                .iter()
                .filter(|b| b.is_ascii_digit())
                .count();
            let mut seen = 0;
            for &b in &bytes[start..end] {
                if b.is_ascii_digit() {
                    seen += 1;
                    if seen <= 6 || seen > digits - 4 {
                        o.push(b as char);
                    } else {
                        o.push('*');
                    }
                } else {
                    o.push(b as char);
                }
            }
            copied = end;
        }
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut o) => {
            o.push_str(&text[copied..]);
            Cow::Owned(o)
        }
    }
}

/// The byte ranges of the card numbers in one run of digit groups: the whole run when it is one, else
/// the longest Luhn-valid 13–19 digit spans of whole groups, left to right.
fn card_numbers(bytes: &[u8], groups: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let digits_of = |from: usize, to: usize| -> Vec<u8> {
        groups[from..=to]
            .iter()
            .flat_map(|&(s, e)| bytes[s..e].iter().map(|b| b - b'0'))
            .collect()
    };
    let mut found = Vec::new();
    let mut from = 0;
    while from < groups.len() {
        let mut best = None;
        let mut count = 0;
        for (to, &(start, end)) in groups.iter().enumerate().skip(from) {
            count += end - start;
            if count > 19 {
                break;
            }
            if count >= 13 && luhn(&digits_of(from, to)) {
                best = Some(to);
            }
        }
        match best {
            Some(to) => {
                found.push((groups[from].0, groups[to].1));
                from = to + 1;
            }
            None => from += 1,
        }
    }
    found
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

/// What a field's name says about its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sensitive {
    /// A card number: kept as its first 6 and last 4 digits.
    CardNumber,
    /// Anything else that must never be written (CVC, PIN, track, expiry, cryptogram, IBAN, secrets).
    Secret,
}

/// Whether a field named `name` holds card data or a secret. The name is matched without case, `_`, `-`
/// or spaces, on its last part: `card[number]`, `card.number` and `paymentMethod.number` are all
/// `number`. Names that report a check (`cvc_check`, `cvcResult`) are not sensitive.
pub fn sensitive_key(name: &str) -> Option<Sensitive> {
    let last = name.trim_end_matches(']');
    let last = last
        .rfind(['[', '.'])
        .map(|i| &last[i + 1..])
        .unwrap_or(last);
    let key: String = last
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if key.is_empty() || key.ends_with("check") || key.ends_with("result") {
        return None;
    }
    const CARD_EXACT: [&str; 5] = ["number", "pan", "cardno", "ccnum", "primaryaccountnumber"];
    const CARD_PART: [&str; 3] = ["cardnumber", "ccnumber", "cardnum"];
    const SECRET_EXACT: [&str; 15] = [
        "cvc", "cvv", "cvc2", "cvv2", "cid", "csc", "pin", "exp", "track", "track1", "track2",
        "xid", "cavv", "tavv", "token",
    ];
    const SECRET_PART: [&str; 27] = [
        "cvc",
        "cvv",
        "securitycode",
        "trackdata",
        "magstripe",
        "pinblock",
        "expiry",
        "expmonth",
        "expyear",
        "expdate",
        "expiration",
        "cryptogram",
        "authenticationvalue",
        "iban",
        "bban",
        "accountnumber",
        "routingnumber",
        "password",
        "passwd",
        "secret",
        "apikey",
        "accesstoken",
        "refreshtoken",
        "authorization",
        "hmackey",
        "privatekey",
        "signature",
    ];
    if CARD_EXACT.contains(&key.as_str()) || CARD_PART.iter().any(|p| key.contains(p)) {
        return Some(Sensitive::CardNumber);
    }
    if SECRET_EXACT.contains(&key.as_str()) || SECRET_PART.iter().any(|p| key.contains(p)) {
        return Some(Sensitive::Secret);
    }
    None
}

/// The value of a card-number field: its first 6 and last 4 digits when it has 13–19 digits, else
/// [`REDACTED`].
fn mask_card_field(value: &str) -> String {
    let digits = value.bytes().filter(u8::is_ascii_digit).count();
    if !(13..=19).contains(&digits) || value.bytes().any(|b| !b"0123456789 -".contains(&b)) {
        return REDACTED.to_owned();
    }
    let mut seen = 0;
    value
        .chars()
        .map(|c| {
            if c.is_ascii_digit() {
                seen += 1;
                if seen <= 6 || seen > digits - 4 {
                    c
                } else {
                    '*'
                }
            } else {
                c
            }
        })
        .collect()
}

fn masked_field(kind: Sensitive, value: &str) -> String {
    match kind {
        Sensitive::CardNumber => mask_card_field(value),
        Sensitive::Secret => REDACTED.to_owned(),
    }
}

/// Masks sensitive fields and card numbers in a parsed JSON document, in place.
pub fn redact_json(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let old = std::mem::take(map);
            for (key, mut v) in old {
                let key = match mask_pans(&key) {
                    Cow::Borrowed(_) => key,
                    Cow::Owned(masked) => masked,
                };
                match sensitive_key(&key) {
                    Some(kind) => {
                        let text = match &v {
                            Value::String(s) => s.clone(),
                            Value::Number(n) => n.to_string(),
                            _ => String::new(),
                        };
                        v = Value::String(masked_field(kind, &text));
                    }
                    None => redact_json(&mut v),
                }
                map.insert(key, v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_json),
        Value::String(s) => {
            if let Cow::Owned(masked) = redact_text(s) {
                *s = masked;
            }
        }
        Value::Number(n) => {
            let text = n.to_string();
            if let Cow::Owned(masked) = mask_pans(&text) {
                *value = Value::String(masked);
            }
        }
        Value::Null | Value::Bool(_) => {}
    }
}

/// Masks sensitive fields and card numbers in an `application/x-www-form-urlencoded` text. Pairs keep
/// their order; only changed keys and values are re-encoded.
pub fn redact_form(text: &str) -> String {
    let pairs: Vec<String> = text
        .split('&')
        .map(|pair| {
            let (raw_key, raw_value) = match pair.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (pair, None),
            };
            let key = percent_decode(raw_key);
            let out_key = match mask_pans(&key) {
                Cow::Borrowed(_) => raw_key.to_owned(),
                Cow::Owned(masked) => percent_encode(&masked),
            };
            let Some(raw_value) = raw_value else {
                return out_key;
            };
            let value = percent_decode(raw_value);
            let out_value = match sensitive_key(&key) {
                Some(kind) => percent_encode(&masked_field(kind, &value)),
                None => match redact_text(&value) {
                    Cow::Borrowed(_) => raw_value.to_owned(),
                    Cow::Owned(masked) => percent_encode(&masked),
                },
            };
            format!("{out_key}={out_value}")
        })
        .collect();
    pairs.join("&")
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Masks card numbers and the values of sensitive-looking fields in free text: `name=value`,
/// `name: value`, `"name": "value"`, `<name>value`. A fallback for text that is neither JSON nor a form.
pub fn redact_text(text: &str) -> Cow<'_, str> {
    let masked = mask_pans(text);
    match redact_fields(&masked) {
        Some(out) => Cow::Owned(out),
        None => masked,
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'[' | b']' | b'.')
}

/// The text with sensitive field values masked, or `None` when there is none.
fn redact_fields(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if !is_name_byte(bytes[i]) {
            i += 1;
            continue;
        }
        let name_start = i;
        while i < bytes.len() && is_name_byte(bytes[i]) {
            i += 1;
        }
        let name = &text[name_start..i];
        let Some(kind) = sensitive_key(name) else {
            continue;
        };
        // After the name: an optional closing quote, spaces, a separator, spaces, an optional quote.
        let mut j = i;
        if j < bytes.len() && (bytes[j] == b'"' || bytes[j] == b'\'') {
            j += 1;
        }
        while j < bytes.len() && (bytes[j] == b' ' || bytes[j] == b'\t') {
            j += 1;
        }
        let Some(&sep) = bytes.get(j) else { break };
        // `>` separates only an opening tag's name from its content: `<cvc>987`, not `</cvc> x`.
        let opening_tag = name_start > 0 && bytes[name_start - 1] == b'<';
        if !(matches!(sep, b'=' | b':') || (sep == b'>' && opening_tag)) {
            continue;
        }
        j += 1;
        while j < bytes.len() && (bytes[j] == b' ' || bytes[j] == b'\t') {
            j += 1;
        }
        let quote = match bytes.get(j) {
            Some(&q @ (b'"' | b'\'')) => {
                j += 1;
                Some(q)
            }
            _ => None,
        };
        let value_start = j;
        match quote {
            Some(q) => {
                while j < bytes.len() && bytes[j] != q {
                    j += if bytes[j] == b'\\' { 2 } else { 1 };
                }
                j = j.min(bytes.len());
            }
            None => {
                let stops: &[u8] = if sep == b':' {
                    b"&,;}]<\"'\r\n"
                } else {
                    b"&,;}]<\"' \t\r\n"
                };
                while j < bytes.len() && !stops.contains(&bytes[j]) {
                    j += 1;
                }
                // "name: value" keeps spaces inside the value but not at its end.
                while j > value_start && (bytes[j - 1] == b' ' || bytes[j - 1] == b'\t') {
                    j -= 1;
                }
            }
        }
        if j > value_start {
            let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
            o.push_str(&text[copied..value_start]);
            o.push_str(&masked_field(kind, &text[value_start..j]));
            copied = j;
        }
        i = j.max(i);
    }
    out.map(|mut o| {
        o.push_str(&text[copied..]);
        o
    })
}

/// How a body was read for redaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// Parsed as JSON, re-written compactly with sensitive fields masked.
    Json,
    /// Parsed as `application/x-www-form-urlencoded`.
    Form,
    /// Any other UTF-8 text (or JSON that did not parse, or a cut body).
    Text,
    /// Not UTF-8: only its length is kept.
    Binary,
}

impl BodyFormat {
    /// Its name in audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Form => "form",
            Self::Text => "text",
            Self::Binary => "binary",
        }
    }
}

/// A body with its card data and secrets removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedactedBody {
    /// How it was read.
    pub format: BodyFormat,
    /// The redacted text (for [`BodyFormat::Binary`], a note with the length).
    pub text: String,
}

/// Redacts a request or response body for the audit trail. `content_type` picks the parser (JSON and
/// forms are parsed; a body without a content type that starts like JSON is tried as JSON); `truncated`
/// says the body was cut at a size limit, in which case a digit run at the cut (a card number cut in
/// two) is dropped and the rest is treated as text.
pub fn redact_body(content_type: Option<&str>, body: &[u8], truncated: bool) -> RedactedBody {
    let mut body = body;
    if truncated {
        let keep = body
            .iter()
            .rposition(|b| !matches!(b, b'0'..=b'9' | b' ' | b'-'))
            .map_or(0, |p| p + 1);
        body = &body[..keep];
    }
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        // A cut body may end inside a character: keep what is whole.
        Err(e) if truncated && e.error_len().is_none() => {
            std::str::from_utf8(&body[..e.valid_up_to()]).unwrap_or_default()
        }
        Err(_) => {
            return RedactedBody {
                format: BodyFormat::Binary,
                text: format!("[binary body of {} bytes not kept]", body.len()),
            }
        }
    };
    let ct = content_type.unwrap_or("").to_ascii_lowercase();
    let looks_json = text.trim_start().starts_with(['{', '[']);
    if !truncated && (ct.contains("json") || (ct.is_empty() && looks_json)) {
        if let Ok(mut value) = serde_json::from_str::<serde_json::Value>(text) {
            redact_json(&mut value);
            let out = value.to_string();
            let out = mask_pans(&out).into_owned();
            return RedactedBody {
                format: BodyFormat::Json,
                text: out,
            };
        }
    }
    if ct.contains("x-www-form-urlencoded") {
        let out = redact_form(text);
        return RedactedBody {
            format: BodyFormat::Form,
            text: mask_pans(&out).into_owned(),
        };
    }
    RedactedBody {
        format: BodyFormat::Text,
        text: redact_text(text).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_luhn_valid_card_numbers_keeping_6_and_4() {
        assert_eq!(
            mask_pans("pan 4242424242424242 end"),
            "pan 424242******4242 end"
        );
        assert_eq!(
            mask_pans("/v1/cards/4000056655665556"),
            "/v1/cards/400005******5556"
        );
        assert_eq!(mask_pans("4242 4242 4242 4242"), "4242 42** **** 4242");
        assert_eq!(mask_pans("4242-4242-4242-4242"), "4242-42**-****-4242");
        // Amex, 15 digits.
        assert_eq!(mask_pans("378282246310005"), "378282*****0005");
        // Two in one text.
        assert_eq!(
            mask_pans("a=4242424242424242&b=5555555555554444"),
            "a=424242******4242&b=555555******4444"
        );
    }

    #[test]
    fn finds_a_card_number_inside_a_longer_run_of_groups() {
        // A card number typed with its CVC after it: one run of 19 digits that is not Luhn-valid.
        assert_eq!(
            mask_pans("card 4242 4242 4242 4242 123 ok"),
            "card 4242 42** **** 4242 123 ok"
        );
        assert_eq!(
            mask_pans("12 4242-4242-4242-4242"),
            "12 4242-42**-****-4242"
        );
    }

    #[test]
    fn leaves_other_numbers_alone() {
        // Luhn-invalid, too short, too long, ordinary ids and amounts.
        for text in [
            "4242424242424241",
            "424242424242",
            "42424242424242424242",
            "order-1000 amount=1999",
            "pi_psp_primary_000001",
        ] {
            assert!(matches!(mask_pans(text), Cow::Borrowed(_)), "{text}");
        }
    }

    #[test]
    fn sensitive_names_are_recognised_on_their_last_part() {
        for name in [
            "card[number]",
            "number",
            "cardNumber",
            "encryptedCardNumber",
            "paymentMethod.number",
        ] {
            assert_eq!(sensitive_key(name), Some(Sensitive::CardNumber), "{name}");
        }
        for name in [
            "card[cvc]",
            "cvc",
            "CVV2",
            "security_code",
            "exp_month",
            "expiryYear",
            "track2",
            "pin",
            "iban",
            "client_secret",
            "api_key",
            "Authorization",
            "onlinePaymentCryptogram",
        ] {
            assert_eq!(sensitive_key(name), Some(Sensitive::Secret), "{name}");
        }
        for name in [
            "amount",
            "currency",
            "cvc_check",
            "cvcResult",
            "shipping",
            "expires_at",
            "id",
            "",
        ] {
            assert_eq!(sensitive_key(name), None, "{name}");
        }
    }

    #[test]
    fn json_bodies_lose_card_data_and_keep_the_rest() {
        let body = br#"{"amount":1000,"card":{"number":"4242 4242 4242 4242","cvc":"987","exp_month":12},"note":"pan 5555555555554444","items":[{"cvv":123}],"big":4242424242424242}"#;
        let r = redact_body(Some("application/json"), body, false);
        assert_eq!(r.format, BodyFormat::Json);
        let v: serde_json::Value = serde_json::from_str(&r.text).unwrap();
        assert_eq!(v["amount"], 1000);
        assert_eq!(v["card"]["number"], "4242 42** **** 4242");
        assert_eq!(v["card"]["cvc"], REDACTED);
        assert_eq!(v["card"]["exp_month"], REDACTED);
        assert_eq!(v["note"], "pan 555555******4444");
        assert_eq!(v["items"][0]["cvv"], REDACTED);
        assert_eq!(v["big"], "424242******4242");
        assert!(!r.text.contains("987"));
    }

    #[test]
    fn form_bodies_lose_card_data_and_keep_the_rest() {
        let body = b"amount=1000&card%5Bnumber%5D=4242+4242+4242+4242&card[cvc]=987&description=pan+4000056655665556&currency=eur";
        let r = redact_body(Some("application/x-www-form-urlencoded"), body, false);
        assert_eq!(r.format, BodyFormat::Form);
        assert_eq!(
            r.text,
            "amount=1000&card%5Bnumber%5D=4242+42**+****+4242&card[cvc]=%5Bredacted%5D&description=pan+400005******5556&currency=eur"
        );
    }

    #[test]
    fn text_bodies_lose_fields_that_look_sensitive() {
        let text =
            r#"<cvc>987</cvc> pin=1234 other=1 "cvv": "555", Authorization: Bearer sk_live_abc"#;
        let out = redact_text(text);
        assert_eq!(
            out,
            r#"<cvc>[redacted]</cvc> pin=[redacted] other=1 "cvv": "[redacted]", Authorization: [redacted]"#
        );
        assert!(matches!(
            redact_text("nothing to see here"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn a_json_body_that_does_not_parse_is_redacted_as_text() {
        let r = redact_body(
            Some("application/json"),
            br#"{"cvc":"987","number":"4242424242424242""#,
            false,
        );
        assert_eq!(r.format, BodyFormat::Text);
        assert!(!r.text.contains("987"), "{}", r.text);
        assert!(!r.text.contains("4242424242424242"), "{}", r.text);
    }

    #[test]
    fn a_cut_body_drops_the_digits_at_the_cut() {
        let r = redact_body(Some("text/plain"), b"card 424242424242", true);
        assert_eq!(r.text, "card");
        let r = redact_body(Some("application/json"), b"{\"a\":\"\xc3\xa9\xc3", true);
        assert_eq!(r.format, BodyFormat::Text);
        assert_eq!(r.text, "{\"a\":\"\u{e9}");
    }

    #[test]
    fn binary_bodies_keep_only_their_length() {
        let r = redact_body(None, &[0xff, 0xfe, 0x00, 0x34], false);
        assert_eq!(r.format, BodyFormat::Binary);
        assert_eq!(r.text, "[binary body of 4 bytes not kept]");
    }
}
