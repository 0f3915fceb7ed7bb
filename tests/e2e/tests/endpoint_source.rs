//! The gateway's `RegistrySource` follows a real `mesh-controller serve` process: it
//! sees registrations, keeps its last endpoints while the controller is killed, and
//! after the restart resumes from its last revision and sees the change made since.

use std::time::Duration;

use omnimesh_e2e::{free_port, operator_token, serve_controller, wait_serving};
use omnimesh_proto::controller::v1 as pb;
use omnimesh_proto::controller::v1::registry_client::RegistryClient;
use omnimesh_test_support::grpc::{Authed, authed};
use proxy_gateway::upstream::{
    EndpointSource as _, Endpoints, RegistrySource, RegistrySourceOptions,
};
use tokio::sync::watch;
use tonic::transport::Channel;

async fn register(client: &mut RegistryClient<Authed>, service: &str, port: u16) {
    client
        .register(pb::RegisterRequest {
            instance: Some(pb::Instance {
                id: format!("{service}-{port}"),
                service: service.into(),
                address: format!("127.0.0.1:{port}"),
                subset: "stable".into(),
                weight: 50,
                ..Default::default()
            }),
            ttl_seconds: 3600,
        })
        .await
        .unwrap();
}

async fn wait_for(
    endpoints: &mut watch::Receiver<std::sync::Arc<Endpoints>>,
    what: &str,
    check: impl Fn(&Endpoints) -> bool,
) {
    tokio::time::timeout(
        Duration::from_secs(30),
        endpoints.wait_for(|sets| check(sets)),
    )
    .await
    .unwrap_or_else(|_| panic!("waiting for {what}"))
    .unwrap();
}

fn ids(sets: &Endpoints, service: &str) -> Vec<String> {
    sets.get(service)
        .map(|set| set.endpoints.iter().map(|e| e.id.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_source_survives_a_controller_restart() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("events.db").display());
    let addr = free_port();
    let mut controller = serve_controller(dir.path(), addr, &url);
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    wait_serving(&channel).await;
    let mut registry = RegistryClient::new(authed(channel.clone(), &operator_token(dir.path())));
    register(&mut registry, "core-engine", 1001).await;
    register(&mut registry, "core-engine", 1002).await;
    register(&mut registry, "omniterm-interface", 1003).await;

    let source = RegistrySource::start(RegistrySourceOptions {
        controller: format!("http://{addr}"),
        services: vec!["core-engine".into()],
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
    })
    .unwrap();
    let mut endpoints = source.endpoints();
    wait_for(&mut endpoints, "two engine endpoints", |sets| {
        ids(sets, "core-engine") == ["core-engine-1001", "core-engine-1002"]
    })
    .await;
    {
        let sets = endpoints.borrow();
        let first = &sets["core-engine"].endpoints[0];
        assert_eq!(
            (first.address.as_str(), first.weight),
            ("127.0.0.1:1001", 50)
        );
        assert_eq!(first.subset, "stable");
        assert!(
            !sets.contains_key("omniterm-interface"),
            "only the followed services"
        );
    }

    // The controller dies: the source notices and keeps its endpoints.
    let mut connected = source.connected();
    controller.start_kill().unwrap();
    controller.wait().await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), connected.wait_for(|up| !*up))
        .await
        .expect("the source notices the controller is gone")
        .unwrap();
    assert_eq!(ids(&endpoints.borrow(), "core-engine").len(), 2);

    // Back on the same address and log: the source resumes and sees the new change.
    let _controller = serve_controller(dir.path(), addr, &url);
    wait_serving(&channel).await;
    registry
        .deregister(pb::DeregisterRequest {
            instance_id: "core-engine-1001".into(),
        })
        .await
        .unwrap();
    register(&mut registry, "core-engine", 1004).await;
    wait_for(
        &mut endpoints,
        "the change made after the restart",
        |sets| ids(sets, "core-engine") == ["core-engine-1002", "core-engine-1004"],
    )
    .await;
    assert!(*connected.borrow_and_update());
}
