//! The service answers health and reflection like any gRPC server, and the HTTP probes.

use omnimesh_proto::terminal::v1::InterpretRequest;
use omnimesh_proto::terminal::v1::terminal_client::TerminalClient;
use omnimesh_test_support::TestServer;
use omnimesh_test_support::grpc::{health_status, reflection_services};
use omniterm_interface::{App, Config};
use tonic_health::pb::health_check_response::ServingStatus;

async fn start() -> TestServer {
    let app = App::build(Config::for_test()).await.unwrap();
    TestServer::start(|listener, shutdown| app.serve(listener, shutdown)).await
}

#[tokio::test]
async fn reports_serving_for_the_server_and_the_terminal() {
    let server = start().await;
    let channel = server.channel().await;
    assert_eq!(
        health_status(channel.clone(), "").await.unwrap(),
        ServingStatus::Serving
    );
    assert_eq!(
        health_status(channel, "omnimesh.terminal.v1.Terminal")
            .await
            .unwrap(),
        ServingStatus::Serving
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn reflection_lists_the_terminal_health_and_reflection() {
    let server = start().await;
    let services = reflection_services(server.channel().await).await.unwrap();
    assert_eq!(
        services,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "omnimesh.terminal.v1.Terminal",
        ]
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn terminal_rpcs_answer_unimplemented_and_are_counted() {
    let server = start().await;
    let status = TerminalClient::new(server.channel().await)
        .interpret(InterpretRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    let metrics = omnimesh_test_support::http::get(server.addr(), "/metrics")
        .await
        .unwrap();
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains(
            "omnimesh_omniterm_interface_grpc_requests_total{method=\"/omnimesh.terminal.v1.Terminal/Interpret\",code=\"UNIMPLEMENTED\"} 1"
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
