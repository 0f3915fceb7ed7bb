//! Arbitrary text as an `omnimesh:v<N>:<base64>` ciphertext (and arbitrary associated
//! data): parsing and opening never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &[u8])| {
    let (text, associated_data) = input;
    assert!(
        !core_engine::fuzz_support::open_ciphertext(text, associated_data),
        "a forged ciphertext opened"
    );
});
