//! Mutating RPCs need an operator or admin token; the token's subject is the actor of
//! the events they cause; a bad token is refused even on reads.

use std::time::Duration;

use mesh_controller::{App, Config};
use omnimesh_common::auth::{Issuer, Role};
use omnimesh_proto::controller::v1 as pb;
use omnimesh_proto::controller::v1::events_client::EventsClient;
use omnimesh_proto::controller::v1::registry_client::RegistryClient;
use omnimesh_proto::controller::v1::runtime_client::RuntimeClient;
use omnimesh_test_support::TestServer;
use omnimesh_test_support::grpc::{Authed, authed};
use tonic::Code;

fn register_request() -> pb::RegisterRequest {
    pb::RegisterRequest {
        instance: Some(pb::Instance {
            service: "core-engine".into(),
            address: "127.0.0.1:4000".into(),
            ..Default::default()
        }),
        ttl_seconds: 0,
    }
}

/// Every event in the store, in order.
async fn all_events(events: &mut EventsClient<Authed>) -> Vec<pb::Event> {
    events
        .read_all(pb::ReadAllRequest::default())
        .await
        .unwrap()
        .into_inner()
        .events
}

/// (stream, type, actor) of each event.
fn stream_type_actor(events: &[pb::Event]) -> Vec<(&str, &str, &str)> {
    events
        .iter()
        .map(|e| {
            (
                e.stream_id.as_str(),
                e.r#type.as_str(),
                e.metadata.as_ref().unwrap().actor.as_str(),
            )
        })
        .collect()
}

#[tokio::test]
async fn mutations_need_an_operator_and_record_who() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::for_test(dir.path());
    let issuer = Issuer::load(&config.auth).unwrap();
    let app = App::build(config).await.unwrap();
    let server = TestServer::start(|listener, shutdown| app.serve(listener, shutdown)).await;
    let channel = server.channel().await;
    let hour = Duration::from_secs(3600);

    // No token: reads pass, writes are refused.
    let mut anonymous = RegistryClient::new(channel.clone());
    anonymous
        .list_services(pb::ListServicesRequest {})
        .await
        .unwrap();
    let status = anonymous.register(register_request()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = EventsClient::new(channel.clone())
        .append(pb::AppendRequest {
            stream_id: "s".into(),
            expected: None,
            events: vec![pb::NewEvent {
                r#type: "t".into(),
                data: "{}".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // A viewer may read but not write.
    let viewer = issuer.issue("vera", Role::Viewer, hour);
    let status = RegistryClient::new(authed(channel.clone(), &viewer))
        .register(register_request())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("vera is a viewer"), "{status:?}");

    // A bad token is refused even on a read, with the reason.
    let expired = issuer.issue("old", Role::Admin, Duration::ZERO);
    let forged = format!("{}x", issuer.issue("mallory", Role::Admin, hour));
    for (token, reason) in [
        (&forged, "bad signature"),
        (&"garbage".to_owned(), "malformed token"),
    ] {
        let status = RegistryClient::new(authed(channel.clone(), token))
            .list_services(pb::ListServicesRequest {})
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(status.message(), reason);
    }
    // Within the 30 s leeway an expiry of now still passes; the check is exercised in
    // omnimesh-common's unit tests with older tokens.
    assert!(
        RegistryClient::new(authed(channel.clone(), &expired))
            .list_services(pb::ListServicesRequest {})
            .await
            .is_ok()
    );

    // An operator registers; the event names the operator, whatever the client claims.
    let operator = issuer.issue("olga", Role::Operator, hour);
    RegistryClient::new(authed(channel.clone(), &operator))
        .register(register_request())
        .await
        .unwrap();
    let mut events = EventsClient::new(authed(channel.clone(), &operator));
    events
        .append(pb::AppendRequest {
            stream_id: "notes".into(),
            expected: None,
            events: vec![pb::NewEvent {
                r#type: "note.written".into(),
                data: "{}".into(),
                metadata: Some(pb::EventMetadata {
                    actor: "someone-else".into(),
                    reason: "testing".into(),
                    ..Default::default()
                }),
                idempotency_key: String::new(),
            }],
        })
        .await
        .unwrap();
    let recorded = all_events(&mut events).await;
    assert_eq!(
        stream_type_actor(&recorded),
        [
            ("registry", "registry.instance_registered", "olga"),
            ("notes", "note.written", "olga")
        ]
    );
    assert_eq!(recorded[1].metadata.as_ref().unwrap().reason, "testing");

    // Without a local runtime, Runtime says so (after authentication).
    let status = RuntimeClient::new(authed(channel, &operator))
        .scale(pb::ScaleRequest {
            service: "core-engine".into(),
            replicas: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    server.stop().await.unwrap();
}

/// core-engine's report tokens (its own key, `[mesh-controller.reporting]`) append its
/// key-change events, recorded as `core-engine` whatever they claim, and do nothing else.
#[tokio::test]
async fn report_tokens_append_key_change_events_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::for_test(dir.path());
    let reporting = config.reporting.auth().unwrap();
    let app = App::build(config).await.unwrap();
    // The controller created the key; the engine's side signs with the same file.
    let report = Issuer::load(&omnimesh_common::reporting::auth_config(
        reporting.hs256_key_file.clone(),
        false,
    ))
    .unwrap()
    .issue("core-engine", Role::Admin, Duration::from_secs(3600));
    let server = TestServer::start(|listener, shutdown| app.serve(listener, shutdown)).await;
    let channel = authed(server.channel().await, &report);
    let append = |stream: &str, kind: &str| pb::AppendRequest {
        stream_id: stream.into(),
        expected: None,
        events: vec![pb::NewEvent {
            r#type: kind.into(),
            data: r#"{"key":"payments"}"#.into(),
            metadata: Some(pb::EventMetadata {
                actor: "alice".into(),
                ..Default::default()
            }),
            idempotency_key: String::new(),
        }],
    };
    let mut events = EventsClient::new(channel.clone());
    events
        .append(append("engine-key-payments", "engine.key_rotated"))
        .await
        .unwrap();

    // Outside its streams and event types: refused, naming the limit.
    for (stream, kind, expected) in [
        (
            "release-core-engine",
            "engine.key_rotated",
            "streams named engine-key-<key>",
        ),
        (
            "engine-key-payments",
            "release.recorded",
            "engine.key_* events",
        ),
    ] {
        let status = events.append(append(stream, kind)).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains(expected), "{status:?}");
    }
    // The other services do not know the key at all, even for reads.
    let status = RegistryClient::new(channel.clone())
        .register(register_request())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = RegistryClient::new(channel.clone())
        .list_services(pb::ListServicesRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = RuntimeClient::new(channel)
        .scale(pb::ScaleRequest {
            service: "core-engine".into(),
            replicas: 4,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // One event stored, by core-engine.
    assert_eq!(
        stream_type_actor(&all_events(&mut events).await),
        [("engine-key-payments", "engine.key_rotated", "core-engine")]
    );
}
