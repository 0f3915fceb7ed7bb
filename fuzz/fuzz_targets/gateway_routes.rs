//! proxy-gateway's configuration and route table: arbitrary bytes as `omnimesh.toml`
//! (the data after the first line) and as a request (`METHOD PATH header=value…` on the
//! first line). Loading never panics; a configuration that loads has routes whose
//! clusters exist and whose picks stay inside their split; the route selected for a
//! request really matches it.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use omnimesh_common::config::{Sources, load_from};
use proxy_gateway::route::{PathMatch, RequestFacts, RouteTable};

fn scratch() -> &'static std::path::Path {
    static PATH: OnceLock<std::path::PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("omnimesh-fuzz-gateway-{}.toml", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (request, config) = text.split_once('\n').unwrap_or((text, ""));
    std::fs::write(scratch(), config).expect("scratch file");
    let Ok(config) = load_from::<proxy_gateway::Config>(&Sources::new().with_file(scratch()))
    else {
        return;
    };
    let table = config
        .routes
        .map_or_else(RouteTable::default, |routes| RouteTable { routes });
    for route in &table.routes {
        for roll in [0, 1, 42, 99, u64::MAX] {
            let cluster = route.cluster_for(roll);
            assert!(!cluster.is_empty(), "{route:?} picked no cluster");
            assert!(
                route.split.is_empty() || route.split.iter().any(|s| s.cluster == cluster),
                "{route:?} picked {cluster} outside its split"
            );
        }
    }

    let mut words = request.split(' ');
    let method = words.next().unwrap_or("GET");
    let path = words.next().unwrap_or("/");
    let headers: Vec<(&str, &str)> = words.filter_map(|w| w.split_once('=')).collect();
    let lookup = |name: &str| headers.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    for grpc in [false, true] {
        let facts = RequestFacts {
            method,
            host: lookup("host"),
            grpc,
            path,
            header: &lookup,
        };
        if let Some(route) = table.select(facts) {
            let matched = match &route.path {
                PathMatch::Prefix(prefix) => path.starts_with(prefix.as_str()),
                PathMatch::Exact(exact) => path == exact,
                PathMatch::Regex(pattern) => pattern.is_full_match(path),
            };
            assert!(matched, "{route:?} selected for {path}");
            assert!(route.mismatch(&facts).is_none());
            // Explain agrees with select.
            let (explained, steps) = table.explain(facts);
            assert_eq!(explained.map(|r| r.name()), Some(route.name()));
            assert!(steps.last().is_some_and(|step| step.ends_with("matches")));
            assert!(route.grpc.is_none_or(|g| g == grpc));
        }
    }
});
