//! The service answers health and reflection like any gRPC server, and the HTTP probes.

use core_engine::{App, Config};
use omnimesh_proto::engine::v1::HashRequest;
use omnimesh_proto::engine::v1::engine_client::EngineClient;
use omnimesh_test_support::TestServer;
use omnimesh_test_support::grpc::{health_status, reflection_services};
use tonic_health::pb::health_check_response::ServingStatus;

async fn start() -> TestServer {
    let app = App::build(Config::for_test()).await.unwrap();
    TestServer::start(|listener, shutdown| app.serve(listener, shutdown)).await
}

#[tokio::test]
async fn reports_serving_for_the_server_and_the_engine() {
    let server = start().await;
    let channel = server.channel().await;
    assert_eq!(
        health_status(channel.clone(), "").await.unwrap(),
        ServingStatus::Serving
    );
    assert_eq!(
        health_status(channel, "omnimesh.engine.v1.Engine")
            .await
            .unwrap(),
        ServingStatus::Serving
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn reflection_lists_the_engine_health_and_reflection() {
    let server = start().await;
    let services = reflection_services(server.channel().await).await.unwrap();
    assert_eq!(
        services,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "omnimesh.engine.v1.Engine",
        ]
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn engine_rpcs_answer_unimplemented_and_are_counted() {
    let server = start().await;
    let status = EngineClient::new(server.channel().await)
        .hash(HashRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    let metrics = omnimesh_test_support::http::get(server.addr(), "/metrics")
        .await
        .unwrap();
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains(
            "omnimesh_core_engine_grpc_requests_total{method=\"/omnimesh.engine.v1.Engine/Hash\",code=\"UNIMPLEMENTED\"} 1"
        ),
        "{}",
        metrics.body
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn http_probes_answer_on_the_grpc_port() {
    let server = start().await;
    let healthz = omnimesh_test_support::http::get(server.addr(), "/healthz")
        .await
        .unwrap();
    assert_eq!((healthz.status, healthz.body.as_str()), (200, "ok\n"));
    let readyz = omnimesh_test_support::http::get(server.addr(), "/readyz")
        .await
        .unwrap();
    assert_eq!((readyz.status, readyz.body.as_str()), (200, "ready\n"));
    server.stop().await.unwrap();
}
