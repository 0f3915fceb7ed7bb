//! Active health checks: every `interval`, each endpoint of a checked cluster is asked
//! — `grpc.health.v1.Health/Check` or an HTTP `GET` — and taken out of rotation after
//! `unhealthy_threshold` failures in a row, put back after `healthy_threshold`
//! successes in a row. The settings are read from the serving configuration at every
//! round, so a reload changes them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Empty;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::balance::{Backend, Balancers};
use crate::live::Live;

/// How an endpoint is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// `grpc.health.v1.Health/Check`: healthy when `SERVING`.
    #[default]
    Grpc,
    /// `GET path`: healthy on a 2xx answer.
    Http,
}

/// `[proxy-gateway.health_checks.<cluster>]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `grpc` or `http`.
    #[serde(default)]
    pub kind: CheckKind,
    /// The service asked about (gRPC; empty: the server as a whole).
    #[serde(default)]
    pub service: String,
    /// The path asked for (HTTP).
    #[serde(default = "default_path")]
    pub path: String,
    /// Time between rounds.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How long one check may take; longer is a failure.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Failures in a row that take an endpoint out.
    #[serde(default = "default_unhealthy")]
    pub unhealthy_threshold: u32,
    /// Successes in a row that put it back.
    #[serde(default = "default_healthy")]
    pub healthy_threshold: u32,
}

fn default_path() -> String {
    "/healthz".to_owned()
}
fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_unhealthy() -> u32 {
    3
}
fn default_healthy() -> u32 {
    2
}

impl HealthCheck {
    /// Why the check cannot be used: (field, reason).
    ///
    /// # Errors
    /// Zero intervals, timeouts or thresholds; a timeout longer than the interval; a
    /// path not starting with `/`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.interval < Duration::from_millis(10) {
            return Err(("interval", "at least 10ms".into()));
        }
        if self.timeout.is_zero() || self.timeout > self.interval {
            return Err((
                "timeout",
                "must be positive and at most the interval".into(),
            ));
        }
        if self.unhealthy_threshold == 0 || self.healthy_threshold == 0 {
            return Err((
                "unhealthy_threshold",
                "thresholds must be at least 1".into(),
            ));
        }
        if !self.path.starts_with('/') || self.path.parse::<http::uri::PathAndQuery>().is_err() {
            return Err(("path", format!("{:?} is not a path", self.path)));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    cluster: String,
    result: &'static str,
}

/// The checks' counters.
#[derive(Debug, Clone, Default)]
pub struct HealthMetrics {
    checks: Family<CheckLabels, Counter>,
}

impl HealthMetrics {
    /// Registers `gateway_health_checks_total{cluster, result}`.
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let this = Self::default();
        registry.register(
            "gateway_health_checks",
            "Active health checks, by cluster and result (passed, failed)",
            this.checks.clone(),
        );
        this
    }
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Empty<bytes::Bytes>,
>;

/// The cached channel to `address` (connecting lazily, reconnecting by itself).
fn channel(
    channels: &mut HashMap<String, tonic::transport::Channel>,
    address: &str,
    timeout: Duration,
) -> Option<tonic::transport::Channel> {
    if let Some(channel) = channels.get(address) {
        return Some(channel.clone());
    }
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}")).ok()?;
    let channel = endpoint
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .connect_lazy();
    channels.insert(address.to_owned(), channel.clone());
    Some(channel)
}

/// Asks one endpoint once.
async fn probe(
    backend: &Backend,
    check: &HealthCheck,
    channel: Option<tonic::transport::Channel>,
    http: &HttpClient,
) -> bool {
    let address = &backend.endpoint.address;
    let asked = async {
        match check.kind {
            CheckKind::Grpc => {
                let Some(channel) = channel else {
                    return false;
                };
                let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
                client
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: check.service.clone(),
                    })
                    .await
                    .is_ok_and(|answer| {
                        answer.get_ref().status
                            == tonic_health::pb::health_check_response::ServingStatus::Serving
                                as i32
                    })
            }
            CheckKind::Http => {
                let Ok(uri) = format!("http://{address}{}", check.path).parse::<http::Uri>() else {
                    return false;
                };
                http.get(uri)
                    .await
                    .is_ok_and(|answer| answer.status().is_success())
            }
        }
    };
    tokio::time::timeout(check.timeout, asked)
        .await
        .unwrap_or(false)
}

/// Runs the checks until `stop` is cancelled.
pub async fn run(
    live: Arc<Live>,
    balancers: watch::Receiver<Arc<Balancers>>,
    metrics: HealthMetrics,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let http: HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .build(connector);
    let mut channels: HashMap<String, tonic::transport::Channel> = HashMap::new();
    let mut due: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        let checks = live.load().config.health_checks.clone();
        due.retain(|cluster, _| checks.contains_key(cluster));
        let now = Instant::now();
        let mut rounds = Vec::new();
        for (cluster, check) in &checks {
            let next = due.entry(cluster.clone()).or_insert(now);
            if *next > now {
                continue;
            }
            *next = now + check.interval;
            let backends: Vec<Arc<Backend>> = balancers.borrow().backends(cluster).to_vec();
            rounds.push((cluster.clone(), check.clone(), backends));
        }
        for (cluster, check, backends) in rounds {
            // One round's probes run together; their timeout bounds the round.
            let probes = backends.iter().map(|backend| {
                let channel = (check.kind == CheckKind::Grpc)
                    .then(|| channel(&mut channels, &backend.endpoint.address, check.timeout))
                    .flatten();
                probe(backend, &check, channel, &http)
            });
            let probes: Vec<_> = probes.collect();
            let results = futures::future::join_all(probes).await;
            for (backend, passed) in backends.iter().zip(results) {
                metrics
                    .checks
                    .get_or_create(&CheckLabels {
                        cluster: cluster.clone(),
                        result: if passed { "passed" } else { "failed" },
                    })
                    .inc();
                if let Some(healthy) =
                    backend.probed(passed, check.healthy_threshold, check.unhealthy_threshold)
                {
                    tracing::info!(
                        endpoint = %backend.endpoint.id,
                        healthy,
                        "active health check changed the endpoint's state"
                    );
                }
            }
        }
        let wake = due
            .values()
            .min()
            .copied()
            .unwrap_or(now + Duration::from_secs(1));
        // Wake at least every second, so a reload that adds a check starts it promptly.
        let wake = wake.min(Instant::now() + Duration::from_secs(1));
        tokio::select! {
            () = tokio::time::sleep_until(wake.into()) => {}
            () = stop.cancelled() => return,
        }
    }
}
