//! proxy-gateway's watched endpoints file: arbitrary text never panics the parser, and
//! what it accepts is usable — every endpoint is `host:port`, ids are unique per
//! cluster and sorted.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(sets) = proxy_gateway::upstream::parse_endpoints_file(text, 1) else {
        return;
    };
    for (cluster, set) in &sets {
        assert!(!cluster.is_empty());
        assert_eq!(set.source, "file");
        for pair in set.endpoints.windows(2) {
            assert!(pair[0].id < pair[1].id, "unsorted or duplicate: {pair:?}");
        }
        for endpoint in &set.endpoints {
            let authority: http::uri::Authority = endpoint.address.parse().expect("host:port");
            assert!(authority.port_u16().is_some());
        }
    }
});
