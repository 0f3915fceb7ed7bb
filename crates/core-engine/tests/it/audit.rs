//! Key changes reach a real mesh-controller's event store (in process, on loopback): in
//! order, once each, after the controller was away, and after the engine that made them
//! stopped.

use std::net::SocketAddr;
use std::time::Duration;

use core_engine::{App, Config};
use omnimesh_common::auth::{Issuer, Role};
use omnimesh_proto::controller::v1 as cpb;
use omnimesh_proto::controller::v1::events_client::EventsClient;
use omnimesh_proto::engine::v1 as pb;
use omnimesh_proto::engine::v1::engine_client::EngineClient;
use omnimesh_test_support::grpc::authed;
use omnimesh_test_support::{TestServer, bind, eventually};
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(30);

/// A controller on `listener` (bound by the caller, so its address is known before it
/// serves); stops when the returned sender is dropped.
async fn serve_controller(
    config: mesh_controller::Config,
    listener: TcpListener,
) -> tokio::sync::oneshot::Sender<()> {
    let app = mesh_controller::App::build(config).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.serve(listener, async move {
        let _ = stopped.await;
    }));
    stop
}

/// A controller's configuration in a new directory (kept alive by the guard), and a
/// viewer token for reading its events.
fn controller_setup() -> (tempfile::TempDir, mesh_controller::Config, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = mesh_controller::Config::for_test(dir.path());
    let token = Issuer::load(&config.auth).unwrap().issue(
        "auditor",
        Role::Viewer,
        Duration::from_secs(600),
    );
    (dir, config, token)
}

/// An engine on the key store in `dir` reporting to `controller`.
fn engine_config(
    dir: &std::path::Path,
    controller: SocketAddr,
    auth: &mesh_controller::Config,
) -> Config {
    let mut config = Config::for_test(dir);
    config.audit.controller = format!("http://{controller}");
    // The controller's report key; whichever of the two starts first creates it.
    config.audit.key_file = auth.reporting.core_engine_key_file.clone();
    config.audit.timeout = Duration::from_millis(500);
    config.audit.retry_initial = Duration::from_millis(20);
    config.audit.retry_max = Duration::from_millis(200);
    config
}

async fn start_engine(config: Config) -> TestServer {
    let app = App::build(config).await.unwrap();
    TestServer::start(|listener, shutdown| app.serve(listener, shutdown)).await
}

/// The value of an engine metric (without labels), once `/metrics` has it.
async fn metric(engine: &TestServer, name: &str) -> Option<f64> {
    let body = omnimesh_test_support::http::get(engine.addr(), "/metrics")
        .await
        .ok()?
        .body;
    let full = format!("omnimesh_core_engine_{name} ");
    body.lines()
        .find_map(|line| line.strip_prefix(&full))
        .and_then(|value| value.trim().parse().ok())
}

/// Waits until the engine's metric equals `value`.
async fn metric_reaches(engine: &TestServer, name: &str, value: f64) {
    eventually(WAIT, &format!("{name} = {value}"), || async {
        (metric(engine, name).await == Some(value)).then_some(())
    })
    .await
    .unwrap();
}

/// The events of `stream` once it holds `count`, read through the controller's API.
async fn stream_events(
    controller: SocketAddr,
    token: &str,
    stream: &str,
    count: usize,
) -> Vec<cpb::Event> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{controller}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = EventsClient::new(authed(channel, token));
    eventually(WAIT, &format!("{count} events in {stream}"), || {
        let mut client = client.clone();
        async move {
            let events = client
                .read_stream(cpb::ReadStreamRequest {
                    stream_id: stream.to_owned(),
                    from_version: 1,
                    max_count: 1000,
                })
                .await
                .ok()?
                .into_inner()
                .events;
            (events.len() >= count).then_some(events)
        }
    })
    .await
    .unwrap();
    // Nothing more arrives: a read after the reporter has emptied its outbox.
    client
        .read_stream(cpb::ReadStreamRequest {
            stream_id: stream.to_owned(),
            from_version: 1,
            max_count: 1000,
        })
        .await
        .unwrap()
        .into_inner()
        .events
}

fn data(event: &cpb::Event) -> serde_json::Value {
    serde_json::from_str(&event.data).unwrap()
}

async fn create(engine: &mut EngineClient<tonic::transport::Channel>, name: &str) {
    engine
        .create_key(pb::CreateKeyRequest {
            name: name.into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn rotate(engine: &mut EngineClient<tonic::transport::Channel>, name: &str) {
    engine
        .rotate_key(pb::RotateKeyRequest { name: name.into() })
        .await
        .unwrap();
}

#[tokio::test]
async fn key_changes_wait_while_the_controller_is_away_then_arrive_once_in_order() {
    let (_controller_dir, controller_config, token) = controller_setup();
    // The controller's port is bound but not served yet: reports time out and are retried.
    let held = bind().await;
    let controller = held.local_addr().unwrap();
    let engine_dir = tempfile::tempdir().unwrap();
    let engine = start_engine(engine_config(
        engine_dir.path(),
        controller,
        &controller_config,
    ))
    .await;
    let mut client = EngineClient::new(engine.channel().await);

    create(&mut client, "payments").await;
    rotate(&mut client, "payments").await;
    rotate(&mut client, "payments").await;
    client
        .update_key_config(pb::UpdateKeyConfigRequest {
            name: "payments".into(),
            config: Some(pb::KeyConfigUpdate {
                deletion_allowed: Some(true),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    // A refused change is not an event.
    let refused = client
        .trim_key(pb::TrimKeyRequest {
            name: "payments".into(),
            min_available_version: 9,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    client
        .delete_key(pb::DeleteKeyRequest {
            name: "payments".into(),
        })
        .await
        .unwrap();

    // All five wait, and the reporter has failed at least once.
    metric_reaches(&engine, "key_events_pending", 5.0).await;
    assert!(metric(&engine, "key_event_report_failures_total").await >= Some(1.0));
    assert_eq!(
        metric(&engine, "key_events_reported_total").await,
        Some(0.0)
    );

    let _controller = serve_controller(controller_config, held).await;
    metric_reaches(&engine, "key_events_pending", 0.0).await;
    let events = stream_events(controller, &token, "engine-key-payments", 5).await;
    let types: Vec<&str> = events.iter().map(|event| event.r#type.as_str()).collect();
    assert_eq!(
        types,
        [
            "engine.key_created",
            "engine.key_rotated",
            "engine.key_rotated",
            "engine.key_config_updated",
            "engine.key_deleted"
        ],
        "each change once, in the order made"
    );
    let versions: Vec<u64> = events.iter().map(|event| event.stream_version).collect();
    assert_eq!(versions, [1, 2, 3, 4, 5]);
    assert_eq!(data(&events[1])["version"], 2);
    assert_eq!(data(&events[2])["version"], 3);
    assert_eq!(data(&events[3])["deletion_allowed"], true);
    for event in &events {
        let metadata = event.metadata.as_ref().unwrap();
        assert_eq!(metadata.actor, "core-engine", "the token's subject");
        assert_eq!(data(event)["key"], "payments");
        assert_eq!(data(event)["key_type"], "aes256-gcm");
        // Made before the controller was up: the change's own time travels with it.
        let changed = data(event)["changed_at_ms"].as_i64().unwrap();
        let arrived = event.recorded_at.as_ref().unwrap();
        assert!(changed <= arrived.seconds * 1000 + i64::from(arrived.nanos / 1_000_000) + 1);
        assert!(event.idempotency_key.starts_with("core-engine:"));
    }
    assert_eq!(
        metric(&engine, "key_events_reported_total").await,
        Some(5.0)
    );

    // Later changes are reported as they happen.
    create(&mut client, "orders").await;
    let later = stream_events(controller, &token, "engine-key-orders", 1).await;
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].r#type, "engine.key_created");
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn changes_left_by_a_stopped_engine_are_reported_once_by_the_replicas_after_it() {
    let (_controller_dir, controller_config, token) = controller_setup();
    let listener = bind().await;
    let controller = listener.local_addr().unwrap();
    let _controller = serve_controller(controller_config.clone(), listener).await;
    let engine_dir = tempfile::tempdir().unwrap();

    // The first engine reports to a port nobody serves, then stops with four changes
    // waiting in its store.
    let nowhere = bind().await;
    let first = start_engine(engine_config(
        engine_dir.path(),
        nowhere.local_addr().unwrap(),
        &controller_config,
    ))
    .await;
    let mut client = EngineClient::new(first.channel().await);
    create(&mut client, "ledger").await;
    for _ in 0..3 {
        rotate(&mut client, "ledger").await;
    }
    metric_reaches(&first, "key_events_pending", 4.0).await;
    first.stop().await.unwrap();

    // Two replicas start on the same store at once, both reporting to the controller.
    let (second, third) = tokio::join!(
        start_engine(engine_config(
            engine_dir.path(),
            controller,
            &controller_config
        )),
        start_engine(engine_config(
            engine_dir.path(),
            controller,
            &controller_config
        )),
    );
    metric_reaches(&second, "key_events_pending", 0.0).await;
    metric_reaches(&third, "key_events_pending", 0.0).await;
    let events = stream_events(controller, &token, "engine-key-ledger", 4).await;
    let versions: Vec<serde_json::Value> =
        events.iter().map(|e| data(e)["version"].clone()).collect();
    assert_eq!(
        versions,
        [1, 2, 3, 4].map(serde_json::Value::from),
        "each change exactly once, although both replicas may have sent it"
    );
    let reported = metric(&second, "key_events_reported_total").await.unwrap()
        + metric(&third, "key_events_reported_total").await.unwrap();
    assert!((4.0..=8.0).contains(&reported), "{reported}");
    second.stop().await.unwrap();
    third.stop().await.unwrap();
}
