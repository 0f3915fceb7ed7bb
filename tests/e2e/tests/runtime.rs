//! The local runtime through `mesh-controller launch` and its Runtime and Registry APIs:
//! scaling under a request loop loses no request, logs are served, a crash-looping
//! binary gets a clear state instead of a busy loop, and hostile requests and desired
//! states change nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use omnimesh_e2e::Launcher;
use omnimesh_proto::controller::v1 as pb;
use omnimesh_proto::controller::v1::registry_client::RegistryClient;
use omnimesh_proto::controller::v1::runtime_client::RuntimeClient;
use omnimesh_proto::engine::v1 as engine;
use omnimesh_proto::engine::v1::engine_client::EngineClient;
use omnimesh_test_support::grpc::{Authed, authed};
use tokio::sync::watch;
use tonic::Code;
use tonic::transport::Channel;

fn channel(address: &str) -> Channel {
    Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_lazy()
}

async fn scale(runtime: &mut RuntimeClient<Authed>, replicas: i32) -> pb::ScaleResponse {
    runtime
        .scale(pb::ScaleRequest {
            service: "core-engine".into(),
            replicas,
            relative: false,
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn stop(mut launcher: Launcher) {
    kill(
        Pid::from_raw(launcher.child.id().unwrap() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    launcher
        .line_where("the stop report", |line| line == "all services stopped")
        .await
        .unwrap();
    let status = launcher.child.wait().await.unwrap();
    assert_eq!(status.code(), Some(0));
}

/// A client that follows the registry like the gateway will: it sends Echo calls
/// round-robin to the SERVING core-engine instances of the latest Watch update.
struct Load {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    /// The replicas that have answered at least one call.
    served_by: Arc<watch::Sender<BTreeSet<String>>>,
    endpoints: watch::Receiver<BTreeMap<String, String>>,
    running: Arc<AtomicBool>,
}

impl Load {
    async fn start(controller: Channel) -> Self {
        let (endpoints_tx, endpoints) = watch::channel(BTreeMap::new());
        let mut updates = RegistryClient::new(controller)
            .watch(pb::WatchRequest {
                services: vec!["core-engine".into()],
                after_revision: 0,
            })
            .await
            .unwrap()
            .into_inner();
        tokio::spawn(async move {
            while let Ok(Some(update)) = updates.message().await {
                let serving = update
                    .instances
                    .iter()
                    .filter(|i| i.health() == pb::InstanceHealth::Serving)
                    .map(|i| (i.id.clone(), i.address.clone()))
                    .collect();
                endpoints_tx.send_replace(serving);
            }
        });
        let load = Self {
            ok: Arc::default(),
            failed: Arc::default(),
            errors: Arc::default(),
            served_by: Arc::new(watch::Sender::new(BTreeSet::new())),
            endpoints,
            running: Arc::new(AtomicBool::new(true)),
        };
        for worker in 0..4 {
            let (ok, failed, errors, served_by, running) = (
                Arc::clone(&load.ok),
                Arc::clone(&load.failed),
                Arc::clone(&load.errors),
                Arc::clone(&load.served_by),
                Arc::clone(&load.running),
            );
            let mut endpoints = load.endpoints.clone();
            tokio::spawn(async move {
                let mut channels: BTreeMap<String, Channel> = BTreeMap::new();
                let mut turn = worker;
                while running.load(Ordering::Relaxed) {
                    let current = endpoints.borrow_and_update().clone();
                    if current.is_empty() {
                        let _ = endpoints.changed().await;
                        continue;
                    }
                    channels.retain(|id, _| current.contains_key(id));
                    let (id, address) = current.iter().nth(turn % current.len()).unwrap();
                    turn += 1;
                    let channel = channels
                        .entry(id.clone())
                        .or_insert_with(|| channel(address))
                        .clone();
                    let mut client = EngineClient::new(channel);
                    let call = client.echo(engine::EchoRequest {
                        payload: b"ping".to_vec().into(),
                    });
                    match call.await {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            served_by.send_if_modified(|served| served.insert(id.clone()));
                        }
                        Err(status) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.lock().unwrap().push(format!("{id}: {status:?}"));
                        }
                    }
                }
            });
        }
        load
    }

    /// Waits until `count` replicas have each answered a call.
    async fn wait_for_served(&self, count: usize) {
        tokio::time::timeout(
            Duration::from_secs(30),
            self.served_by
                .subscribe()
                .wait_for(|served| served.len() >= count),
        )
        .await
        .unwrap_or_else(|_| panic!("{count} replicas to answer a call"))
        .unwrap();
    }

    async fn wait_for_endpoints(&mut self, count: usize) {
        tokio::time::timeout(
            Duration::from_secs(60),
            self.endpoints
                .wait_for(|endpoints| endpoints.len() == count),
        )
        .await
        .unwrap_or_else(|_| panic!("{count} SERVING core-engine instances in the registry"))
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scaling_two_four_one_under_load_fails_no_request() {
    let mut launcher = Launcher::start("deregister_grace = \"300ms\"\n");
    let rows = launcher.ready_table().await.unwrap();
    let controller = channel(&rows["mesh-controller"].0.to_string());
    let token = launcher.token("operator").await;
    let mut runtime = RuntimeClient::new(authed(controller.clone(), &token));

    // Logs: the tail of a replica holds its start-up, and a follower sees new replicas.
    let tail: Vec<pb::LogLine> = {
        let mut stream = runtime
            .logs(pb::LogsRequest {
                service: "core-engine".into(),
                instance_id: "core-engine-0".into(),
                tail_lines: 50,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut lines = Vec::new();
        while let Some(line) = stream.message().await.unwrap() {
            lines.push(line);
        }
        lines
    };
    assert!(
        tail.iter().any(|line| line.line.contains("serving")),
        "{tail:?}"
    );
    let mut follow = runtime
        .logs(pb::LogsRequest {
            service: "core-engine".into(),
            tail_lines: 1,
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let mut load = Load::start(controller.clone()).await;
    load.wait_for_endpoints(2).await;

    let up = scale(&mut runtime, 4).await;
    assert_eq!((up.previous_replicas, up.replicas), (2, 4));
    load.wait_for_endpoints(4).await;
    // The follower saw a new replica start.
    let new_replica = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let line = follow.message().await.unwrap().unwrap();
            if line.instance_id == "core-engine-2" || line.instance_id == "core-engine-3" {
                return line;
            }
        }
    })
    .await
    .expect("a log line of a new replica");
    assert!(new_replica.time.is_some());

    // Every replica takes part before the scale-down begins.
    load.wait_for_served(4).await;
    let before_down = load.ok.load(Ordering::Relaxed);
    let down = scale(&mut runtime, 1).await;
    assert_eq!((down.previous_replicas, down.replicas), (4, 1));
    load.wait_for_endpoints(1).await;
    let mut stopped = BTreeSet::new();
    while stopped.len() < 3 {
        let line = launcher
            .line_where("the scaled-down replicas to stop", |line| {
                line.starts_with("core-engine-") && line.contains(" stopped: ")
            })
            .await
            .unwrap();
        stopped.insert(line.split(' ').next().unwrap().to_owned());
    }
    assert_eq!(
        stopped.into_iter().collect::<Vec<_>>(),
        ["core-engine-1", "core-engine-2", "core-engine-3"]
    );
    // Keep the load going a little after the last stop, on the survivor.
    let after_stop = load.ok.load(Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(30), async {
        while load.ok.load(Ordering::Relaxed) < after_stop + 50 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    load.running.store(false, Ordering::Relaxed);

    let errors = load.errors.lock().unwrap().clone();
    assert_eq!(
        load.failed.load(Ordering::Relaxed),
        0,
        "failed requests: {errors:?}"
    );
    assert!(load.ok.load(Ordering::Relaxed) > before_down + 50);
    let served_by = load.served_by.borrow().clone();
    assert_eq!(served_by.len(), 4, "every replica served: {served_by:?}");

    let health = runtime
        .get_platform_health(pb::GetPlatformHealthRequest {})
        .await
        .unwrap()
        .into_inner();
    let engine = health
        .services
        .iter()
        .find(|service| service.service == "core-engine")
        .unwrap();
    assert_eq!(engine.desired_replicas, 1);
    assert_eq!(engine.instances.len(), 1);
    // The scale operations are events, with their actor.
    let desired =
        std::fs::read_to_string(launcher.dir.path().join(".omnimesh/desired-state.toml")).unwrap();
    assert!(desired.contains("replicas = 1"), "{desired}");
    stop(launcher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_loop_is_a_state_and_hostile_requests_change_nothing() {
    let states = tempfile::tempdir().unwrap();
    let desired = states.path().join("desired-state.toml");
    std::fs::write(
        &desired,
        "[services.core-engine]\nreplicas = 1\nbinary = \"core-engine\"\n\
         ports = { grpc = \"127.0.0.1:0\" }\nhealth = \"grpc\"\nregister = \"grpc\"\n\
         [services.flaky]\nreplicas = 1\nbinary = \"/bin/false\"\n\
         ports = { grpc = \"127.0.0.1:0\" }\nhealth = \"grpc\"\nregister = \"grpc\"\n",
    )
    .unwrap();
    let mut launcher = Launcher::start(&format!(
        "desired_state = {desired:?}\nrestart_backoff_max = \"30s\"\ncrash_loop_exits = 4\n"
    ));
    let crash_loop = launcher
        .line_where("the crash loop", |line| {
            line.starts_with("flaky-0 (pid ")
                && line.contains("exit code 1; crash loop; next try in 30s")
        })
        .await
        .unwrap();
    assert!(!crash_loop.is_empty());
    let controller_line = launcher
        .seen
        .iter()
        .find(|line| line.starts_with("mesh-controller serving on "))
        .cloned()
        .unwrap();
    let controller_address = controller_line
        .trim_start_matches("mesh-controller serving on ")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let token = launcher.token("operator").await;
    let mut runtime = RuntimeClient::new(authed(channel(&controller_address), &token));
    // Without a token, and with a viewer's, Scale is refused.
    for (client_token, code) in [
        (None, Code::Unauthenticated),
        (Some(launcher.token("viewer").await), Code::PermissionDenied),
    ] {
        let channel = channel(&controller_address);
        let request = pb::ScaleRequest {
            service: "core-engine".into(),
            replicas: 3,
            ..Default::default()
        };
        let status = match client_token {
            None => RuntimeClient::new(channel)
                .scale(request)
                .await
                .unwrap_err(),
            Some(token) => RuntimeClient::new(authed(channel, &token))
                .scale(request)
                .await
                .unwrap_err(),
        };
        assert_eq!(status.code(), code);
    }
    let health = |runtime: &mut RuntimeClient<Authed>| {
        let mut runtime = runtime.clone();
        async move {
            runtime
                .get_platform_health(pb::GetPlatformHealthRequest {})
                .await
                .unwrap()
                .into_inner()
        }
    };
    let report = health(&mut runtime).await;
    let flaky = report
        .services
        .iter()
        .find(|service| service.service == "flaky")
        .unwrap();
    let instance = &flaky.instances[0];
    assert_eq!(instance.state(), pb::InstanceState::CrashLoop);
    assert_eq!(instance.restarts, 4);
    assert_eq!(instance.last_error, "exited: exit code 1");

    // Hostile scale requests: refused with the reason, nothing changes.
    for (service, replicas, relative, code) in [
        ("nope", 1, false, Code::NotFound),
        ("core-engine", -1, false, Code::InvalidArgument),
        ("core-engine", 1000, false, Code::InvalidArgument),
        ("core-engine", i32::MAX, true, Code::InvalidArgument),
        ("core-engine", -5, true, Code::InvalidArgument),
        ("", 1, false, Code::NotFound),
    ] {
        let status = runtime
            .scale(pb::ScaleRequest {
                service: service.into(),
                replicas,
                relative,
                dry_run: false,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{service} {replicas}: {status:?}");
    }
    let dry = runtime
        .scale(pb::ScaleRequest {
            service: "core-engine".into(),
            replicas: 3,
            relative: false,
            dry_run: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((dry.previous_replicas, dry.replicas), (1, 3));
    for (request, code) in [
        (
            pb::LogsRequest {
                service: "nope".into(),
                ..Default::default()
            },
            Code::NotFound,
        ),
        (
            pb::LogsRequest {
                service: "core-engine".into(),
                min_level: "loud".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            pb::LogsRequest {
                service: "core-engine".into(),
                instance_id: "core-engine-9".into(),
                ..Default::default()
            },
            Code::NotFound,
        ),
    ] {
        assert_eq!(runtime.logs(request).await.unwrap_err().code(), code);
    }

    // A malformed desired state is refused; the running state stays.
    std::fs::write(&desired, "[services.core-engine]\nreplicas = \"many\"\n").unwrap();
    launcher
        .line_where("the refusal", |line| {
            line.starts_with("desired state refused, keeping the running one")
        })
        .await
        .unwrap();
    let after = health(&mut runtime).await;
    let engine = after
        .services
        .iter()
        .find(|service| service.service == "core-engine")
        .unwrap();
    assert_eq!(engine.desired_replicas, 1);
    assert_eq!(engine.instances[0].state(), pb::InstanceState::Serving);
    // Still in the crash loop, not restarting in a busy loop.
    let flaky = after
        .services
        .iter()
        .find(|service| service.service == "flaky")
        .unwrap();
    assert_eq!(flaky.instances[0].restarts, 4);
    stop(launcher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_engine_replica_fails_no_request_through_the_gateway() {
    let mut launcher = Launcher::start("");
    let rows = launcher.ready_table().await.unwrap();
    let gateway = channel(&rows["proxy-gateway-0"].0.to_string());
    let (_, old_pid) = rows["core-engine-0"];

    // The gateway follows the registry: both replicas, and the controller's own API.
    // (The gateway learns the controller's instance from its first Watch message.)
    let services = omnimesh_test_support::eventually(
        Duration::from_secs(30),
        "the controller's API through the gateway",
        || {
            let mut client = RegistryClient::new(gateway.clone());
            async move {
                client
                    .list_services(pb::ListServicesRequest {})
                    .await
                    .ok()
                    .map(tonic::Response::into_inner)
            }
        },
    )
    .await
    .unwrap();
    assert!(
        services
            .services
            .iter()
            .any(|s| s.name == "core-engine" && s.instances.len() == 2)
    );

    let done = Arc::new(watch::Sender::new(0u64));
    let failed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let running = Arc::new(AtomicBool::new(true));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (gateway, done, failed, errors, running) = (
            gateway.clone(),
            Arc::clone(&done),
            Arc::clone(&failed),
            Arc::clone(&errors),
            Arc::clone(&running),
        );
        workers.spawn(async move {
            let mut client = EngineClient::new(gateway);
            while running.load(Ordering::Relaxed) {
                let call = client.echo(engine::EchoRequest {
                    payload: b"ping".to_vec().into(),
                });
                match call.await {
                    Ok(_) => done.send_modify(|done| *done += 1),
                    Err(status) => {
                        errors.lock().unwrap().push(format!("{status:?}"));
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    done.subscribe()
        .wait_for(|done| *done >= 500)
        .await
        .unwrap();
    kill(Pid::from_raw(old_pid), Signal::SIGKILL).unwrap();
    launcher
        .line_where("core-engine-0 back", |line| {
            line.starts_with("core-engine-0 SERVING (pid ")
        })
        .await
        .unwrap();
    let after_restart = *done.borrow();
    done.subscribe()
        .wait_for(|done| *done >= after_restart + 500)
        .await
        .unwrap();
    running.store(false, Ordering::Relaxed);
    workers.join_all().await;
    let errors = errors.lock().unwrap().clone();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "{errors:?}");
    assert!(*done.borrow() >= 1000);
    stop(launcher).await;
}
