//! proxy-gateway's `traceparent` parser: arbitrary header bytes never panic it, and
//! what it accepts round-trips and yields a child in the same trace.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy_gateway::trace::TraceParent;

fuzz_target!(|data: &[u8]| {
    let Some(parsed) = TraceParent::parse(data) else {
        return;
    };
    assert_ne!(parsed.trace_id, [0; 16]);
    assert_ne!(parsed.span_id, [0; 8]);
    let again = TraceParent::parse(parsed.header().as_bytes()).expect("our own header parses");
    assert_eq!(again, parsed);
    let child = TraceParent::child_of(Some(&parsed));
    assert_eq!(child.trace_id, parsed.trace_id);
    assert_ne!(child.span_id, [0; 8]);
});
