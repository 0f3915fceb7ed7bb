//! proxy-gateway's section of `omnimesh.toml`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use omnimesh_common::auth::AuthConfig;
use omnimesh_common::config::{Invalid, ServiceConfig};
use omnimesh_common::server::ServerConfig;
use omnimesh_telemetry::TelemetryConfig;
use serde::{Deserialize, Serialize};

use crate::route::Route;

/// The `[proxy-gateway]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the gateway listens.
    #[serde(default)]
    pub listen: Listen,
    /// Server settings (drain timeout, keep-alive) of both listeners.
    #[serde(default)]
    pub server: ServerConfig,
    /// Logs and traces.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Where clusters' endpoints come from.
    #[serde(default)]
    pub upstreams: Upstreams,
    /// The route table; the platform's default table when absent.
    #[serde(default)]
    pub routes: Option<Vec<Route>>,
    /// Threads serving traffic (0: one per core).
    #[serde(default)]
    pub worker_threads: usize,
    /// Largest request body forwarded, in bytes.
    #[serde(default = "default_max_request_body_bytes")]
    pub max_request_body_bytes: usize,
    /// How long an HTTP/1.1 client may take to send a request's headers before the
    /// connection is closed (slow-header attacks hold no connection longer).
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: std::time::Duration,
    /// How tokens are checked on routes that require a role (the same keys as
    /// mesh-controller's).
    #[serde(default)]
    pub auth: AuthConfig,
    /// Whether the admin API's changes (`ApplyConfig`, `SetRouteWeights`, `POST
    /// /config`) need an `admin` token; reading never does.
    #[serde(default = "default_true")]
    pub admin_requires_token: bool,
    /// Rate limit policies by name; a route names one in `rate_limit`.
    #[serde(default)]
    pub rate_limits: BTreeMap<String, crate::ratelimit::Policy>,
    /// The Redis server of shared rate limits.
    #[serde(default)]
    pub redis: crate::ratelimit::RedisConfig,
    /// When endpoints that answer badly are taken out of rotation.
    #[serde(default)]
    pub outlier_detection: crate::balance::OutlierDetection,
    /// Active health checks, by cluster (clusters not named are not checked; the
    /// registry's endpoints are checked by mesh-controller already).
    #[serde(default)]
    pub health_checks: BTreeMap<String, crate::health::HealthCheck>,
    /// Requests open at once to one cluster, beyond which new ones fail fast with
    /// `UNAVAILABLE` / 503 instead of piling onto a struggling cluster (0: no limit).
    #[serde(default = "default_max_requests")]
    pub max_requests_per_cluster: u64,
    /// Connections open at once to one upstream endpoint (HTTP/1.1 carries one request
    /// at a time on each; HTTP/2 multiplexes on one).
    #[serde(default = "default_max_connections")]
    pub max_connections_per_endpoint: usize,
    /// Requests waiting for a connection to one endpoint; more fail at once with
    /// `UNAVAILABLE` / 503 (or go to another endpoint).
    #[serde(default = "default_max_pending")]
    pub max_pending_per_endpoint: usize,
    /// Per-cluster overrides of `max_requests_per_cluster`.
    #[serde(default)]
    pub circuit_breakers: BTreeMap<String, CircuitBreaker>,
    /// One log line (target `access`; JSON with `telemetry.log_format = "json"`) per
    /// request: method, path, status, gRPC status, route, cluster, duration, client,
    /// trace id. Off by default, as in Envoy: at the edge's request rates it is a cost.
    #[serde(default)]
    pub access_log: bool,
    /// Public keys for tokens from a JWKS URL, refreshed in the background.
    #[serde(default)]
    pub jwks: crate::jwks::JwksConfig,
    /// How endpoints are chosen, for every cluster not in `cluster_load_balancing`.
    #[serde(default)]
    pub load_balancing: crate::balance::LoadBalancing,
    /// Per-cluster load balancing.
    #[serde(default)]
    pub cluster_load_balancing: BTreeMap<String, crate::balance::LoadBalancing>,
    /// TLS on `listen.http` (ALPN h2 and http/1.1); plain HTTP when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::TlsConfig>,
}

/// `[proxy-gateway.circuit_breakers.<cluster>]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Requests open at once (0: no limit).
    pub max_requests: u64,
}

fn default_max_requests() -> u64 {
    4096
}

fn default_max_connections() -> usize {
    1024
}

fn default_max_pending() -> usize {
    1024
}

impl Config {
    /// How `cluster` picks endpoints.
    pub fn load_balancing_for(&self, cluster: &str) -> &crate::balance::LoadBalancing {
        self.cluster_load_balancing
            .get(cluster)
            .unwrap_or(&self.load_balancing)
    }

    /// The open-request limit of `cluster` (0: none).
    pub fn max_requests(&self, cluster: &str) -> u64 {
        self.circuit_breakers
            .get(cluster)
            .map_or(self.max_requests_per_cluster, |breaker| {
                breaker.max_requests
            })
    }
}

fn default_true() -> bool {
    true
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: Listen::default(),
            server: ServerConfig::default(),
            telemetry: TelemetryConfig::default(),
            upstreams: Upstreams::default(),
            routes: None,
            worker_threads: 0,
            max_request_body_bytes: default_max_request_body_bytes(),
            header_read_timeout: default_header_read_timeout(),
            auth: AuthConfig::default(),
            admin_requires_token: true,
            rate_limits: BTreeMap::new(),
            redis: crate::ratelimit::RedisConfig::default(),
            outlier_detection: crate::balance::OutlierDetection::default(),
            health_checks: BTreeMap::new(),
            max_requests_per_cluster: default_max_requests(),
            max_connections_per_endpoint: default_max_connections(),
            max_pending_per_endpoint: default_max_pending(),
            circuit_breakers: BTreeMap::new(),
            access_log: false,
            tls: None,
            jwks: crate::jwks::JwksConfig::default(),
            load_balancing: crate::balance::LoadBalancing::default(),
            cluster_load_balancing: BTreeMap::new(),
        }
    }
}

/// `[proxy-gateway.upstreams]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstreams {
    /// mesh-controller, whose registry's endpoint sets feed the clusters (`""`: none).
    #[serde(default = "default_registry")]
    pub registry: String,
    /// Static clusters: name → `host:port` endpoints; a cluster the endpoints file or
    /// the registry also has is taken from there.
    #[serde(default)]
    pub clusters: BTreeMap<String, Vec<String>>,
    /// A TOML file of clusters' endpoints (address, weight, subset, healthy), watched:
    /// its edits apply without a restart (`""`: none).
    #[serde(default)]
    pub endpoints_file: String,
}

impl Default for Upstreams {
    fn default() -> Self {
        Self {
            registry: default_registry(),
            clusters: BTreeMap::new(),
            endpoints_file: String::new(),
        }
    }
}

fn default_header_read_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

fn default_max_request_body_bytes() -> usize {
    16 * 1024 * 1024
}

fn default_registry() -> String {
    format!("http://{}", omnimesh_common::ports::MESH_CONTROLLER_GRPC)
}

/// `[proxy-gateway.listen]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// The data plane: HTTP/1.1 and h2c (gRPC, gRPC-Web, WebSocket, the terminal page).
    #[serde(default = "default_http")]
    pub http: SocketAddr,
    /// The admin API: GatewayAdmin, health, reflection, `/healthz`, `/readyz`, `/metrics`.
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            http: default_http(),
            admin: default_admin(),
        }
    }
}

fn default_http() -> SocketAddr {
    omnimesh_common::ports::PROXY_GATEWAY_HTTP
}

fn default_admin() -> SocketAddr {
    omnimesh_common::ports::PROXY_GATEWAY_ADMIN
}

impl ServiceConfig for Config {
    const SERVICE: &'static str = crate::SERVICE;

    fn validate(&self) -> Result<(), Invalid> {
        self.server
            .validate()
            .map_err(|(key, reason)| Invalid::new(format!("server.{key}"), reason))?;
        if self.listen.http == self.listen.admin && self.listen.http.port() != 0 {
            return Err(Invalid::new(
                "listen.admin",
                format!("must differ from listen.http ({})", self.listen.http),
            ));
        }
        if !self.upstreams.registry.is_empty()
            && self.upstreams.registry.parse::<http::Uri>().is_err()
        {
            return Err(Invalid::new(
                "upstreams.registry",
                "not a URI (http://host:port)",
            ));
        }
        for (cluster, endpoints) in &self.upstreams.clusters {
            for endpoint in endpoints {
                if endpoint.parse::<http::uri::Authority>().is_err() || !endpoint.contains(':') {
                    return Err(Invalid::new(
                        format!("upstreams.clusters.{cluster}"),
                        format!("{endpoint:?} is not host:port"),
                    ));
                }
            }
        }
        for (name, policy) in &self.rate_limits {
            policy
                .validate()
                .map_err(|reason| Invalid::new(format!("rate_limits.{name}"), reason))?;
        }
        for (index, route) in self.routes.iter().flatten().enumerate() {
            route.validate().map_err(|(field, reason)| {
                Invalid::new(format!("routes[{index}].{field}"), reason)
            })?;
            if let Some(policy) = &route.rate_limit
                && !self.rate_limits.contains_key(policy)
            {
                return Err(Invalid::new(
                    format!("routes[{index}].rate_limit"),
                    format!("no policy {policy:?} in rate_limits"),
                ));
            }
        }
        if self.rate_limits.values().any(|policy| policy.shared)
            && !self.redis.url.starts_with("redis://")
            && !self.redis.url.starts_with("rediss://")
        {
            return Err(Invalid::new("redis.url", "must be redis://host:port[/db]"));
        }
        self.outlier_detection
            .validate()
            .map_err(|(key, reason)| Invalid::new(format!("outlier_detection.{key}"), reason))?;
        self.jwks
            .validate()
            .map_err(|(key, reason)| Invalid::new(format!("jwks.{key}"), reason))?;
        for (cluster, check) in &self.health_checks {
            check.validate().map_err(|(key, reason)| {
                Invalid::new(format!("health_checks.{cluster}.{key}"), reason)
            })?;
        }
        if self.redis.timeout.is_zero() {
            return Err(Invalid::new("redis.timeout", "must be longer than 0 s"));
        }
        if self.header_read_timeout.is_zero() {
            return Err(Invalid::new(
                "header_read_timeout",
                "must be longer than 0 s",
            ));
        }
        if self.max_connections_per_endpoint == 0 {
            return Err(Invalid::new(
                "max_connections_per_endpoint",
                "must be at least 1",
            ));
        }
        if self.max_request_body_bytes == 0 {
            return Err(Invalid::new("max_request_body_bytes", "must be at least 1"));
        }
        self.auth
            .validate()
            .map_err(|(key, reason)| Invalid::new(format!("auth.{key}"), reason))?;
        self.telemetry
            .validate()
            .map_err(|(key, reason)| Invalid::new(format!("telemetry.{key}"), reason))
    }
}

impl Config {
    /// Defaults, both listeners on `127.0.0.1:0`, no registry, the token key in `dir`,
    /// for tests.
    pub fn for_test(dir: &std::path::Path) -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            listen: Listen {
                http: any,
                admin: any,
            },
            upstreams: Upstreams {
                registry: String::new(),
                clusters: BTreeMap::new(),
                endpoints_file: String::new(),
            },
            auth: AuthConfig::for_test(dir),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use omnimesh_common::config::{Sources, load_from};

    use super::*;

    #[test]
    fn header_read_timeout_must_be_positive() {
        let sources = Sources::new().with_env("OMNIMESH_PROXY_GATEWAY__HEADER_READ_TIMEOUT", "0s");
        let error = load_from::<Config>(&sources).unwrap_err();
        assert_eq!(error.key, "proxy-gateway.header_read_timeout");
        let sources =
            Sources::new().with_env("OMNIMESH_PROXY_GATEWAY__HEADER_READ_TIMEOUT", "250ms");
        let config = load_from::<Config>(&sources).unwrap();
        assert_eq!(
            config.header_read_timeout,
            std::time::Duration::from_millis(250)
        );
    }

    #[test]
    fn a_bad_split_is_refused_naming_the_route() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("omnimesh.toml");
        std::fs::write(
            &file,
            "[[proxy-gateway.routes]]\nmatch = { prefix = \"/\" }\ncluster = \"web\"\n\
             [[proxy-gateway.routes]]\nmatch = { prefix = \"/api\" }\n\
             split = [{ cluster = \"stable\", weight = 90 }, { cluster = \"canary\", weight = 20 }]\n",
        )
        .unwrap();
        let error = load_from::<Config>(&Sources::new().with_file(&file)).unwrap_err();
        assert_eq!(error.key, "proxy-gateway.routes[1].split");
        assert_eq!(error.reason, "the weights add up to 110, not 100");
    }

    #[test]
    fn admin_and_data_plane_must_not_share_an_address() {
        let sources =
            Sources::new().with_env("OMNIMESH_PROXY_GATEWAY__LISTEN__ADMIN", "127.0.0.1:8080");
        let error = load_from::<Config>(&sources).unwrap_err();
        assert_eq!(error.key, "proxy-gateway.listen.admin");
        assert_eq!(
            error.origin,
            "environment variable OMNIMESH_PROXY_GATEWAY__LISTEN__ADMIN"
        );
        assert!(
            error.reason.contains("must differ from listen.http"),
            "{error}"
        );
    }
}
