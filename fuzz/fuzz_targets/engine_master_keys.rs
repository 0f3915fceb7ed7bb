//! Arbitrary bytes as core-engine's list of retired master keys
//! (`previous_master_keys_file`): parsing never panics, never accepts a key twice or the
//! master key itself, and never echoes a line in its error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = core_engine::fuzz_support::previous_master_keys(data);
});
