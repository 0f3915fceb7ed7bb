//! End-to-end tests of the OmniMesh binaries live in `tests/`; this library holds what
//! they share: finding the binaries and driving `mesh-controller launch`.
//!
//! They run the binaries cargo built next to the test executable (`target/<profile>/`),
//! so `cargo build --workspace --bins` must run first: `make test` does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use nix::sys::signal::kill;
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// The four services.
pub const SERVICES: [&str; 4] = [
    "core-engine",
    "mesh-controller",
    "omniterm-interface",
    "proxy-gateway",
];
/// Cold debug binaries on a busy 2-core machine: generous, but bounded.
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// The directory holding the workspace binaries (`target/<profile>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    // target/<profile>/deps/<test binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

/// A workspace binary, which must have been built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (`make test` does)",
        path.display()
    );
    path
}

/// A launcher started in a temporary directory with every port 0 (free ports).
/// A running `mesh-controller launch` and what it printed so far.
pub struct Launcher {
    pub child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    pub seen: Vec<String>,
    pub dir: tempfile::TempDir,
}

impl Launcher {
    /// Starts `mesh-controller launch` with every port 0 and `extra_config` appended.
    pub fn start(extra_config: &str) -> Self {
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
    pub async fn line_where(
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

    /// A token from `mesh-controller token`, run where the launcher runs (so it signs
    /// with the platform's local key).
    pub async fn token(&self, role: &str) -> String {
        let output = Command::new(binary("mesh-controller"))
            .args(["token", "--subject", "e2e", "--role", role])
            .current_dir(self.dir.path())
            .env("OMNIMESH_CONFIG", self.dir.path().join("omnimesh.toml"))
            .output()
            .await
            .expect("mesh-controller token runs");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    /// Waits for the status table and returns instance → (address, pid).
    pub async fn ready_table(&mut self) -> anyhow::Result<BTreeMap<String, (SocketAddr, i32)>> {
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

/// Whether a process exists.
pub fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

/// Processes (other than zombies) whose working directory is `dir`.
pub fn processes_in(dir: &Path) -> Vec<(i32, String)> {
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

/// A free loopback port (bound and released: good enough for tests that need to start a
/// process on a known address, and again on the same one).
pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
}

/// `mesh-controller serve` in `dir` on `addr` with its events in `database_url`.
pub fn serve_controller(dir: &Path, addr: SocketAddr, database_url: &str) -> Child {
    Command::new(binary("mesh-controller"))
        .arg("serve")
        .current_dir(dir)
        .env("OMNIMESH_MESH_CONTROLLER__LISTEN__GRPC", addr.to_string())
        .env(
            "OMNIMESH_MESH_CONTROLLER__EVENTS__DATABASE_URL",
            database_url,
        )
        .env("OMNIMESH_MESH_CONTROLLER__EVENTS__POLL_INTERVAL", "100ms")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("mesh-controller starts")
}

/// Waits until the controller behind `channel` answers (a process starting: nothing
/// announces it, so this polls).
pub async fn wait_serving(channel: &tonic::transport::Channel) {
    use omnimesh_proto::controller::v1::ReadAllRequest;
    use omnimesh_proto::controller::v1::events_client::EventsClient;
    omnimesh_test_support::eventually(Duration::from_secs(60), "the controller to answer", || {
        let mut client = EventsClient::new(channel.clone());
        async move { client.read_all(ReadAllRequest::default()).await.ok() }
    })
    .await
    .expect("the controller answers");
}

/// An operator token signed with the key of the controller that runs in `dir`.
pub fn operator_token(dir: &Path) -> String {
    let config = omnimesh_common::auth::AuthConfig {
        hs256_key_file: dir.join(".omnimesh/jwt-hs256.key"),
        ..Default::default()
    };
    omnimesh_common::auth::Issuer::load(&config)
        .expect("the controller's key")
        .issue(
            "e2e",
            omnimesh_common::auth::Role::Operator,
            Duration::from_secs(600),
        )
}
