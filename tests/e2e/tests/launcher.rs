//! `mesh-controller launch` (what `make run` runs): four real processes reach SERVING,
//! answer stock gRPC clients, a killed one is restarted, and SIGTERM leaves nothing behind.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use omnimesh_proto::controller::v1 as pb;
use omnimesh_proto::controller::v1::registry_client::RegistryClient;
use omnimesh_proto::controller::v1::runtime_client::RuntimeClient;
use omnimesh_test_support::grpc::{health_status, reflection_services};
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tonic_health::pb::health_check_response::ServingStatus;

const SERVICES: [&str; 4] = [
    "core-engine",
    "mesh-controller",
    "omniterm-interface",
    "proxy-gateway",
];
/// What `make run` runs by default: two engine replicas, one of everything else.
const INSTANCES: [&str; 5] = [
    "core-engine-0",
    "core-engine-1",
    "mesh-controller",
    "omniterm-interface-0",
    "proxy-gateway-0",
];
/// Cold debug binaries on a busy 2-core machine: generous, but bounded.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// The directory holding the workspace binaries (`target/<profile>`).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    // target/<profile>/deps/<test binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (`make test` does)",
        path.display()
    );
    path
}

/// A launcher started in a temporary directory with every port 0 (free ports).
struct Launcher {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    seen: Vec<String>,
    dir: tempfile::TempDir,
}

impl Launcher {
    fn start(extra_config: &str) -> Self {
        for service in SERVICES {
            binary(service);
        }
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("omnimesh.toml");
        std::fs::write(
            &config,
            format!(
                "[core-engine.listen]\ngrpc = \"127.0.0.1:0\"\n\
                 [omniterm-interface.listen]\ngrpc = \"127.0.0.1:0\"\n\
                 [proxy-gateway.listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
                 [mesh-controller.listen]\ngrpc = \"127.0.0.1:0\"\n\
                 [mesh-controller.local_runtime]\nrestart_backoff_initial = \"50ms\"\n\
                 ready_timeout = \"80s\"\n{extra_config}"
            ),
        )
        .unwrap();
        let mut child = Command::new(binary("mesh-controller"))
            .arg("launch")
            .current_dir(dir.path())
            .env("OMNIMESH_CONFIG", &config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            child,
            lines,
            seen: Vec::new(),
            dir,
        }
    }

    /// Reads output lines until `matches` accepts one; returns that line.
    async fn line_where(
        &mut self,
        what: &str,
        matches: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let read = async {
            while let Some(line) = self.lines.next_line().await? {
                self.seen.push(line.clone());
                if matches(&line) {
                    return Ok(line);
                }
            }
            bail!("the launcher's output ended before {what}")
        };
        tokio::time::timeout(READY_TIMEOUT, read)
            .await
            .with_context(|| {
                format!(
                    "waiting for {what}; output so far:\n{}",
                    self.seen.join("\n")
                )
            })?
    }

    /// Waits for the status table and returns instance → (address, pid).
    async fn ready_table(&mut self) -> anyhow::Result<BTreeMap<String, (SocketAddr, i32)>> {
        self.line_where("the status table", |line| line.starts_with("INSTANCE"))
            .await?;
        let mut rows = BTreeMap::new();
        loop {
            let line = self.line_where("a table row", |_| true).await?;
            if line.is_empty() {
                break;
            }
            let columns: Vec<&str> = line.split_whitespace().collect();
            let [instance, address, state, pid] = columns[..] else {
                bail!("not a table row: {line:?}");
            };
            ensure!(state == "SERVING", "{instance} is {state}");
            rows.insert(instance.to_owned(), (address.parse()?, pid.parse()?));
        }
        self.line_where("the ready line", |line| {
            line.starts_with("OmniMesh is running: 4 services, 5 instances SERVING")
        })
        .await?;
        Ok(rows)
    }
}

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

/// Processes (other than zombies) whose working directory is `dir`.
fn processes_in(dir: &Path) -> Vec<(i32, String)> {
    let dir = dir.canonicalize().unwrap();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) else {
            continue;
        };
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        if cwd == dir && !status.contains("State:\tZ") {
            let cmdline = std::fs::read_to_string(entry.path().join("cmdline")).unwrap_or_default();
            found.push((pid, cmdline.replace('\0', " ")));
        }
    }
    found
}

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
    let health = RuntimeClient::new(controller)
        .get_platform_health(pb::GetPlatformHealthRequest {})
        .await?
        .into_inner();
    let restarted = health
        .services
        .iter()
        .flat_map(|service| &service.instances)
        .find(|instance| instance.id == "core-engine-0")
        .context("core-engine-0 in the health report")?;
    assert_eq!(restarted.restarts, 1);
    assert_eq!(restarted.state(), pb::InstanceState::Serving);
    assert!(restarted.last_error.contains("SIGKILL"), "{restarted:?}");

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
