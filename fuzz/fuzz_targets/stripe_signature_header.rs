//! `Stripe-Signature` parsing: any header text, never a panic; a parsed header has a v1 of 32 bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::webhooks::verify::parse_stripe_signature;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(sig) = parse_stripe_signature(&text) {
        assert!(!sig.v1.is_empty());
    }
});
