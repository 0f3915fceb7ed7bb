//! The data plane's Prometheus metrics, served on the admin port's `/metrics`.
//!
//! Label values come from small fixed sets: route names from the configuration (the
//! route's match), cluster names from the configuration and the registry's services,
//! HTTP status codes, gRPC status code names.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Answers of one endpoint.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// The cluster.
    pub cluster: String,
    /// The endpoint's `host:port`.
    pub endpoint: String,
    /// `success` or `failure` (as outlier detection judges it).
    pub result: &'static str,
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
    /// Tries answered by each endpoint, good or failed.
    pub endpoint_requests: Family<EndpointLabels, Counter>,
    /// Hedged tries sent, by cluster.
    pub hedges: Family<ClusterLabels, Counter>,
    /// Retries refused by the budget, by cluster.
    pub budget_exhausted: Family<ClusterLabels, Counter>,
    /// Requests refused because their cluster had too many open, by cluster.
    pub overflow: Family<ClusterLabels, Counter>,
    /// Endpoints ejected, by cluster.
    pub ejections: Family<ClusterLabels, Counter>,
    /// Requests refused for their token, by route.
    pub auth_denied: Family<RouteLabels, Counter>,
    /// Requests refused by a rate limit, by route.
    pub rate_limited: Family<RouteLabels, Counter>,
    /// Shared rate limit checks that Redis could not answer.
    pub rate_limit_errors: Counter,
    /// Downstream connections open now.
    pub connections: Gauge,
    /// Per route and cluster, for `GatewayAdmin.GetStats`.
    stats: std::sync::RwLock<std::collections::HashMap<(String, String), Arc<RouteStats>>>,
}

/// The duration buckets' upper bounds: 50 µs × 2.5ⁿ, n < 14 (up to ≈ 7.5 s).
const BUCKETS: usize = 14;

fn bucket_bounds() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_05, 2.5, BUCKETS as u16)
}

fn histogram() -> Histogram {
    Histogram::new(bucket_bounds())
}

/// One route and cluster's counts, for the admin API (the same buckets as the
/// Prometheus histogram, read without encoding the registry).
#[derive(Debug, Default)]
pub struct RouteStats {
    requests: AtomicU64,
    errors: AtomicU64,
    /// Per bucket of [`bucket_bounds`], then one for anything slower.
    buckets: [AtomicU64; BUCKETS + 1],
}

impl RouteStats {
    /// Requests finished.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Of which failed: HTTP 5xx, or gRPC UNKNOWN, DEADLINE_EXCEEDED, INTERNAL,
    /// UNAVAILABLE or DATA_LOSS (what the rollout analysis counts as failures).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The `q` quantile of the durations in seconds, interpolated within its bucket as
    /// Prometheus' `histogram_quantile` does; 0 with no requests.
    pub fn quantile(&self, q: f64) -> f64 {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let bounds: Vec<f64> = bucket_bounds().collect();
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut seen = 0_u64;
        for (index, &count) in counts.iter().enumerate() {
            if count > 0 && (seen + count) as f64 >= rank {
                let lower = if index == 0 { 0.0 } else { bounds[index - 1] };
                let Some(&upper) = bounds.get(index) else {
                    return lower; // the open-ended bucket: its lower bound
                };
                let within = (rank - seen as f64) / count as f64;
                return lower + (upper - lower) * within;
            }
            seen += count;
        }
        bounds[BUCKETS - 1]
    }

    fn record(&self, seconds: f64, failed: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let index = bucket_bounds()
            .position(|bound| seconds <= bound)
            .unwrap_or(BUCKETS);
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
    }
}

/// Whether a finished request counts as failed.
fn failed(labels: &RequestLabels) -> bool {
    labels.status >= 500
        || matches!(
            labels.grpc_status,
            "UNKNOWN" | "DEADLINE_EXCEEDED" | "INTERNAL" | "UNAVAILABLE" | "DATA_LOSS"
        )
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
            hedges: Family::default(),
            endpoint_requests: Family::default(),
            ejections: Family::default(),
            overflow: Family::default(),
            auth_denied: Family::default(),
            rate_limited: Family::default(),
            rate_limit_errors: Counter::default(),
            connections: Gauge::default(),
            stats: std::sync::RwLock::default(),
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
            "gateway_endpoint_requests",
            "Tries by endpoint and result (success, failure as outlier detection judges it)",
            this.endpoint_requests.clone(),
        );
        registry.register(
            "gateway_hedges",
            "Second tries sent because the first was slow (hedging)",
            this.hedges.clone(),
        );
        registry.register(
            "gateway_retry_budget_exhausted",
            "Retries refused because the retry budget was spent",
            this.budget_exhausted.clone(),
        );
        registry.register(
            "gateway_overflow",
            "Requests refused at once because their cluster had max_requests open",
            this.overflow.clone(),
        );
        registry.register(
            "gateway_ejections",
            "Endpoints ejected (refused connections, or failed answers in a row)",
            this.ejections.clone(),
        );
        registry.register(
            "gateway_auth_denied",
            "Requests refused for a missing, bad or too weak token",
            this.auth_denied.clone(),
        );
        registry.register(
            "gateway_rate_limited",
            "Requests refused by a rate limit",
            this.rate_limited.clone(),
        );
        registry.register(
            "gateway_rate_limit_backend_errors",
            "Shared rate limit checks Redis did not answer (then failed open or closed)",
            this.rate_limit_errors.clone(),
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
        let seconds = started.elapsed().as_secs_f64();
        self.requests.get_or_create(labels).inc();
        self.durations.get_or_create(labels).observe(seconds);
        self.route_stats(&labels.route, &labels.cluster)
            .record(seconds, failed(labels));
    }

    fn route_stats(&self, route: &str, cluster: &str) -> Arc<RouteStats> {
        let key = (route.to_owned(), cluster.to_owned());
        if let Some(stats) = self
            .stats
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
        {
            return Arc::clone(stats);
        }
        let mut stats = self
            .stats
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(stats.entry(key).or_default())
    }

    /// Every (route, cluster) seen, with its counts, sorted.
    pub fn route_stats_all(&self) -> Vec<((String, String), Arc<RouteStats>)> {
        let mut all: Vec<_> = self
            .stats
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(key, stats)| (key.clone(), Arc::clone(stats)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Retries sent to `cluster` so far.
    pub fn retries_of(&self, cluster: &str) -> u64 {
        self.retries
            .get(&ClusterLabels {
                cluster: cluster.to_owned(),
            })
            .map_or(0, |counter| counter.get())
    }

    /// Requests refused on `route` for their token so far.
    pub fn auth_denied_of(&self, route: &str) -> u64 {
        self.auth_denied
            .get(&RouteLabels {
                route: route.to_owned(),
            })
            .map_or(0, |counter| counter.get())
    }

    /// Drops the per-endpoint series of endpoints in `before` that are not in `after`
    /// (so `/metrics` follows the endpoints, not every endpoint ever seen).
    pub fn forget_endpoints(
        &self,
        before: &crate::balance::Balancers,
        after: &crate::balance::Balancers,
    ) {
        for (cluster, _, backends) in before.clusters() {
            for backend in backends {
                let stays = after
                    .backends(cluster)
                    .iter()
                    .any(|other| Arc::ptr_eq(other, backend));
                if stays || backend.counters.get().is_none() {
                    continue;
                }
                for result in ["success", "failure"] {
                    self.endpoint_requests.remove(&EndpointLabels {
                        cluster: cluster.to_owned(),
                        endpoint: backend.endpoint.address.clone(),
                        result,
                    });
                }
            }
        }
    }

    /// Requests refused on `route` by its rate limit so far.
    pub fn rate_limited_of(&self, route: &str) -> u64 {
        self.rate_limited
            .get(&RouteLabels {
                route: route.to_owned(),
            })
            .map_or(0, |counter| counter.get())
    }

    /// Endpoints ejected so far, all clusters.
    pub fn ejections_total(&self, clusters: &[&str]) -> u64 {
        clusters
            .iter()
            .filter_map(|cluster| {
                self.ejections.get(&ClusterLabels {
                    cluster: (*cluster).to_owned(),
                })
            })
            .map(|counter| counter.get())
            .sum()
    }
}

/// What is logged of a request in the access log.
#[derive(Debug)]
pub struct AccessEntry {
    /// The method.
    pub method: http::Method,
    /// The path (no query: it may carry secrets).
    pub path: String,
    /// The peer.
    pub remote: std::net::SocketAddr,
    /// The request's trace (for finding its spans).
    pub trace_id: String,
}

/// Records a request once: when its response ends, or when it is dropped unfinished.
#[derive(Debug)]
pub struct Recorder {
    metrics: Arc<GatewayMetrics>,
    labels: RequestLabels,
    started: Instant,
    done: bool,
    access: Option<Box<AccessEntry>>,
    span: Option<crate::trace::ExportedSpan>,
}

impl Recorder {
    /// A request on `route` to `cluster`, started at `started`, answered with `status`.
    pub fn new(metrics: Arc<GatewayMetrics>, labels: RequestLabels, started: Instant) -> Self {
        Self {
            metrics,
            labels,
            started,
            done: false,
            access: None,
            span: None,
        }
    }

    /// Also writes an access log line (target `access`) when the request finishes.
    pub fn with_access_log(mut self, entry: Option<Box<AccessEntry>>) -> Self {
        self.access = entry;
        self
    }

    /// Also ends this exported span when the request finishes.
    pub(crate) fn with_span(mut self, span: Option<crate::trace::ExportedSpan>) -> Self {
        self.span = span;
        self
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
        let labels = &self.labels;
        if let Some(span) = self.span.take() {
            span.end(
                labels.status,
                labels.grpc_status,
                &labels.route,
                &labels.cluster,
            );
        }
        if let Some(entry) = self.access.take() {
            tracing::info!(
                target: "access",
                method = %entry.method,
                path = %entry.path,
                status = labels.status,
                grpc_status = labels.grpc_status,
                route = %labels.route,
                cluster = %labels.cluster,
                duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
                client = %entry.remote,
                trace_id = %entry.trace_id,
                "request"
            );
        }
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
    fn quantiles_interpolate_within_buckets() {
        let stats = RouteStats::default();
        assert_eq!(stats.quantile(0.5), 0.0);
        // 100 requests of 10 µs (first bucket, ≤ 50 µs), one of 1 s.
        for _ in 0..100 {
            stats.record(0.000_01, false);
        }
        stats.record(1.0, true);
        assert_eq!((stats.requests(), stats.errors()), (101, 1));
        let p50 = stats.quantile(0.5);
        assert!(p50 > 0.0 && p50 <= 0.000_05, "{p50}");
        let p999 = stats.quantile(0.999);
        assert!(p999 > 0.3 && p999 <= 1.2, "{p999}");
    }

    #[test]
    fn grpc_codes_have_names() {
        assert_eq!(grpc_code_name(b"0"), "OK");
        assert_eq!(grpc_code_name(b"14"), "UNAVAILABLE");
        assert_eq!(grpc_code_name(b"99"), "UNKNOWN");
        assert_eq!(grpc_code_name(b"x"), "UNKNOWN");
    }
}
