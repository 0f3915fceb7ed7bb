//! `Build`: compiles the workspace (or one service) with cargo, streams the output, and
//! records the result as a release event — git revision and the SHA-256 of each binary.
//! One build runs at a time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use ring::digest;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;
use tokio::sync::{Mutex, mpsc};

use crate::events::{EventStore, ExpectedVersion, NewEvent};
use crate::projections::{RELEASE_RECORDED, Release};

/// The stream of release events.
pub const STREAM: &str = "releases";
/// The binaries a workspace build produces.
pub const SERVICES: [&str; 4] = [
    "core-engine",
    "mesh-controller",
    "omniterm-interface",
    "proxy-gateway",
];

/// `[mesh-controller.build]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildConfig {
    /// The workspace to build (default: the working directory).
    #[serde(default = "default_workspace")]
    pub workspace_dir: PathBuf,
    /// The cargo binary.
    #[serde(default = "default_cargo")]
    pub cargo: PathBuf,
}

fn default_workspace() -> PathBuf {
    PathBuf::from(".")
}
fn default_cargo() -> PathBuf {
    PathBuf::from("cargo")
}

impl Default for BuildConfig {
    fn default() -> Self {
        Self {
            workspace_dir: default_workspace(),
            cargo: default_cargo(),
        }
    }
}

/// What a build reports while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A line of cargo's output.
    Line(String),
    /// Built and recorded.
    Finished(Release),
    /// Failed; nothing recorded as a release.
    Failed(String),
}

/// Why a build could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// Not one of the workspace's services.
    #[error("unknown service {0:?}; the workspace builds {services}", services = SERVICES.join(", "))]
    UnknownService(String),
    /// Another build is running.
    #[error("a build is already running")]
    Busy,
}

/// Runs builds, one at a time.
#[derive(Debug, Clone)]
pub struct Builder {
    config: BuildConfig,
    store: EventStore,
    running: Arc<Mutex<()>>,
}

impl Builder {
    /// Builds in `config.workspace_dir`, recording releases in `store`.
    pub fn new(config: BuildConfig, store: EventStore) -> Self {
        Self {
            config,
            store,
            running: Arc::new(Mutex::new(())),
        }
    }

    /// Starts a build of `service` (empty: the workspace) and returns its progress.
    ///
    /// # Errors
    /// An unknown service, or a build already running.
    pub fn start(
        &self,
        service: &str,
        release: bool,
        actor: &str,
    ) -> Result<mpsc::Receiver<Progress>, BuildError> {
        if !service.is_empty() && !SERVICES.contains(&service) {
            return Err(BuildError::UnknownService(service.to_owned()));
        }
        let guard = Arc::clone(&self.running)
            .try_lock_owned()
            .map_err(|_| BuildError::Busy)?;
        let (progress, receiver) = mpsc::channel(256);
        let builder = self.clone();
        let (service, actor) = (service.to_owned(), actor.to_owned());
        tokio::spawn(async move {
            let outcome = builder.run(&service, release, &actor, &progress).await;
            let last = match outcome {
                Ok(release) => Progress::Finished(release),
                Err(reason) => {
                    let event = NewEvent::json(
                        "release.build_failed",
                        &serde_json::json!({ "service": service, "reason": reason }),
                        &actor,
                    );
                    let _ = builder
                        .store
                        .append(STREAM, ExpectedVersion::Any, vec![event])
                        .await;
                    Progress::Failed(reason)
                }
            };
            let _ = progress.send(last).await;
            drop(guard);
        });
        Ok(receiver)
    }

    async fn run(
        &self,
        service: &str,
        release: bool,
        actor: &str,
        progress: &mpsc::Sender<Progress>,
    ) -> Result<Release, String> {
        let dir = &self.config.workspace_dir;
        let mut command = Command::new(&self.config.cargo);
        command.arg("build").current_dir(dir);
        if release {
            command.arg("--release");
        }
        if service.is_empty() {
            command.args(["--workspace", "--bins"]);
        } else {
            command.args(["--package", service, "--bin", service]);
        }
        command
            .env("CARGO_TERM_COLOR", "never")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|error| format!("starting {}: {error}", self.config.cargo.display()))?;
        let (lines, mut merged) = mpsc::channel::<String>(256);
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if lines.send(line).await.is_err() {
                        return;
                    }
                }
            });
        }
        drop(lines);
        while let Some(line) = merged.recv().await {
            // A client that went away does not stop the build.
            let _ = progress.send(Progress::Line(line)).await;
        }
        let status = child
            .wait()
            .await
            .map_err(|error| format!("waiting for cargo: {error}"))?;
        if !status.success() {
            return Err(format!(
                "cargo build failed: {}",
                super::supervisor::describe(Ok(status))
            ));
        }
        let profile = if release { "release" } else { "debug" };
        let target = target_dir(dir).join(profile);
        let names: Vec<&str> = if service.is_empty() {
            SERVICES.to_vec()
        } else {
            vec![service]
        };
        let mut binary_sha256 = BTreeMap::new();
        for name in names {
            let path = target.join(name);
            let hash = sha256_file(&path)
                .await
                .map_err(|error| format!("hashing {}: {error}", path.display()))?;
            binary_sha256.insert(name.to_owned(), hash);
        }
        let git_revision = git_revision(dir).await;
        let built_at_ms = omnimesh_common::time::now_ms();
        let scope = if service.is_empty() {
            "platform"
        } else {
            service
        };
        let short: String = git_revision.chars().take(12).collect();
        let record = Release {
            id: format!("{scope}-{short}-{built_at_ms}"),
            service: service.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            git_revision,
            binary_sha256,
            built_at_ms,
            profile: if release { "release" } else { "dev" }.to_owned(),
        };
        self.store
            .append(
                STREAM,
                ExpectedVersion::Any,
                vec![NewEvent::json(RELEASE_RECORDED, &record, actor)],
            )
            .await
            .map_err(|error| format!("recording the release: {error}"))?;
        Ok(record)
    }
}

/// `CARGO_TARGET_DIR`, else `<workspace>/target`.
fn target_dir(workspace: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map_or_else(|| workspace.join("target"), |dir| workspace.join(dir))
}

async fn sha256_file(path: &Path) -> std::io::Result<String> {
    use tokio::io::AsyncReadExt as _;
    let mut file = tokio::fs::File::open(path).await?;
    let mut context = digest::Context::new(&digest::SHA256);
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let read = file.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        context.update(&buffer[..read]);
    }
    Ok(hex::encode(context.finish()))
}

/// `git rev-parse HEAD` (with `-dirty` when the tree has changes), or `unknown`.
async fn git_revision(dir: &Path) -> String {
    let run = |args: &'static [&'static str]| {
        Command::new("git")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
    };
    let Ok(head) = run(&["rev-parse", "HEAD"]).await else {
        return "unknown".to_owned();
    };
    if !head.status.success() {
        return "unknown".to_owned();
    }
    let revision = String::from_utf8_lossy(&head.stdout).trim().to_owned();
    let dirty = run(&["status", "--porcelain", "--untracked-files=no"])
        .await
        .is_ok_and(|status| !status.stdout.is_empty());
    if dirty {
        format!("{revision}-dirty")
    } else {
        revision
    }
}
