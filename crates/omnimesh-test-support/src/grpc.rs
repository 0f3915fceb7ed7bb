//! What a stock gRPC client sees: health status and the services listed by reflection.

use anyhow::Context as _;
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

/// The status `grpc.health.v1.Health/Check` reports for `service` (`""`: the server).
///
/// # Errors
/// When the call fails.
pub async fn health_status(channel: Channel, service: &str) -> anyhow::Result<ServingStatus> {
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .with_context(|| format!("health check of {service:?}"))?;
    Ok(response.into_inner().status())
}

/// The service names listed by `grpc.reflection.v1`, sorted.
///
/// # Errors
/// When the call fails or answers something other than a service list.
pub async fn reflection_services(channel: Channel) -> anyhow::Result<Vec<String>> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::once(request))
        .await
        .context("opening the reflection stream")?
        .into_inner();
    let response = responses
        .next()
        .await
        .context("reflection answered nothing")?
        .context("reflection answered with an error")?;
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            Ok(names)
        }
        other => anyhow::bail!("expected a service list, got {other:?}"),
    }
}

/// Asserts what a stock client sees on `channel`: `SERVING` for the server (`""`) and for
/// each of `services`, and reflection listing exactly `services` plus health and
/// reflection themselves.
///
/// # Panics
/// When any of that does not hold; the message says which.
pub async fn assert_serves(channel: Channel, services: &[&str]) {
    for service in std::iter::once("").chain(services.iter().copied()) {
        let status = health_status(channel.clone(), service).await.unwrap();
        assert_eq!(status, ServingStatus::Serving, "health of {service:?}");
    }
    let mut expected: Vec<&str> = vec![
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    expected.extend(services);
    expected.sort_unstable();
    assert_eq!(
        reflection_services(channel).await.unwrap(),
        expected,
        "reflection"
    );
}

/// A client interceptor that sends `authorization: Bearer <token>` with every call.
#[derive(Debug, Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl Bearer {
    /// Sends `token`.
    ///
    /// # Panics
    /// When the token is not printable ASCII (tokens always are).
    pub fn new(token: &str) -> Self {
        Self(
            format!("Bearer {token}")
                .parse()
                .expect("a token is printable ASCII"),
        )
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A channel that authenticates every call with `token`.
pub type Authed = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

/// `channel` with `token` on every call, for a generated client's `new`.
pub fn authed(channel: Channel, token: &str) -> Authed {
    tonic::service::interceptor::InterceptedService::new(channel, Bearer::new(token))
}
