//! The admin API over HTTP: the same answers as the gRPC service, as JSON (TOML for the
//! configuration itself), for curl and browsers.

use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use omnimesh_proto::gateway::v1 as pb;
use serde_json::{Value, json};

use super::GatewayAdminService;

/// The admin HTTP routes.
pub(crate) fn http_routes(service: GatewayAdminService) -> axum::Router {
    axum::Router::new()
        .route("/config", get(get_config).post(apply_config))
        .route("/routes", get(list_routes))
        .route("/clusters", get(list_clusters))
        .route("/stats", get(stats))
        .route("/explain", get(explain))
        .with_state(service)
}

fn json_response(value: &Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!("{value:#}\n"),
    )
        .into_response()
}

fn timestamp(time: Option<&prost_types::Timestamp>) -> Value {
    time.map_or(Value::Null, |time| {
        json!(format!("{}.{:09}", time.seconds, time.nanos))
    })
}

async fn get_config(State(service): State<GatewayAdminService>) -> Response {
    let config = service.get_config();
    let mut response = config.toml.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/toml"),
    );
    response
        .headers_mut()
        .insert("x-config-version", HeaderValue::from(config.version));
    response
}

async fn apply_config(
    State(service): State<GatewayAdminService>,
    Query(query): Query<Vec<(String, String)>>,
    headers: axum::http::HeaderMap,
    body: String,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    if let Err(status) = service.authorize_change(authorization, "POST /config") {
        let code = if status.code() == tonic::Code::PermissionDenied {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNAUTHORIZED
        };
        return (code, format!("{}\n", status.message())).into_response();
    }
    let mut request = pb::ApplyConfigRequest {
        toml: body,
        ..pb::ApplyConfigRequest::default()
    };
    for (key, value) in query {
        match key.as_str() {
            "dry_run" => request.dry_run = value == "true" || value == "1",
            "expected_version" => match value.parse() {
                Ok(version) => request.expected_version = version,
                Err(_) => {
                    return (StatusCode::BAD_REQUEST, "expected_version: not a number\n")
                        .into_response();
                }
            },
            other => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {other:?} (dry_run, expected_version)\n"),
                )
                    .into_response();
            }
        }
    }
    match service.apply_config(&request) {
        Ok(applied) => json_response(&json!({
            "version": applied.version,
            "applied": applied.applied,
            "dry_run": request.dry_run,
        })),
        Err(status) => {
            let code = if status.code() == tonic::Code::ResourceExhausted {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            (code, format!("{}\n", status.message())).into_response()
        }
    }
}

pub(super) fn route_json(route: &pb::Route) -> Value {
    let path = match &route.path {
        Some(pb::route::Path::Prefix(prefix)) => json!({ "prefix": prefix }),
        Some(pb::route::Path::Exact(exact)) => json!({ "exact": exact }),
        Some(pb::route::Path::Regex(regex)) => json!({ "regex": regex }),
        None => Value::Null,
    };
    json!({
        "name": route.name,
        "hosts": route.hosts,
        "path": path,
        "methods": route.methods,
        "headers": route.headers.iter().map(|header| {
            let value = match &header.r#match {
                Some(pb::header_match::Match::Exact(value)) => json!({ "exact": value }),
                Some(pb::header_match::Match::Prefix(value)) => json!({ "prefix": value }),
                Some(pb::header_match::Match::Regex(value)) => json!({ "regex": value }),
                None => Value::Null,
            };
            json!({ "name": header.name, "match": value })
        }).collect::<Vec<_>>(),
        "destinations": route.destinations.iter().map(|share| json!({
            "cluster": share.cluster,
            "subset": share.subset,
            "weight": share.weight,
        })).collect::<Vec<_>>(),
        "timeout_millis": route.timeout_millis,
        "required_roles": route.required_roles,
    })
}

async fn list_routes(State(service): State<GatewayAdminService>) -> Response {
    let routes = service.list_routes();
    json_response(&json!({
        "routes": routes.routes.iter().map(route_json).collect::<Vec<_>>(),
    }))
}

async fn list_clusters(State(service): State<GatewayAdminService>) -> Response {
    let clusters = service.list_clusters();
    let clusters: Vec<Value> = clusters
        .clusters
        .iter()
        .map(|cluster| {
            json!({
                "name": cluster.name,
                "load_balancer": cluster.load_balancer,
                "endpoint_source": cluster.endpoint_source,
                "endpoints": cluster.endpoints.iter().map(|endpoint| json!({
                    "address": endpoint.address,
                    "subset": endpoint.subset,
                    "weight": endpoint.weight,
                    "health": endpoint.health().as_str_name(),
                    "ejected_until": timestamp(endpoint.ejected_until.as_ref()),
                    "active_requests": endpoint.active_requests,
                    "consecutive_failures": endpoint.consecutive_failures,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json_response(&json!({ "clusters": clusters }))
}

async fn stats(
    State(service): State<GatewayAdminService>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let filter = query
        .iter()
        .find(|(key, _)| key == "filter")
        .map_or("", |(_, value)| value.as_str());
    let stats = service.get_stats(filter);
    json_response(&json!({
        "active_connections": stats.active_connections,
        "ejections": stats.ejections,
        "routes": stats.routes.iter().map(|route| json!({
            "route": route.route,
            "cluster": route.cluster,
            "requests": route.requests,
            "errors": route.errors,
            "p50_seconds": route.p50_seconds,
            "p99_seconds": route.p99_seconds,
            "retries": route.retries,
            "rate_limited": route.rate_limited,
            "auth_denied": route.auth_denied,
        })).collect::<Vec<_>>(),
    }))
}

async fn explain(
    State(service): State<GatewayAdminService>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let mut request = pb::ExplainRequest::default();
    for (key, value) in query {
        match key.as_str() {
            "method" => request.method = value,
            "authority" | "host" => request.authority = value,
            "path" => request.path = value,
            "header" => {
                let Some((name, value)) = value.split_once(':') else {
                    return (StatusCode::BAD_REQUEST, "header: expected name:value\n")
                        .into_response();
                };
                request
                    .headers
                    .insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
            }
            other => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {other:?} (method, authority, path, header)\n"),
                )
                    .into_response();
            }
        }
    }
    let answer = service.explain(&request);
    json_response(&json!({
        "route": answer.route,
        "cluster": answer.cluster,
        "subset": answer.subset,
        "endpoint": answer.endpoint,
        "steps": answer.steps,
    }))
}
