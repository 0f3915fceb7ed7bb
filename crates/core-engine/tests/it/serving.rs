//! The service answers health and reflection like any gRPC server, and the HTTP probes.

use omnimesh_proto::engine::v1::engine_client::EngineClient;
use omnimesh_proto::engine::v1::{AnalyzeRequest, HashRequest};
use omnimesh_test_support::grpc::assert_serves;
use omnimesh_test_support::http::assert_probes;

use super::start;

#[tokio::test]
async fn serves_health_and_reflection_for_the_engine() {
    let (server, _dir) = start().await;
    assert_serves(server.channel().await, &["omnimesh.engine.v1.Engine"]).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn every_answer_is_counted_by_method_and_code() {
    let (server, _dir) = start().await;
    let mut client = EngineClient::new(server.channel().await);
    let status = client.hash(HashRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("`algorithm`"), "{status:?}");
    let empty = client
        .analyze(AnalyzeRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(empty.count, 0);
    assert!(empty.mean.is_nan(), "no values: no mean");
    let metrics = assert_probes(server.addr(), "omnimesh_core_engine").await;
    for counted in [
        "omnimesh_core_engine_grpc_requests_total{method=\"/omnimesh.engine.v1.Engine/Hash\",code=\"INVALID_ARGUMENT\"} 1",
        "omnimesh_core_engine_grpc_requests_total{method=\"/omnimesh.engine.v1.Engine/Analyze\",code=\"OK\"} 1",
    ] {
        assert!(metrics.contains(counted), "{metrics}");
    }
    server.stop().await.unwrap();
}
