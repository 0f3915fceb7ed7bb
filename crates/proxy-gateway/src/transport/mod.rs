//! The admin API on 9901: `omnimesh.gateway.v1.GatewayAdmin` over gRPC, and the same
//! answers over plain HTTP for curl and browsers:
//!
//! | HTTP | gRPC |
//! | --- | --- |
//! | `GET /config` (TOML; `x-config-version`) | `GetConfig` |
//! | `POST /config[?dry_run=true&expected_version=N]` (TOML body) | `ApplyConfig` |
//! | `GET /routes` | `ListRoutes` |
//! | `GET /clusters` | `ListClusters` |
//! | `GET /stats[?filter=prefix]` | `GetStats` |
//! | `GET /explain?method=GET&authority=h&path=/p&header=name:value` | `Explain` |
//! | — | `SetRouteWeights` |

mod http;

use std::sync::Arc;

use omnimesh_common::auth::{Role, Verifier};
use omnimesh_common::config::Sources;
use omnimesh_proto::gateway::v1 as pb;
use omnimesh_proto::gateway::v1::gateway_admin_server::GatewayAdmin;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::balance::Balancers;
use crate::live::{Live, Refused};
use crate::metrics::GatewayMetrics;
use crate::route::{PathMatch, RequestFacts, Route, WeightedCluster};

pub(crate) use http::http_routes;

/// Largest configuration accepted by `ApplyConfig`.
const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// `omnimesh.gateway.v1.GatewayAdmin`.
#[derive(Clone)]
pub(crate) struct GatewayAdminService {
    live: Arc<Live>,
    balancers: watch::Receiver<Arc<Balancers>>,
    metrics: Arc<GatewayMetrics>,
    /// Checks the `admin` token of changes; `None` when they need none.
    verifier: Option<Arc<Verifier>>,
}

impl std::fmt::Debug for GatewayAdminService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayAdminService")
            .field("tokens_required", &self.verifier.is_some())
            .finish_non_exhaustive()
    }
}

fn refused(refused: &Refused) -> Status {
    Status::invalid_argument(format!("not applied: {refused}"))
}

fn roles_from(least: Option<Role>) -> Vec<String> {
    least.map_or_else(Vec::new, |least| {
        [Role::Viewer, Role::Operator, Role::Admin]
            .into_iter()
            .filter(|role| *role >= least)
            .map(|role| role.as_str().to_owned())
            .collect()
    })
}

fn route_message(route: &Route) -> pb::Route {
    let path = match &route.path {
        PathMatch::Prefix(prefix) => pb::route::Path::Prefix(prefix.clone()),
        PathMatch::Exact(exact) => pb::route::Path::Exact(exact.clone()),
        PathMatch::Regex(pattern) => pb::route::Path::Regex(pattern.as_str().to_owned()),
    };
    let destinations = if route.split.is_empty() {
        vec![pb::WeightedCluster {
            cluster: route.cluster.clone(),
            subset: String::new(),
            weight: 100,
        }]
    } else {
        route
            .split
            .iter()
            .map(|share| pb::WeightedCluster {
                cluster: share.cluster.clone(),
                subset: share.subset.clone(),
                weight: share.weight,
            })
            .collect()
    };
    pb::Route {
        name: route.name().to_owned(),
        hosts: route.hosts.clone(),
        path: Some(path),
        methods: route.method.iter().cloned().collect(),
        headers: route
            .headers
            .iter()
            .map(|(name, value)| pb::HeaderMatch {
                name: name.clone(),
                r#match: Some(pb::header_match::Match::Exact(value.clone())),
            })
            .collect(),
        destinations,
        timeout_millis: u64::try_from(route.timeout.as_millis()).unwrap_or(u64::MAX),
        required_roles: roles_from(route.auth),
    }
}

impl GatewayAdminService {
    pub(crate) fn new(
        live: Arc<Live>,
        balancers: watch::Receiver<Arc<Balancers>>,
        metrics: Arc<GatewayMetrics>,
        verifier: Option<Arc<Verifier>>,
    ) -> Self {
        Self {
            live,
            balancers,
            metrics,
            verifier,
        }
    }

    /// Lets a change through only with an `admin` bearer token (when tokens are
    /// required); every refusal is an audit line.
    fn authorize_change(&self, authorization: Option<&str>, call: &str) -> Result<(), Status> {
        let Some(verifier) = &self.verifier else {
            return Ok(());
        };
        let refuse = |status: Status| {
            tracing::info!(target: "audit", decision = "denied", call, reason = %status.message(), "admin change refused");
            Err(status)
        };
        let Some(token) = authorization.and_then(|value| value.strip_prefix("Bearer ")) else {
            return refuse(Status::unauthenticated(format!(
                "{call} needs an admin token (authorization: Bearer …)"
            )));
        };
        match verifier.verify(token.trim()) {
            Err(rejected) => refuse(Status::unauthenticated(rejected.0)),
            Ok(identity) if identity.role < Role::Admin => {
                refuse(Status::permission_denied(format!(
                    "{} is a {}; {call} needs admin",
                    identity.subject,
                    identity.role.as_str()
                )))
            }
            Ok(identity) => {
                tracing::info!(target: "audit", decision = "allowed", call, subject = %identity.subject, "admin change");
                Ok(())
            }
        }
    }

    fn get_config(&self) -> pb::GetConfigResponse {
        let serving = self.live.load();
        pb::GetConfigResponse {
            toml: serving.toml(),
            version: serving.version,
            applied_at: Some(serving.applied_at.into()),
        }
    }

    fn apply_config(
        &self,
        request: &pb::ApplyConfigRequest,
    ) -> Result<pb::ApplyConfigResponse, Status> {
        if request.toml.len() > MAX_CONFIG_BYTES {
            return Err(Status::resource_exhausted(format!(
                "toml: larger than {MAX_CONFIG_BYTES} bytes"
            )));
        }
        let before = self.live.load().version;
        // The text is the whole configuration: environment variables do not apply.
        let sources = Sources::new().with_toml("admin API", request.toml.clone());
        let expected = (request.expected_version != 0).then_some(request.expected_version);
        let version = self
            .live
            .apply(&sources, "admin API", expected, request.dry_run)
            .map_err(|error| refused(&error))?;
        Ok(pb::ApplyConfigResponse {
            version,
            applied: !request.dry_run && version != before,
        })
    }

    fn list_routes(&self) -> pb::ListRoutesResponse {
        pb::ListRoutesResponse {
            routes: self
                .live
                .load()
                .routes
                .routes
                .iter()
                .map(route_message)
                .collect(),
        }
    }

    fn list_clusters(&self) -> pb::ListClustersResponse {
        let balancers = Arc::clone(&self.balancers.borrow());
        let serving = self.live.load();
        let mut clusters: Vec<pb::Cluster> = balancers
            .clusters()
            .map(|(name, source, backends)| pb::Cluster {
                name: name.to_owned(),
                load_balancer: serving
                    .config
                    .load_balancing_for(name)
                    .policy
                    .as_str()
                    .to_owned(),
                endpoint_source: source.to_owned(),
                endpoints: backends
                    .iter()
                    .map(|backend| {
                        let ejected_until = backend.ejected_until();
                        let health = if ejected_until.is_some() {
                            pb::EndpointHealth::Ejected
                        } else if backend.endpoint.healthy && backend.probe_healthy() {
                            pb::EndpointHealth::Healthy
                        } else {
                            pb::EndpointHealth::Unhealthy
                        };
                        pb::Endpoint {
                            address: backend.endpoint.address.clone(),
                            subset: backend.endpoint.subset.clone(),
                            weight: backend.endpoint.weight,
                            health: health.into(),
                            ejected_until: ejected_until.map(Into::into),
                            active_requests: backend.in_flight(),
                            consecutive_failures: backend.consecutive_failures(),
                        }
                    })
                    .collect(),
            })
            .collect();
        clusters.sort_by(|a, b| a.name.cmp(&b.name));
        pb::ListClustersResponse { clusters }
    }

    fn get_stats(&self, filter: &str) -> pb::GetStatsResponse {
        let routes = self
            .metrics
            .route_stats_all()
            .into_iter()
            .filter(|((route, cluster), _)| {
                route.starts_with(filter) || cluster.starts_with(filter)
            })
            .map(|((route, cluster), stats)| pb::RouteStats {
                retries: self.metrics.retries_of(&cluster),
                auth_denied: self.metrics.auth_denied_of(&route),
                rate_limited: self.metrics.rate_limited_of(&route),
                requests: stats.requests(),
                errors: stats.errors(),
                p50_seconds: stats.quantile(0.5),
                p99_seconds: stats.quantile(0.99),
                route,
                cluster,
            })
            .collect();
        let balancers = Arc::clone(&self.balancers.borrow());
        let names: Vec<&str> = balancers.clusters().map(|(name, _, _)| name).collect();
        pb::GetStatsResponse {
            routes,
            active_connections: u64::try_from(self.metrics.connections.get()).unwrap_or(0),
            ejections: self.metrics.ejections_total(&names),
        }
    }

    fn explain(&self, request: &pb::ExplainRequest) -> pb::ExplainResponse {
        let serving = self.live.load();
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.as_str())
        };
        let grpc =
            header("content-type").is_some_and(|value| value.starts_with("application/grpc"));
        let method = if request.method.is_empty() {
            if grpc { "POST" } else { "GET" }
        } else {
            request.method.as_str()
        };
        let path = if request.path.is_empty() {
            "/"
        } else {
            &request.path
        };
        let host = (!request.authority.is_empty())
            .then_some(request.authority.as_str())
            .or_else(|| header("host"));
        let (route, mut steps) = serving.routes.explain(RequestFacts {
            method,
            host,
            grpc,
            path,
            header: &header,
        });
        let mut answer = pb::ExplainResponse::default();
        let Some(route) = route else {
            steps.push(if grpc {
                "answer: UNIMPLEMENTED (no route)".to_owned()
            } else {
                "answer: 404 (no route)".to_owned()
            });
            answer.steps = steps;
            return answer;
        };
        answer.route = route.name().to_owned();
        if let Some(role) = route.auth {
            steps.push(format!(
                "the route needs a token granting {} or more",
                role.as_str()
            ));
        }
        if let Some(policy) = &route.rate_limit
            && let Some(rule) = serving.config.rate_limits.get(policy)
        {
            steps.push(format!(
                "rate limit {policy:?}: {} requests/s per client, bursts of {}{}",
                rule.requests_per_second,
                if rule.burst == 0 {
                    rule.requests_per_second
                } else {
                    rule.burst
                },
                if rule.shared {
                    ", shared by every replica through Redis"
                } else {
                    ""
                }
            ));
        }
        let destination = route.destination_for(crate::balance::random());
        if route.split.is_empty() {
            steps.push(format!("cluster {}", route.cluster));
        } else {
            let shares: Vec<String> = route
                .split
                .iter()
                .map(|share| format!("{}% {}", share.weight, describe(share)))
                .collect();
            steps.push(format!(
                "split {}; this request drew {}",
                shares.join(", "),
                if destination.subset.is_empty() {
                    destination.cluster.to_owned()
                } else {
                    format!("{}/{}", destination.cluster, destination.subset)
                }
            ));
        }
        answer.cluster = destination.cluster.to_owned();
        answer.subset = destination.subset.to_owned();
        let balancers = Arc::clone(&self.balancers.borrow());
        let policy = serving.config.load_balancing_for(destination.cluster);
        match balancers.pick_with(destination.cluster, destination.subset, &[], policy) {
            Some(backend) => {
                steps.push(format!(
                    "endpoint {} ({} of {} endpoints, by {}; {} requests open on it)",
                    backend.endpoint.address,
                    backend.endpoint.id,
                    balancers.size(destination.cluster),
                    policy.policy.as_str(),
                    backend.in_flight()
                ));
                answer.endpoint = backend.endpoint.address.clone();
            }
            None => steps.push(format!(
                "no healthy endpoint in {}: the answer would be {}",
                destination.cluster,
                if grpc { "UNAVAILABLE" } else { "503" }
            )),
        }
        steps.push(format!(
            "timeout {}, up to {} retries{}",
            humantime::format_duration(route.timeout),
            route.retry.max_retries,
            if route.retry.idempotent {
                " (idempotent methods, or before anything was sent)"
            } else {
                " (only before anything was sent)"
            }
        ));
        answer.steps = steps;
        answer
    }
}

fn bearer<T>(request: &Request<T>) -> Option<&str> {
    request
        .metadata()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
}

fn describe(share: &WeightedCluster) -> String {
    if share.subset.is_empty() {
        share.cluster.clone()
    } else {
        format!("{}/{}", share.cluster, share.subset)
    }
}

#[tonic::async_trait]
impl GatewayAdmin for GatewayAdminService {
    async fn get_config(
        &self,
        _request: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::GetConfigResponse>, Status> {
        Ok(Response::new(GatewayAdminService::get_config(self)))
    }

    async fn apply_config(
        &self,
        request: Request<pb::ApplyConfigRequest>,
    ) -> Result<Response<pb::ApplyConfigResponse>, Status> {
        self.authorize_change(bearer(&request), "ApplyConfig")?;
        self.apply_config(request.get_ref()).map(Response::new)
    }

    async fn list_routes(
        &self,
        _request: Request<pb::ListRoutesRequest>,
    ) -> Result<Response<pb::ListRoutesResponse>, Status> {
        Ok(Response::new(GatewayAdminService::list_routes(self)))
    }

    async fn list_clusters(
        &self,
        _request: Request<pb::ListClustersRequest>,
    ) -> Result<Response<pb::ListClustersResponse>, Status> {
        Ok(Response::new(GatewayAdminService::list_clusters(self)))
    }

    async fn set_route_weights(
        &self,
        request: Request<pb::SetRouteWeightsRequest>,
    ) -> Result<Response<pb::SetRouteWeightsResponse>, Status> {
        self.authorize_change(bearer(&request), "SetRouteWeights")?;
        let request = request.into_inner();
        if request.route.is_empty() {
            return Err(Status::invalid_argument("route: required"));
        }
        let split = request
            .destinations
            .into_iter()
            .map(|share| WeightedCluster {
                cluster: share.cluster,
                subset: share.subset,
                weight: share.weight,
            })
            .collect();
        let route = self
            .live
            .set_route_weights(&request.route, split)
            .map_err(|error| {
                if error.key == "route" {
                    Status::not_found(error.reason)
                } else {
                    refused(&error)
                }
            })?;
        Ok(Response::new(pb::SetRouteWeightsResponse {
            route: Some(route_message(&route)),
        }))
    }

    async fn get_stats(
        &self,
        request: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        Ok(Response::new(GatewayAdminService::get_stats(
            self,
            &request.get_ref().filter,
        )))
    }

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        Ok(Response::new(GatewayAdminService::explain(
            self,
            request.get_ref(),
        )))
    }
}
