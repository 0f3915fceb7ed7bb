//! The service answers health and reflection like any gRPC server, and the HTTP probes.

use omnimesh_proto::terminal::v1::InterpretRequest;
use omnimesh_proto::terminal::v1::terminal_client::TerminalClient;
use omnimesh_test_support::TestServer;
use omnimesh_test_support::grpc::assert_serves;
use omnimesh_test_support::http::assert_probes;
use omniterm_interface::{App, Config};

async fn start() -> TestServer {
    let app = App::build(Config::for_test()).await.unwrap();
    TestServer::start(|listener, shutdown| app.serve(listener, shutdown)).await
}

#[tokio::test]
async fn serves_health_and_reflection_for_the_terminal() {
    let server = start().await;
    assert_serves(server.channel().await, &["omnimesh.terminal.v1.Terminal"]).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn rpcs_answer_unimplemented_and_are_counted() {
    let server = start().await;
    let status = TerminalClient::new(server.channel().await)
        .interpret(InterpretRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    let metrics = assert_probes(server.addr(), "omnimesh_omniterm_interface").await;
    let counted = "omnimesh_omniterm_interface_grpc_requests_total{method=\"/omnimesh.terminal.v1.Terminal/Interpret\",code=\"UNIMPLEMENTED\"} 1";
    assert!(metrics.contains(counted), "{metrics}");
    server.stop().await.unwrap();
}
