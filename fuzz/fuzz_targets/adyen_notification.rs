//! Adyen notification bodies: any bytes are read (or refused) without a panic, and every item of a
//! readable one yields a signing string to sign.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::webhooks::verify::{adyen_items, adyen_signature};

fuzz_target!(|data: &[u8]| {
    if let Ok(items) = adyen_items(data) {
        for item in items {
            let _ = adyen_signature(b"0123456789abcdef", &item.signing_string);
        }
    }
});
