//! The registry through tonic: register, heartbeat, deregister, watch with resume,
//! TTL expiry, active health checks against a real health server, every change an
//! event, and the state rebuilt after a restart.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use mesh_controller::{App, Config};
use omnimesh_common::auth::{Issuer, Role};
use omnimesh_proto::controller::v1 as pb;
use omnimesh_proto::controller::v1::events_client::EventsClient;
use omnimesh_proto::controller::v1::registry_client::RegistryClient;
use omnimesh_test_support::TestServer;
use omnimesh_test_support::grpc::{Authed, authed};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Code;
use tonic::codec::Streaming;
use tonic_health::ServingStatus;

/// An operator token for the controller whose data is in `dir`.
fn token(dir: &Path) -> String {
    Issuer::load(&Config::for_test(dir).auth).unwrap().issue(
        "tester",
        Role::Operator,
        Duration::from_secs(600),
    )
}

/// A registry client of `server` with an operator token.
async fn client(server: &TestServer, dir: &Path) -> RegistryClient<Authed> {
    RegistryClient::new(authed(server.channel().await, &token(dir)))
}

/// A controller whose registry checks every 50 ms and reacts after 2 checks.
async fn start(dir: &Path, default_ttl: Duration) -> TestServer {
    let mut config = Config::for_test(dir);
    config.registry.default_ttl = default_ttl;
    config.registry.check_interval = Duration::from_millis(50);
    config.registry.check_timeout = Duration::from_millis(500);
    config.registry.healthy_threshold = 2;
    config.registry.unhealthy_threshold = 2;
    config.registry.snapshot_every = 3;
    let app = App::build(config).await.unwrap();
    TestServer::start(|listener, shutdown| app.serve(listener, shutdown)).await
}

/// A real gRPC health server whose status the test sets.
async fn health_server() -> (String, tonic_health::server::HealthReporter) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    let listener = omnimesh_test_support::bind().await;
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (address, reporter)
}

fn instance(service: &str, address: &str) -> pb::Instance {
    pb::Instance {
        service: service.into(),
        address: address.into(),
        version: "1.4.2".into(),
        subset: "stable".into(),
        health: pb::InstanceHealth::Serving.into(),
        ..Default::default()
    }
}

async fn register(client: &mut RegistryClient<Authed>, instance: pb::Instance) -> String {
    client
        .register(pb::RegisterRequest {
            instance: Some(instance),
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .instance_id
}

/// Opens a Watch of `services` (empty: all) after `after_revision`.
async fn open_watch(
    client: &mut RegistryClient<Authed>,
    services: &[&str],
    after_revision: u64,
) -> Streaming<pb::WatchResponse> {
    client
        .watch(pb::WatchRequest {
            services: services.iter().map(|s| (*s).to_owned()).collect(),
            after_revision,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn next(watch: &mut Streaming<pb::WatchResponse>) -> pb::WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("a watch message within 10 s")
        .unwrap()
        .expect("the watch stays open")
}

fn health_of(response: &pb::WatchResponse) -> HashMap<String, pb::InstanceHealth> {
    response
        .instances
        .iter()
        .map(|instance| (instance.id.clone(), instance.health()))
        .collect()
}

#[tokio::test]
async fn register_watch_deregister_and_every_change_is_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), Duration::from_secs(60)).await;
    let mut client = client(&server, dir.path()).await;
    let (a, _reporter_a) = health_server().await;
    let (b, _reporter_b) = health_server().await;

    let mut watch = open_watch(&mut client, &["core-engine"], 0).await;
    let empty = next(&mut watch).await;
    assert_eq!(
        (empty.service.as_str(), empty.instances.len()),
        ("core-engine", 0)
    );

    let first = register(&mut client, instance("core-engine", &a)).await;
    assert_eq!(first, format!("core-engine@{a}"));
    let one = next(&mut watch).await;
    assert_eq!(one.instances.len(), 1);
    assert_eq!(one.instances[0].weight, 100);
    let second = register(&mut client, instance("core-engine", &b)).await;
    let two = next(&mut watch).await;
    assert_eq!(two.instances.len(), 2);
    assert!(two.revision > one.revision);
    // Another service does not reach this watch.
    register(&mut client, instance("proxy-gateway", &a)).await;

    let expires = client
        .heartbeat(pb::HeartbeatRequest {
            instance_id: first.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .expires_at
        .unwrap();
    assert!(expires.seconds > 1_700_000_000);

    client
        .deregister(pb::DeregisterRequest {
            instance_id: second.clone(),
        })
        .await
        .unwrap();
    let back_to_one = next(&mut watch).await;
    assert_eq!(back_to_one.service, "core-engine");
    assert_eq!(back_to_one.instances.len(), 1);

    // A watch resumed after `two` gets only the later change.
    let mut resumed = open_watch(&mut client, &["core-engine"], two.revision).await;
    assert_eq!(next(&mut resumed).await.revision, back_to_one.revision);

    let listed = client
        .list_services(pb::ListServicesRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = listed.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["core-engine", "proxy-gateway"]);

    let events = EventsClient::new(server.channel().await)
        .read_stream(pb::ReadStreamRequest {
            stream_id: "registry".into(),
            from_version: 0,
            max_count: 100,
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let types: Vec<_> = events.iter().map(|e| e.r#type.as_str()).collect();
    assert_eq!(
        types[..4],
        [
            "registry.instance_registered",
            "registry.instance_registered",
            "registry.instance_registered",
            "registry.instance_deregistered"
        ]
    );
    assert!(
        events
            .iter()
            .filter(|e| e.r#type != "registry.health_changed")
            .all(|e| e.metadata.as_ref().unwrap().actor == "tester"),
        "{events:?}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn active_checks_mark_instances_down_and_up_at_the_thresholds() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), Duration::from_secs(60)).await;
    let mut client = client(&server, dir.path()).await;
    let (address, reporter) = health_server().await;
    let mut watch = open_watch(&mut client, &["core-engine"], 0).await;
    next(&mut watch).await;
    let id = register(&mut client, instance("core-engine", &address)).await;
    assert_eq!(
        health_of(&next(&mut watch).await)[&id],
        pb::InstanceHealth::Serving
    );

    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    assert_eq!(
        health_of(&next(&mut watch).await)[&id],
        pb::InstanceHealth::NotServing
    );
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    assert_eq!(
        health_of(&next(&mut watch).await)[&id],
        pb::InstanceHealth::Serving
    );

    // An address where nothing listens fails its checks too.
    let gone = omnimesh_test_support::bind()
        .await
        .local_addr()
        .unwrap()
        .to_string();
    let dead = register(&mut client, instance("core-engine", &gone)).await;
    loop {
        let update = next(&mut watch).await;
        if health_of(&update).get(&dead) == Some(&pb::InstanceHealth::NotServing) {
            break;
        }
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn silent_instances_expire_and_heartbeats_then_fail() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), Duration::from_secs(1)).await;
    let mut client = client(&server, dir.path()).await;
    let (address, _reporter) = health_server().await;
    let mut watch = open_watch(&mut client, &[], 0).await;
    let id = register(&mut client, instance("omniterm-interface", &address)).await;
    assert_eq!(next(&mut watch).await.instances.len(), 1);
    // No heartbeat: gone after the TTL, announced to watchers.
    let mut update = next(&mut watch).await;
    while !update.instances.is_empty() {
        update = next(&mut watch).await;
    }
    let status = client
        .heartbeat(pb::HeartbeatRequest { instance_id: id })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let types: Vec<String> = EventsClient::new(server.channel().await)
        .read_all(pb::ReadAllRequest {
            from_position: 0,
            max_count: 100,
            types: vec!["registry.instance_expired".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .map(|e| e.r#type)
        .collect();
    assert_eq!(types, ["registry.instance_expired"]);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn malformed_registrations_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), Duration::from_secs(60)).await;
    let mut client = client(&server, dir.path()).await;
    let labels = (0..40).map(|n| (n.to_string(), "v".to_string())).collect();
    let cases = [
        (None, "instance"),
        (Some(instance("Not A Name", "127.0.0.1:1")), "service"),
        (Some(instance("svc", "nowhere")), "address"),
        (Some(instance("svc", "127.0.0.1:0")), "address"),
        (
            Some(pb::Instance {
                weight: 1_000_000,
                ..instance("svc", "h:1")
            }),
            "weight",
        ),
        (
            Some(pb::Instance {
                subset: "purple".into(),
                ..instance("svc", "h:1")
            }),
            "subset",
        ),
        (
            Some(pb::Instance {
                health: 99,
                ..instance("svc", "h:1")
            }),
            "health",
        ),
        (
            Some(pb::Instance {
                labels,
                ..instance("svc", "h:1")
            }),
            "labels",
        ),
    ];
    for (given, field) in cases {
        let status = client
            .register(pb::RegisterRequest {
                instance: given,
                ttl_seconds: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().contains(field),
            "{field}: {}",
            status.message()
        );
    }
    let huge_ttl = client
        .register(pb::RegisterRequest {
            instance: Some(instance("svc", "h:1")),
            ttl_seconds: u32::MAX,
        })
        .await
        .unwrap_err();
    assert!(huge_ttl.message().contains("ttl_seconds"), "{huge_ttl:?}");
    for (code, result) in [
        (
            Code::NotFound,
            client
                .deregister(pb::DeregisterRequest {
                    instance_id: "nobody".into(),
                })
                .await
                .map(|_| ()),
        ),
        (
            Code::InvalidArgument,
            client
                .watch(pb::WatchRequest {
                    services: vec!["BAD NAME".into()],
                    after_revision: 0,
                })
                .await
                .map(|_| ()),
        ),
    ] {
        assert_eq!(result.unwrap_err().code(), code);
    }
    let listed = client
        .list_services(pb::ListServicesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.services.is_empty());
    let events = EventsClient::new(server.channel().await)
        .read_all(pb::ReadAllRequest::default())
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(events.is_empty(), "{events:?}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_restarted_controller_rebuilds_the_registry_from_snapshot_and_log() {
    let dir = tempfile::tempdir().unwrap();
    let (address, _reporter) = health_server().await;
    let before = {
        let server = start(dir.path(), Duration::from_secs(60)).await;
        let mut client = client(&server, dir.path()).await;
        // snapshot_every = 3: the fourth and fifth changes come after the snapshot.
        for port in 1..=4 {
            register(
                &mut client,
                instance("core-engine", &format!("127.0.0.1:{port}")),
            )
            .await;
        }
        client
            .deregister(pb::DeregisterRequest {
                instance_id: "core-engine@127.0.0.1:2".into(),
            })
            .await
            .unwrap();
        register(&mut client, instance("mesh-controller", &address)).await;
        let listed = client
            .list_services(pb::ListServicesRequest {})
            .await
            .unwrap()
            .into_inner();
        server.stop().await.unwrap();
        listed
    };
    let server = start(dir.path(), Duration::from_secs(60)).await;
    let mut client = client(&server, dir.path()).await;
    let after = client
        .list_services(pb::ListServicesRequest {})
        .await
        .unwrap()
        .into_inner();
    let ids = |listed: &pb::ListServicesResponse| -> Vec<(String, Vec<String>)> {
        listed
            .services
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    s.instances.iter().map(|i| i.id.clone()).collect(),
                )
            })
            .collect()
    };
    assert_eq!(ids(&after), ids(&before));
    assert_eq!(after.services[0].instances.len(), 3);
    // The revisions survive too: a watch resumed at the last one is quiet until a change.
    let mut watch = open_watch(&mut client, &[], 0).await;
    let mut revisions = Vec::new();
    for _ in 0..2 {
        revisions.push(next(&mut watch).await.revision);
    }
    assert!(
        revisions.iter().all(|revision| *revision > 0),
        "{revisions:?}"
    );
    server.stop().await.unwrap();
}
