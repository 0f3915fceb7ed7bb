//! The data plane's Prometheus metrics, served on the admin port's `/metrics`.
//!
//! Label values come from small fixed sets: route names from the configuration (the
//! route's match), cluster names from the configuration and the registry's services,
//! HTTP status codes, gRPC status code names.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// One answered request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route's match (`/omnimesh.engine.v1.`), or `none`.
    pub route: String,
    /// The cluster, or `none`.
    pub cluster: String,
    /// The HTTP status code.
    pub status: u16,
    /// The gRPC status code name, or empty for other traffic.
    pub grpc_status: &'static str,
}

/// Per-cluster events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    /// The cluster.
    pub cluster: String,
}

/// Per-route events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route's match.
    pub route: String,
}

/// The gateway's own metrics.
#[derive(Debug)]
pub struct GatewayMetrics {
    requests: Family<RequestLabels, Counter>,
    durations: Family<RequestLabels, Histogram, fn() -> Histogram>,
    /// Retries sent, by cluster.
    pub retries: Family<ClusterLabels, Counter>,
    /// Retries refused by the budget, by cluster.
    pub budget_exhausted: Family<ClusterLabels, Counter>,
    /// Endpoints ejected, by cluster.
    pub ejections: Family<ClusterLabels, Counter>,
    /// Requests refused for their token, by route.
    pub auth_denied: Family<RouteLabels, Counter>,
    /// Downstream connections open now.
    pub connections: Gauge,
}

fn histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.5, 14))
}

pub use omnimesh_telemetry::grpc_code_name;

impl GatewayMetrics {
    /// Registers every metric in `registry`.
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Arc<Self> {
        let this = Self {
            requests: Family::default(),
            durations: Family::new_with_constructor(histogram),
            retries: Family::default(),
            budget_exhausted: Family::default(),
            ejections: Family::default(),
            auth_denied: Family::default(),
            connections: Gauge::default(),
        };
        registry.register(
            "gateway_requests",
            "Requests answered by the data plane, by route, cluster, HTTP status and gRPC status",
            this.requests.clone(),
        );
        registry.register(
            "gateway_request_duration_seconds",
            "Time from the request to the end of the response",
            this.durations.clone(),
        );
        registry.register(
            "gateway_retries",
            "Tries sent again to another endpoint",
            this.retries.clone(),
        );
        registry.register(
            "gateway_retry_budget_exhausted",
            "Retries refused because the retry budget was spent",
            this.budget_exhausted.clone(),
        );
        registry.register(
            "gateway_ejections",
            "Endpoints ejected for refusing connections",
            this.ejections.clone(),
        );
        registry.register(
            "gateway_auth_denied",
            "Requests refused for a missing, bad or too weak token",
            this.auth_denied.clone(),
        );
        registry.register(
            "gateway_active_connections",
            "Downstream connections open now",
            this.connections.clone(),
        );
        Arc::new(this)
    }

    /// Records one finished request.
    pub fn record(&self, labels: &RequestLabels, started: Instant) {
        self.requests.get_or_create(labels).inc();
        self.durations
            .get_or_create(labels)
            .observe(started.elapsed().as_secs_f64());
    }
}

/// Records a request once: when its response ends, or when it is dropped unfinished.
#[derive(Debug)]
pub struct Recorder {
    metrics: Arc<GatewayMetrics>,
    labels: RequestLabels,
    started: Instant,
    done: bool,
}

impl Recorder {
    /// A request on `route` to `cluster`, started at `started`, answered with `status`.
    pub fn new(metrics: Arc<GatewayMetrics>, labels: RequestLabels, started: Instant) -> Self {
        Self {
            metrics,
            labels,
            started,
            done: false,
        }
    }

    /// The response ended (`grpc_status` from its trailers when it had some).
    pub fn finish(&mut self, grpc_status: Option<&'static str>) {
        if self.done {
            return;
        }
        self.done = true;
        if let Some(code) = grpc_status {
            self.labels.grpc_status = code;
        }
        self.metrics.record(&self.labels, self.started);
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if !self.done {
            // The client went away before the end.
            if !self.labels.grpc_status.is_empty() {
                self.labels.grpc_status = "CANCELLED";
            }
            self.finish(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_have_names() {
        assert_eq!(grpc_code_name(b"0"), "OK");
        assert_eq!(grpc_code_name(b"14"), "UNAVAILABLE");
        assert_eq!(grpc_code_name(b"99"), "UNKNOWN");
        assert_eq!(grpc_code_name(b"x"), "UNKNOWN");
    }
}
