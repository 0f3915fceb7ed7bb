//! The Events service's answers through tonic: conflicts carry the actual version,
//! reused idempotency keys and malformed input get their own codes, and a malformed
//! subscription filter fails the call itself.

use std::time::Duration;

use mesh_controller::{App, Config};
use omnimesh_common::auth::{Issuer, Role};
use omnimesh_proto::controller::v1 as pb;
use omnimesh_proto::controller::v1::events_client::EventsClient;
use omnimesh_test_support::TestServer;
use omnimesh_test_support::grpc::authed;
use tonic::Code;

fn append(
    stream: &str,
    expected: Option<pb::expected_version::Kind>,
    key: &str,
) -> pb::AppendRequest {
    pb::AppendRequest {
        stream_id: stream.into(),
        expected: expected.map(|kind| pb::ExpectedVersion { kind: Some(kind) }),
        events: vec![pb::NewEvent {
            r#type: "test.happened".into(),
            data: "{}".into(),
            metadata: None,
            idempotency_key: key.into(),
        }],
    }
}

#[tokio::test]
async fn events_answers_name_what_went_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::for_test(dir.path());
    let token = Issuer::load(&config.auth).unwrap().issue(
        "tester",
        Role::Operator,
        Duration::from_secs(600),
    );
    let app = App::build(config).await.unwrap();
    let server = TestServer::start(|listener, shutdown| app.serve(listener, shutdown)).await;
    let mut client = EventsClient::new(authed(server.channel().await, &token));
    use pb::expected_version::Kind;

    let first = client
        .append(append("orders", Some(Kind::NoStream(true)), "k1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (first.next_expected_version, first.first_global_position),
        (1, 1)
    );

    let conflict = client
        .append(append("orders", Some(Kind::Exact(5)), ""))
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Code::Aborted);
    assert_eq!(
        conflict.metadata().get("omnimesh-actual-version").unwrap(),
        "1"
    );

    let reused = client
        .append(append("other", None, "k1"))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists, "{reused:?}");

    let malformed = client
        .append(append("bad stream", None, ""))
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert!(
        malformed.message().starts_with("stream_id:"),
        "{malformed:?}"
    );

    let status = client
        .subscribe(pb::SubscribeRequest {
            from_position: 0,
            types: vec!["not a type".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("types[0]:"), "{status:?}");

    let mut live = client
        .subscribe(pb::SubscribeRequest {
            from_position: 0,
            types: vec!["test.happened".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(live.message().await.unwrap().unwrap().global_position, 1);
    drop(live);
    server.stop().await.unwrap();
}
