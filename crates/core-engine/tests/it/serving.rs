//! The service answers health and reflection like any gRPC server, and the HTTP probes.

use core_engine::{App, Config};
use omnimesh_proto::engine::v1::HashRequest;
use omnimesh_proto::engine::v1::engine_client::EngineClient;
use omnimesh_test_support::TestServer;
use omnimesh_test_support::grpc::assert_serves;
use omnimesh_test_support::http::assert_probes;

async fn start() -> TestServer {
    let app = App::build(Config::for_test()).await.unwrap();
    TestServer::start(|listener, shutdown| app.serve(listener, shutdown)).await
}

#[tokio::test]
async fn serves_health_and_reflection_for_the_engine() {
    let server = start().await;
    assert_serves(server.channel().await, &["omnimesh.engine.v1.Engine"]).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn rpcs_answer_unimplemented_and_are_counted() {
    let server = start().await;
    let status = EngineClient::new(server.channel().await)
        .hash(HashRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    let metrics = assert_probes(server.addr(), "omnimesh_core_engine").await;
    let counted = "omnimesh_core_engine_grpc_requests_total{method=\"/omnimesh.engine.v1.Engine/Hash\",code=\"UNIMPLEMENTED\"} 1";
    assert!(metrics.contains(counted), "{metrics}");
    server.stop().await.unwrap();
}
