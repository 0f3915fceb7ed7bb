//! Arbitrary bytes as an encrypted stream, split at sizes taken from the input: the
//! framing never panics and a forged stream never decrypts.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    assert!(
        !core_engine::fuzz_support::decrypt_stream(data),
        "a forged stream decrypted"
    );
});
