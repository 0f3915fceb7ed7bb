//! The service answers health and reflection like any gRPC server, and the HTTP probes.

use mesh_controller::{App, Config};
use omnimesh_proto::controller::v1::ListServicesRequest;
use omnimesh_proto::controller::v1::registry_client::RegistryClient;
use omnimesh_test_support::TestServer;
use omnimesh_test_support::grpc::{health_status, reflection_services};
use tonic_health::pb::health_check_response::ServingStatus;

async fn start() -> TestServer {
    let app = App::build(Config::for_test()).await.unwrap();
    TestServer::start(|listener, shutdown| app.serve(listener, shutdown)).await
}

#[tokio::test]
async fn reports_serving_for_the_server_and_each_controller_service() {
    let server = start().await;
    let channel = server.channel().await;
    assert_eq!(
        health_status(channel.clone(), "").await.unwrap(),
        ServingStatus::Serving
    );
    for service in ["Registry", "Events", "Rollouts", "Runtime"] {
        assert_eq!(
            health_status(
                channel.clone(),
                &format!("omnimesh.controller.v1.{service}")
            )
            .await
            .unwrap(),
            ServingStatus::Serving,
            "{service}"
        );
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn reflection_lists_the_controller_services_health_and_reflection() {
    let server = start().await;
    let services = reflection_services(server.channel().await).await.unwrap();
    assert_eq!(
        services,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "omnimesh.controller.v1.Events",
            "omnimesh.controller.v1.Registry",
            "omnimesh.controller.v1.Rollouts",
            "omnimesh.controller.v1.Runtime",
        ]
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn controller_rpcs_answer_unimplemented_and_are_counted() {
    let server = start().await;
    let status = RegistryClient::new(server.channel().await)
        .list_services(ListServicesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    let metrics = omnimesh_test_support::http::get(server.addr(), "/metrics")
        .await
        .unwrap();
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains(
            "omnimesh_mesh_controller_grpc_requests_total{method=\"/omnimesh.controller.v1.Registry/ListServices\",code=\"UNIMPLEMENTED\"} 1"
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
