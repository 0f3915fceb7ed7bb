//! Arbitrary bytes (as lossy UTF-8) through the interpreter: no panic, and every rule of
//! `nl::invariants::check` holds. libFuzzer's `-timeout` and `-rss_limit_mb` bound time
//! and memory per input.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use omniterm_interface::nl::{Interpreter, Limits, invariants};

static INTERPRETER: OnceLock<Interpreter> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let interpreter = INTERPRETER.get_or_init(|| Interpreter::new(Limits::default()));
    let text = String::from_utf8_lossy(data);
    if let Err(broken) = invariants::check(interpreter, &text) {
        panic!("{broken}");
    }
});
