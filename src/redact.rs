//! Removes card data and secrets from any text the proxy writes: logs, error details, problem bodies, and
//! the request and response bodies and paths kept in the audit trail (`PAYMENT_RULES.md` §6).
//!
//! Two mechanisms, applied together:
//! - **Card numbers anywhere, however written.** Digits with any run of separators between them (spaces,
//!   tabs, `- . / _ +`, Unicode spaces and dashes, percent-encoded and JSON-escaped separators) form a
//!   run; every window of 13–19 digits of a run that passes the Luhn check has its middle masked, so
//!   at most its first 6 and last 4 digits show, as PCI DSS allows. A card number inside a longer run (a
//!   card number followed by its expiry or CVC) is found too, at the price of masking a few numbers
//!   that are not card numbers ([`mask_pans`]). Paths and queries are also checked percent-decoded
//!   ([`redact_path`]).
//! - **Known sensitive fields.** A field whose name says it holds a card number, CVC/CVV, track data, PIN,
//!   expiry, cryptogram, IBAN or account number, or a secret (password, API key, token, client secret), has
//!   its value replaced by [`REDACTED`] (a card number keeps its first 6 and last 4 digits). Fields are
//!   found in JSON (parsed), form-encoded and multipart bodies (parsed) and, as a fallback, in any text
//!   that looks like `name=value`, `"name": value` or `<name>value`.
//!
//! Text without anything to mask is returned as is, without allocating.

use std::borrow::Cow;

/// What a masked field value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// `text` with every Luhn-valid 13–19 digit card number masked, however it is written.
///
/// A *run* is a sequence of ASCII digits with any separator run between them (see [`separator_len`]:
/// spaces, tabs, line breaks, `- . / _ +`, Unicode spaces and dashes, `%20`-style percent-encoded
/// separators, JSON escapes such as `\t` or `\u0020`). Every window of 13 to 19 consecutive digits of a
/// run that passes the Luhn check is a card number: the digits of its middle (all but its first 6 and
/// last 4) are replaced by `*`, separators are kept. Windows may overlap (a card number followed by its
/// expiry as one 20-digit run, a number typed after another); a digit is masked when it is in the middle
/// of any of them. This masks more than needed now and then (about one 13–19 digit window in ten passes
/// the Luhn check by chance), and never leaves the middle of a card number readable.
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
        // The run: positions of its digits, across separator runs that are followed by a digit.
        let mut digits: Vec<usize> = Vec::new();
        let mut j = i;
        while j < bytes.len() {
            if bytes[j].is_ascii_digit() {
                digits.push(j);
                j += 1;
                continue;
            }
            let mut k = j;
            loop {
                let n = separator_len(text, k);
                if n == 0 {
                    break;
                }
                k += n;
            }
            if k > j && k < bytes.len() && bytes[k].is_ascii_digit() {
                j = k;
            } else {
                break;
            }
        }
        i = j;
        if digits.len() < 13 {
            continue;
        }
        let values: Vec<u8> = digits.iter().map(|&p| bytes[p] - b'0').collect();
        let masked = masked_digits(&values);
        if !masked.contains(&true) {
            continue;
        }
        let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
        for (&pos, _) in digits.iter().zip(&masked).filter(|(_, &m)| m) {
            o.push_str(&text[copied..pos]);
            o.push('*');
            copied = pos + 1;
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

/// Which digits of a run are masked: the middle of every Luhn-valid 13–19 digit window.
fn masked_digits(digits: &[u8]) -> Vec<bool> {
    let mut masked = vec![false; digits.len()];
    for start in 0..digits.len() {
        for len in 13..=19 {
            let end = start + len;
            if end > digits.len() {
                break;
            }
            if luhn(&digits[start..end]) {
                masked[start + 6..end - 4]
                    .iter_mut()
                    .for_each(|m| *m = true);
            }
        }
    }
    masked
}

/// Whether `b` separates digit groups when people (or encoders) write a card number.
fn is_separator_byte(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t' | b'\r' | b'\n' | b'-' | b'.' | b'/' | b'_' | b'+'
    )
}

/// The length in bytes of the separator at byte `i` of `text`, 0 when there is none: a separator byte,
/// its percent-encoding (`%20`, and doubly encoded `%2520`), a JSON escape of one (`\t`, `\/`,
/// `\u0020`), a non-breaking or other Unicode space, or a Unicode dash.
fn separator_len(text: &str, i: usize) -> usize {
    let bytes = text.as_bytes();
    let Some(&b) = bytes.get(i) else { return 0 };
    let hex_byte = |at: usize| -> Option<u8> {
        let h = hex_val(*bytes.get(at)?)?;
        let l = hex_val(*bytes.get(at + 1)?)?;
        Some(h << 4 | l)
    };
    match b {
        _ if is_separator_byte(b) => 1,
        b'%' => match hex_byte(i + 1) {
            Some(d) if is_separator_byte(d) => 3,
            Some(b'%') => hex_byte(i + 3)
                .filter(|&d| is_separator_byte(d))
                .map_or(0, |_| 5),
            _ => 0,
        },
        b'\\' => match bytes.get(i + 1) {
            Some(b't' | b'n' | b'r' | b'/') => 2,
            Some(b'u')
                if bytes.get(i + 2..i + 4) == Some(b"00")
                    && hex_byte(i + 4).is_some_and(is_separator_byte) =>
            {
                6
            }
            _ => 0,
        },
        _ if b >= 0x80 && text.is_char_boundary(i) => match text[i..].chars().next() {
            Some(c) if c.is_whitespace() || matches!(c, '\u{2010}'..='\u{2015}' | '\u{2212}') => {
                c.len_utf8()
            }
            _ => 0,
        },
        _ => 0,
    }
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
    const SECRET_EXACT: [&str; 16] = [
        "cvc", "cvv", "cvc2", "cvv2", "cvn", "cid", "csc", "pin", "exp", "track", "track1",
        "track2", "xid", "cavv", "tavv", "token",
    ];
    const SECRET_PART: [&str; 29] = [
        "cvc",
        "cvv",
        "cvn2",
        "securitycode",
        "cardverification",
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
    /// Parsed as `multipart/*` (form-data), part by part.
    Multipart,
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
            Self::Multipart => "multipart",
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

/// Redacts a request or response body for the audit trail. `content_type` picks the parser (JSON, forms
/// and multipart bodies are parsed; a body without a content type that starts like JSON is tried as
/// JSON, one that starts like multipart as multipart); `truncated` says the body was cut at a size
/// limit, in which case a digit run at the cut (a card number cut in two) is dropped and the rest is
/// treated as text (or as multipart, whose last part is then cut).
pub fn redact_body(content_type: Option<&str>, body: &[u8], truncated: bool) -> RedactedBody {
    let mut body = body;
    if truncated {
        let keep = body
            .iter()
            .rposition(|&b| !(b.is_ascii_digit() || b == b'%' || is_separator_byte(b)))
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
        let quoted = quote_long_numbers(text);
        if let Ok(mut value) = serde_json::from_str::<serde_json::Value>(&quoted) {
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
    if ct.starts_with("multipart/") || (ct.is_empty() && text.starts_with("--")) {
        let boundary = content_type
            .and_then(multipart_boundary)
            .or_else(|| guess_boundary(text));
        if let Some(boundary) = boundary {
            return RedactedBody {
                format: BodyFormat::Multipart,
                text: mask_pans(&redact_multipart(text, &boundary)).into_owned(),
            };
        }
    }
    RedactedBody {
        format: BodyFormat::Text,
        text: redact_text(text).into_owned(),
    }
}

/// JSON text with every bare number of 13 or more digits turned into a string. Such a number may be a
/// card number, and once parsed it would be a float whose digits no longer match the text (so no
/// longer found by [`mask_pans`]); as a string it is masked like any other.
fn quote_long_numbers(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        if !(b.is_ascii_digit() || b == b'-') {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && matches!(bytes[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
        {
            i += 1;
        }
        let token = &text[start..i];
        if token.bytes().filter(u8::is_ascii_digit).count() >= 13 {
            let o = out.get_or_insert_with(|| String::with_capacity(text.len() + 8));
            o.push_str(&text[copied..start]);
            o.push('"');
            o.push_str(token);
            o.push('"');
            copied = i;
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

/// The `boundary` parameter of a `multipart/*` content type.
fn multipart_boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_owned())
            .filter(|b| !b.is_empty())
    })
}

/// The boundary of a multipart body sent without its content type: its first line, `--BOUNDARY`.
fn guess_boundary(text: &str) -> Option<String> {
    let first = text.lines().next()?.trim_end();
    let boundary = first.strip_prefix("--")?;
    (!boundary.is_empty() && !boundary.contains(char::is_whitespace)).then(|| boundary.to_owned())
}

/// A `multipart/form-data` (or other multipart) body with each part redacted: a part whose name says it
/// holds card data or a secret (`card[cvc]`, `cvv`, `pin`, `track2`, ...) loses its value like a form
/// field; a JSON or form part is parsed; any other part, the part headers (a file name), the preamble
/// and the epilogue are redacted as text. A body cut short keeps its last part, cut.
pub fn redact_multipart(text: &str, boundary: &str) -> String {
    let delimiter = format!("--{boundary}");
    let mut out = String::with_capacity(text.len());
    let mut pieces = text.split(delimiter.as_str());
    if let Some(preamble) = pieces.next() {
        out.push_str(&redact_text(preamble));
    }
    for piece in pieces {
        out.push_str(&delimiter);
        if piece.starts_with("--") {
            out.push_str(&redact_text(piece));
            continue;
        }
        out.push_str(&redact_part(piece));
    }
    out
}

/// One part (what follows a delimiter): its header lines, a blank line, its content.
fn redact_part(piece: &str) -> String {
    let split = piece
        .find("\r\n\r\n")
        .map(|p| (p, 4))
        .or_else(|| piece.find("\n\n").map(|p| (p, 2)));
    let Some((at, gap)) = split else {
        // No content (or the headers were cut): only headers.
        return redact_text(piece).into_owned();
    };
    let headers = &piece[..at];
    let rest = &piece[at + gap..];
    // The line break before the next delimiter belongs to the delimiter, not to the content.
    let content = rest
        .strip_suffix("\r\n")
        .or_else(|| rest.strip_suffix('\n'))
        .unwrap_or(rest);
    let ending = &rest[content.len()..];
    let mut name = None;
    let mut part_type = None;
    for line in headers.lines() {
        let Some((header, value)) = line.split_once(':') else {
            continue;
        };
        let header = header.trim();
        if header.eq_ignore_ascii_case("content-disposition") {
            name = value.split(';').skip(1).find_map(|param| {
                let (k, v) = param.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("name")
                    .then(|| percent_decode(v.trim().trim_matches('"')))
            });
        } else if header.eq_ignore_ascii_case("content-type") {
            part_type = Some(value.trim().to_owned());
        }
    }
    let content = match name.as_deref().and_then(sensitive_key) {
        Some(kind) => masked_field(kind, content.trim()),
        None => {
            redact_body(
                part_type.as_deref().or(Some("text/plain")),
                content.as_bytes(),
                false,
            )
            .text
        }
    };
    format!(
        "{}{}{content}{ending}",
        redact_text(headers),
        &piece[at..at + gap]
    )
}

/// Whether a request holds card data or a field the redactor masks (CVC, expiry, secrets), in its
/// path and query (as written or percent-decoded) or its body, by the rules of [`redact_body`] and
/// [`redact_path`]: what must never be kept at rest. A body that is not UTF-8 cannot be read to tell,
/// and counts as holding it.
pub fn holds_card_data(content_type: Option<&str>, path_and_query: &str, body: &[u8]) -> bool {
    if redact_path(path_and_query) != path_and_query {
        return true;
    }
    if body.is_empty() {
        return false;
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return true;
    };
    if matches!(mask_pans(text), Cow::Owned(_)) {
        return true;
    }
    let redacted = redact_body(content_type, body, false);
    redacted.format == BodyFormat::Binary
        || redacted.text.contains(REDACTED)
        || redacted.text.contains("***")
}

/// Masks card numbers in a URL's path and query for the audit trail, as written and as decoded: a card
/// number hidden by percent-encoding (`%34%32…`, `%2520`) is masked too. The query's sensitive
/// parameters (`card[cvc]=…`) lose their values as in a form. When decoding showed a card number the
/// raw form did not, the decoded (masked) form is returned: only a masked form is ever stored.
pub fn redact_path(path_and_query: &str) -> String {
    match path_and_query.split_once('?') {
        None => mask_encoded(path_and_query),
        Some((p, q)) => format!("{}?{}", mask_encoded(p), mask_encoded(&redact_form(q))),
    }
}

/// `text` with card numbers masked as written and at each of up to three levels of percent-decoding.
fn mask_encoded(text: &str) -> String {
    let mut result = mask_pans(text).into_owned();
    let mut probe = result.clone();
    for _ in 0..3 {
        let decoded = percent_decode_path(&probe);
        if decoded == probe {
            break;
        }
        probe = match mask_pans(&decoded) {
            Cow::Owned(masked) => {
                result = masked.clone();
                masked
            }
            Cow::Borrowed(_) => decoded,
        };
    }
    result
}

/// Percent-decoding as in a path: `+` stays `+`.
fn percent_decode_path(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| Some((hex_val(*bytes.get(i + 1)?)?, hex_val(*bytes.get(i + 2)?)?)))
            .flatten();
        match decoded {
            Some((h, l)) => {
                out.push(h << 4 | l);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
        // (Another Luhn-valid window of the 19 digits masks one more digit: more than needed, never less.)
        assert_eq!(
            mask_pans("card 4242 4242 4242 4242 123 ok"),
            "card 4242 42** **** ***2 123 ok"
        );
        assert_eq!(
            mask_pans("12 4242-4242-4242-4242"),
            "12 4242-42**-****-4242"
        );
    }

    #[test]
    fn leaves_other_numbers_alone() {
        // Luhn-invalid with no Luhn-valid window, too short, ordinary ids and amounts.
        for text in [
            "4242424242424",
            "424242424242",
            "order-1000 amount=1999",
            "2026-01-31T10:00:00.123Z latency 12.5",
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

    #[test]
    fn card_numbers_with_any_separator_run_are_masked() {
        for (text, masked) in [
            ("4242.4242.4242.4242", "4242.42**.****.4242"),
            ("4242/4242/4242/4242", "4242/42**/****/4242"),
            ("4242_4242_4242_4242", "4242_42**_****_4242"),
            ("4242+4242+4242+4242", "4242+42**+****+4242"),
            ("4242\t4242\t4242\t4242", "4242\t42**\t****\t4242"),
            ("4242  4242  4242  4242", "4242  42**  ****  4242"),
            ("4242 - 4242 - 4242 - 4242", "4242 - 42** - **** - 4242"),
            ("3782%20822463%2010005", "3782%2082****%20*0005"),
            ("3782%2520822463%252010005", "3782%252082****%2520*0005"),
            (
                "4242\u{a0}4242\u{2013}4242 4242",
                "4242\u{a0}42**\u{2013}**** 4242",
            ),
            (r"4242\t4242\u00204242\/4242", r"4242\t42**\u0020****\/4242"),
        ] {
            assert_eq!(mask_pans(text), masked, "{text:?}");
        }
    }

    #[test]
    fn a_card_number_inside_a_longer_digit_run_is_masked() {
        // The card number followed by its expiry, one 20-digit run.
        let out = mask_pans("42424242424242421228");
        assert!(out.starts_with("424242******"), "{out}");
        // Behind other digits, with separators.
        let out = mask_pans("ref 99 1 4000-0566-5566-5556-1228");
        assert!(
            !out.replace(['-', ' '], "").contains("4000056655665556"),
            "{out}"
        );
        assert!(out.contains("**"), "{out}");
    }

    #[test]
    fn cvc_fields_of_any_name_and_case_are_masked_in_json() {
        let body = br#"{"CVC":"111","Cvv":222,"cvc2":"333","CVV2":"444","security_code":"555","card_verification":"666","CVN":"777","cardVerificationValue":"888","cvc_check":"pass"}"#;
        let r = redact_body(Some("application/json"), body, false);
        for cvc in ["111", "222", "333", "444", "555", "666", "777", "888"] {
            assert!(!r.text.contains(cvc), "{cvc}: {}", r.text);
        }
        assert!(r.text.contains(r#""cvc_check":"pass""#), "{}", r.text);
    }

    #[test]
    fn a_long_json_number_holding_a_card_number_is_masked() {
        let r = redact_body(
            Some("application/json"),
            br#"{"n":42424242424242421228,"m":4242424242424242,"amount":1000}"#,
            false,
        );
        assert_eq!(r.format, BodyFormat::Json);
        assert!(!r.text.contains("4242424242424242"), "{}", r.text);
        assert!(!r.text.contains("4.24"), "{}", r.text);
        assert!(r.text.contains(r#""amount":1000"#), "{}", r.text);
    }

    #[test]
    fn multipart_parts_named_like_card_data_lose_their_value() {
        let body = "--XyZ\r\nContent-Disposition: form-data; name=\"amount\"\r\n\r\n1000\r\n\
                    --XyZ\r\nContent-Disposition: form-data; name=\"card[cvc]\"\r\n\r\n987\r\n\
                    --XyZ\r\nContent-Disposition: form-data; name=\"card[number]\"\r\n\r\n4242 4242 4242 4242\r\n\
                    --XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\npan 4000.0566.5566.5556\r\n\
                    --XyZ\r\nContent-Disposition: form-data; name=\"meta\"\r\nContent-Type: application/json\r\n\r\n{\"cvv\":\"321\"}\r\n\
                    --XyZ--\r\n";
        let r = redact_body(
            Some("multipart/form-data; boundary=XyZ"),
            body.as_bytes(),
            false,
        );
        assert_eq!(r.format, BodyFormat::Multipart);
        assert!(
            r.text.contains("name=\"amount\"\r\n\r\n1000\r\n"),
            "{}",
            r.text
        );
        assert!(
            r.text.contains("name=\"card[cvc]\"\r\n\r\n[redacted]\r\n"),
            "{}",
            r.text
        );
        assert!(r.text.contains("4242 42** **** 4242"), "{}", r.text);
        assert!(r.text.contains("pan 4000.05**.****.5556"), "{}", r.text);
        for secret in ["987", "321", "4000.0566.5566.5556"] {
            assert!(!r.text.contains(secret), "{secret}: {}", r.text);
        }
        assert!(r.text.ends_with("--XyZ--\r\n"), "{}", r.text);
        // Without its content type, and cut short, it is still read part by part.
        let cut = &body[..body.find("name=\"card[number]\"").unwrap() - 10];
        let r = redact_body(None, cut.as_bytes(), true);
        assert!(!r.text.contains("987"), "{}", r.text);
        let r = redact_body(Some("text/plain"), body.as_bytes(), false);
        assert_eq!(r.format, BodyFormat::Text);
    }

    #[test]
    fn paths_are_masked_as_written_and_as_decoded() {
        assert_eq!(
            redact_path("/v1/payment_methods/3782%20822463%2010005"),
            "/v1/payment_methods/3782%2082****%20*0005"
        );
        // Digits hidden by percent-encoding: only the decoded, masked form is kept.
        assert_eq!(
            redact_path("/v1/cards/%34%32%34%32%34%32%34%32%34%32%34%32%34%32%34%32/x"),
            "/v1/cards/424242******4242/x"
        );
        assert_eq!(
            redact_path("/v1/x?card%5Bcvc%5D=987&n=4242%2B4242%2B4242%2B4242&q=1"),
            "/v1/x?card%5Bcvc%5D=%5Bredacted%5D&n=4242%2B42**%2B****%2B4242&q=1"
        );
        assert_eq!(
            redact_path("/v1/orders/1000?expand=a"),
            "/v1/orders/1000?expand=a"
        );
    }

    /// A random Luhn-valid card number of 13 to 19 digits.
    fn random_pan(rng: &mut impl rand::Rng) -> String {
        let len = rng.random_range(13..=19);
        let mut digits: Vec<u8> = (0..len - 1).map(|_| rng.random_range(0..10)).collect();
        digits.push(0);
        let check = (0..10)
            .find(|&d| {
                digits[len - 1] = d;
                luhn(&digits)
            })
            .unwrap_or(0);
        digits[len - 1] = check;
        digits.iter().map(|d| char::from(b'0' + d)).collect()
    }

    /// Decodes percent-encoding (and `+`) until nothing changes, then keeps only digits and `*`.
    fn digits_of_output(text: &str) -> String {
        let mut text = text.to_owned();
        for _ in 0..4 {
            let decoded = percent_decode(&text);
            if decoded == text {
                break;
            }
            text = decoded;
        }
        text.chars()
            .filter(|c| c.is_ascii_digit() || *c == '*')
            .collect()
    }

    #[test]
    fn no_card_number_survives_redaction_in_any_carrier_with_any_separators() {
        use rand::{Rng, SeedableRng};
        const SEPARATORS: [&str; 17] = [
            "", " ", "  ", "\t", "-", ".", "/", "_", "+", " - ", "%20", "%2D", "%2520", "\u{a0}",
            "\u{2013}", "\n", " /_ ",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_0017);
        let started = std::time::Instant::now();
        for case in 0..2000 {
            let pan = random_pan(&mut rng);
            // The number in groups of 1 to 6 digits, with a random separator between groups.
            let mut written = String::new();
            let mut rest = pan.as_str();
            while !rest.is_empty() {
                let take = rng.random_range(1..=6).min(rest.len());
                if !written.is_empty() {
                    written.push_str(SEPARATORS[rng.random_range(0..SEPARATORS.len())]);
                }
                written.push_str(&rest[..take]);
                rest = &rest[take..];
            }
            // Sometimes glued to other digits: an expiry after it, a prefix before it.
            match rng.random_range(0..4) {
                0 => written.push_str("1228"),
                1 => written.insert_str(0, "99"),
                _ => {}
            }
            let encoded: String = written.bytes().map(|b| format!("%{b:02X}")).collect();
            let json_text = serde_json::to_string(&written).unwrap_or_default();
            let carriers: Vec<(&str, String)> = vec![
                ("json", redact_body(Some("application/json"), format!(r#"{{"note":{json_text},"amount":1}}"#).as_bytes(), false).text),
                ("form", redact_body(Some("application/x-www-form-urlencoded"), format!("a=1&note={}", percent_encode(&written)).as_bytes(), false).text),
                ("form-raw", redact_body(Some("application/x-www-form-urlencoded"), format!("note={written}&b=2").as_bytes(), false).text),
                ("multipart", redact_body(Some("multipart/form-data; boundary=b0"), format!("--b0\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\ncard {written} ok\r\n--b0--\r\n").as_bytes(), false).text),
                ("path", redact_path(&format!("/v1/cards/{written}/x"))),
                ("path-encoded", redact_path(&format!("/v1/cards/{encoded}"))),
                ("text", redact_body(Some("text/plain"), format!("refund for card {written}, thanks").as_bytes(), false).text),
                ("query", redact_path(&format!("/v1/x?q={}&n={written}", percent_encode(&written)))),
            ];
            for (carrier, out) in carriers {
                let digits = digits_of_output(&out);
                let n = pan.len();
                assert!(
                    !digits.contains(&pan)
                        && !digits.contains(&pan[..7])
                        && !digits.contains(&pan[n - 5..]),
                    "case {case}: {pan} written {written:?} in {carrier} came out as {out:?}"
                );
            }
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }
}
