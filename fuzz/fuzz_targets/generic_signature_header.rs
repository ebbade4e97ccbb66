//! Generic signature headers: any prefix, value and encoding, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::config::SignatureEncoding;
use switchyard::webhooks::verify::parse_generic_signature;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let encoding = if first & 1 == 0 {
        SignatureEncoding::Hex
    } else {
        SignatureEncoding::Base64
    };
    let split = usize::from(first >> 1).min(rest.len());
    let prefix = String::from_utf8_lossy(&rest[..split]);
    let value = String::from_utf8_lossy(&rest[split..]);
    let _ = parse_generic_signature(&value, &prefix, encoding);
});
