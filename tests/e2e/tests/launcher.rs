//! `mesh-controller launch` (what `make run` runs): four real processes reach SERVING,
//! answer stock gRPC clients, a killed one is restarted, a key rotated in the engine is an
//! event in the controller's store, and SIGTERM leaves nothing behind.

use std::time::Duration;

use anyhow::Context as _;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use omnimesh_e2e::{Launcher, alive, binary, processes_in};
use omnimesh_proto::controller::v1 as pb;
use omnimesh_proto::controller::v1::events_client::EventsClient;
use omnimesh_proto::controller::v1::registry_client::RegistryClient;
use omnimesh_proto::controller::v1::runtime_client::RuntimeClient;
use omnimesh_proto::engine::v1 as epb;
use omnimesh_proto::engine::v1::engine_client::EngineClient;
use omnimesh_test_support::eventually;
use omnimesh_test_support::grpc::{health_status, reflection_services};
use tokio::process::Command;
use tonic_health::pb::health_check_response::ServingStatus;

/// What `make run` runs by default: two engine replicas, one of everything else.
const INSTANCES: [&str; 5] = [
    "core-engine-0",
    "core-engine-1",
    "mesh-controller",
    "omniterm-interface-0",
    "proxy-gateway-0",
];

#[tokio::test]
async fn launch_serves_restarts_and_stops_without_orphans() -> anyhow::Result<()> {
    let mut launcher = Launcher::start("");
    let rows = launcher.ready_table().await?;
    assert_eq!(
        rows.keys().map(String::as_str).collect::<Vec<_>>(),
        INSTANCES
    );

    // A stock client, by address only: health and reflection on every gRPC port.
    for (service, (address, pid)) in &rows {
        assert!(alive(*pid), "{service} pid {pid} is not running");
        let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))?
            .connect()
            .await
            .with_context(|| format!("connecting to {service} at {address}"))?;
        assert_eq!(
            health_status(channel.clone(), "").await?,
            ServingStatus::Serving,
            "{service}"
        );
        if service != "proxy-gateway-0" {
            let listed = reflection_services(channel).await?;
            assert!(
                listed.iter().any(|name| name.starts_with("omnimesh.")),
                "{service} lists {listed:?}"
            );
        }
    }

    // Kill one: the launcher restarts it under a new pid that serves again.
    let (engine_address, old_pid) = rows["core-engine-0"];
    kill(Pid::from_raw(old_pid), Signal::SIGKILL)?;
    let exited = format!("core-engine-0 (pid {old_pid}) exited: signal SIGKILL; restarting in");
    launcher
        .line_where("the restart notice", |line| line.starts_with(&exited))
        .await?;
    let serving = launcher
        .line_where("core-engine serving again", |line| {
            line.starts_with("core-engine-0 SERVING (pid ")
        })
        .await?;
    let new_pid: i32 = serving
        .trim_start_matches("core-engine-0 SERVING (pid ")
        .trim_end_matches(')')
        .parse()?;
    assert_ne!(new_pid, old_pid);
    let channel = tonic::transport::Channel::from_shared(format!("http://{engine_address}"))?
        .connect()
        .await?;
    assert_eq!(health_status(channel, "").await?, ServingStatus::Serving);

    // The restarted replica is registered again, next to the other one.
    let controller =
        tonic::transport::Channel::from_shared(format!("http://{}", rows["mesh-controller"].0))?
            .connect()
            .await?;
    let listed = RegistryClient::new(controller.clone())
        .list_services(pb::ListServicesRequest {})
        .await?
        .into_inner();
    let engine = listed
        .services
        .iter()
        .find(|service| service.name == "core-engine")
        .context("core-engine is registered")?;
    let mut ids: Vec<&str> = engine.instances.iter().map(|i| i.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["core-engine-0", "core-engine-1"]);
    let health = RuntimeClient::new(controller.clone())
        .get_platform_health(pb::GetPlatformHealthRequest {})
        .await?
        .into_inner();
    let restarted = health
        .services
        .iter()
        .flat_map(|service| &service.instances)
        .find(|instance| instance.id == "core-engine-0")
        .context("core-engine-0 in the health report")?;
    assert_eq!(restarted.restarts, 1, "{restarted:?}");
    assert_eq!(restarted.state(), pb::InstanceState::Serving);
    assert!(restarted.last_error.contains("SIGKILL"), "{restarted:?}");

    // A key created and rotated in an engine replica: both changes are events in the
    // controller's store (core-engine reports them with the launcher's token key).
    let engine =
        tonic::transport::Channel::from_shared(format!("http://{}", rows["core-engine-1"].0))?
            .connect()
            .await?;
    let mut engine = EngineClient::new(engine);
    engine
        .create_key(epb::CreateKeyRequest {
            name: "launch-audit".into(),
            ..Default::default()
        })
        .await?;
    engine
        .rotate_key(epb::RotateKeyRequest {
            name: "launch-audit".into(),
        })
        .await?;
    let events = eventually(
        Duration::from_secs(30),
        "the key's two events in the controller",
        || {
            let mut events = EventsClient::new(controller.clone());
            async move {
                let read = events
                    .read_stream(pb::ReadStreamRequest {
                        stream_id: "engine-key-launch-audit".into(),
                        from_version: 1,
                        max_count: 10,
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .events;
                (read.len() >= 2).then_some(read)
            }
        },
    )
    .await?;
    let types: Vec<&str> = events.iter().map(|event| event.r#type.as_str()).collect();
    assert_eq!(types, ["engine.key_created", "engine.key_rotated"]);
    assert!(events[1].data.contains("\"version\":2"), "{:?}", events[1]);
    assert_eq!(
        events[1].metadata.as_ref().map(|m| m.actor.as_str()),
        Some("core-engine")
    );

    // SIGTERM: every child stops, the launcher exits 0, no process is left behind.
    kill(
        Pid::from_raw(launcher.child.id().unwrap() as i32),
        Signal::SIGTERM,
    )?;
    launcher
        .line_where("the stop report", |line| line == "all services stopped")
        .await?;
    let status = tokio::time::timeout(Duration::from_secs(30), launcher.child.wait()).await??;
    assert_eq!(
        status.code(),
        Some(0),
        "launcher exit status; output:\n{}",
        launcher.seen.join("\n")
    );
    let mut pids: Vec<i32> = rows.values().map(|(_, pid)| *pid).collect();
    pids.push(new_pid);
    for pid in pids {
        assert!(!alive(pid), "pid {pid} survived the launcher");
    }
    assert_eq!(
        processes_in(launcher.dir.path()),
        [],
        "processes left in the launch directory"
    );
    Ok(())
}

#[tokio::test]
async fn launch_names_a_missing_binary_and_starts_nothing() -> anyhow::Result<()> {
    let empty = tempfile::tempdir()?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("omnimesh.toml");
    std::fs::write(
        &config,
        format!(
            "[mesh-controller.local_runtime]\nbin_dir = {:?}\n",
            empty.path()
        ),
    )?;
    let output = Command::new(binary("mesh-controller"))
        .arg("launch")
        .current_dir(dir.path())
        .env("OMNIMESH_CONFIG", &config)
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("core-engine not found"), "{stderr}");
    assert_eq!(processes_in(dir.path()), []);
    Ok(())
}

/// Every service refuses to start on a bad configuration, with one line naming the
/// key, where the value came from, and the reason.
#[tokio::test]
async fn services_refuse_bad_configuration_with_one_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cases = [
        (
            "malformed.toml",
            "[core-engine\n",
            vec![],
            "(syntax)",
            "line 1",
        ),
        (
            "unknown-key.toml",
            "[core-engine.listen]\ngrcp = \"127.0.0.1:1\"\n",
            vec![],
            "core-engine.listen.grcp",
            "unknown key `grcp`",
        ),
        (
            "ok.toml",
            "",
            vec![("OMNIMESH_CORE_ENGINE__LISTEN__GRPC", "localhost")],
            "core-engine.listen.grpc",
            "environment variable OMNIMESH_CORE_ENGINE__LISTEN__GRPC",
        ),
    ];
    for (file, contents, env, key, reason) in cases {
        let path = dir.path().join(file);
        std::fs::write(&path, contents)?;
        let output = Command::new(binary("core-engine"))
            .current_dir(dir.path())
            .env("OMNIMESH_CONFIG", &path)
            .envs(env)
            .output()
            .await?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{file}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{file}: one line expected, got {stderr:?}");
        assert!(lines[0].contains(&format!("`{key}`")), "{file}: {stderr}");
        assert!(lines[0].contains(reason), "{file}: {stderr}");
    }
    Ok(())
}
