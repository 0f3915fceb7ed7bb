//! Arbitrary bytes as Analyze values and options: no panic, whatever the NaN, infinity,
//! quantile or histogram-edge content.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    core_engine::fuzz_support::analyze_bytes(data);
});
