//! The service answers health and reflection like any gRPC server, and the HTTP probes.

use mesh_controller::{App, Config};
use omnimesh_proto::controller::v1::ListRolloutsRequest;
use omnimesh_proto::controller::v1::rollouts_client::RolloutsClient;
use omnimesh_test_support::TestServer;
use omnimesh_test_support::grpc::assert_serves;
use omnimesh_test_support::http::assert_probes;

async fn start() -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let app = App::build(Config::for_test(dir.path())).await.unwrap();
    let server = TestServer::start(|listener, shutdown| app.serve(listener, shutdown)).await;
    (server, dir)
}

#[tokio::test]
async fn serves_health_and_reflection_for_each_controller_service() {
    let (server, _dir) = start().await;
    assert_serves(
        server.channel().await,
        &[
            "omnimesh.controller.v1.Events",
            "omnimesh.controller.v1.Registry",
            "omnimesh.controller.v1.Rollouts",
            "omnimesh.controller.v1.Runtime",
        ],
    )
    .await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn rpcs_answer_unimplemented_and_are_counted() {
    let (server, _dir) = start().await;
    let status = RolloutsClient::new(server.channel().await)
        .list_rollouts(ListRolloutsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    let metrics = assert_probes(server.addr(), "omnimesh_mesh_controller").await;
    let counted = "omnimesh_mesh_controller_grpc_requests_total{method=\"/omnimesh.controller.v1.Rollouts/ListRollouts\",code=\"UNIMPLEMENTED\"} 1";
    assert!(metrics.contains(counted), "{metrics}");
    server.stop().await.unwrap();
}
