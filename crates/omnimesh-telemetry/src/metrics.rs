//! The Prometheus registry of one service and its text exposition.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The Prometheus registry of one service: every metric is named
/// `omnimesh_<service>_<what>_<unit>` (the prefix is added here).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// A registry for `service` (`core-engine` becomes the prefix `omnimesh_core_engine`)
    /// holding `build_info{version}` = 1.
    pub fn new(service: &str, version: &str) -> Self {
        let prefix = format!("omnimesh_{}", service.replace('-', "_"));
        let mut registry = Registry::with_prefix(prefix);
        let build_info = Family::<Vec<(String, String)>, Gauge>::default();
        build_info
            .get_or_create(&vec![("version".to_owned(), version.to_owned())])
            .set(1);
        registry.register("build_info", "Build information; always 1", build_info);
        Self { registry }
    }

    /// The registry, to register a service's own metrics while it is being built.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The Prometheus text exposition format (`/metrics`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_info_carries_prefix_and_version() {
        let text = Metrics::new("core-engine", "1.2.3").encode();
        assert!(
            text.contains("omnimesh_core_engine_build_info{version=\"1.2.3\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
