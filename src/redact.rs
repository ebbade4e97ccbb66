//! Masks card numbers (PANs) in any text the proxy writes: logs, error details, problem bodies.
//!
//! A run of 13–19 digits (spaces or dashes between groups allowed, as people type them) that passes the
//! Luhn check is shown as its first 6 and last 4 digits with the rest masked, as PCI DSS allows. Text
//! without such a run is returned as is, without allocating.

use std::borrow::Cow;

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
        // A run: digits, with single spaces or dashes between them.
        let start = i;
        let mut end = i;
        let mut digits = Vec::with_capacity(19);
        let mut j = i;
        while j < bytes.len() {
            let b = bytes[j];
            if b.is_ascii_digit() {
                digits.push(b - b'0');
                end = j + 1;
                j += 1;
            } else if (b == b' ' || b == b'-')
                && j + 1 < bytes.len()
                && bytes[j + 1].is_ascii_digit()
            {
                j += 1;
            } else {
                break;
            }
        }
        i = end;
        if !(13..=19).contains(&digits.len()) || !luhn(&digits) {
            continue;
        }
        let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
        o.push_str(&text[copied..start]);
        let mut seen = 0;
        for &b in &bytes[start..end] {
            if b.is_ascii_digit() {
                seen += 1;
                if seen <= 6 || seen > digits.len() - 4 {
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
    match out {
        None => Cow::Borrowed(text),
        Some(mut o) => {
            o.push_str(&text[copied..]);
            Cow::Owned(o)
        }
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
}
