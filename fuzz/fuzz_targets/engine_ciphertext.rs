//! Arbitrary text as an `omnimesh:v<N>:<base64>` ciphertext (and arbitrary associated
//! data): parsing and opening never panic, and the envelope's SIMD base64 decoding
//! accepts exactly what the `base64` crate's strict decoding does.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &[u8])| {
    let (text, associated_data) = input;
    assert!(
        !core_engine::fuzz_support::open_ciphertext(text, associated_data),
        "a forged ciphertext opened"
    );
    assert!(
        core_engine::fuzz_support::base64_decoders_agree(text),
        "the decoders disagree on {text:?}"
    );
});
