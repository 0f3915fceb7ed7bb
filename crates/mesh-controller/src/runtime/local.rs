//! The local runtime's configuration and `mesh-controller launch` (what `make run` runs).
//!
//! [`launch`] serves the controller in this process and runs the rest of the platform
//! as supervised processes through [`RuntimeHandle`]: it prints what happens, the status
//! table once every desired instance is `SERVING`, and on shutdown stops every child
//! (out of the registry first, then SIGTERM, then SIGKILL after
//! [`LocalRuntimeConfig::stop_timeout`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use omnimesh_common::config::{self, Sources};
use serde::{Deserialize, Serialize};

use super::desired::{self, DesiredState};
use super::logs::Rotation;
use super::policy::RestartPolicy;
use super::supervisor::{PlatformStatus, RuntimeHandle, RuntimeOptions, State};

/// `[mesh-controller.local_runtime]`: how the local runtime runs processes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalRuntimeConfig {
    /// Directory of the service binaries; by default the directory of the running
    /// `mesh-controller` binary (`target/release` under `make run`).
    #[serde(default)]
    pub bin_dir: Option<PathBuf>,
    /// Runtime data: logs go to `<data_dir>/logs/`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The desired-state file; default `<data_dir>/desired-state.toml`, written with
    /// the platform's defaults at the first launch.
    #[serde(default)]
    pub desired_state: Option<PathBuf>,
    /// How long the services get to report `SERVING` at start.
    #[serde(default = "default_ready_timeout", with = "humantime_serde")]
    pub ready_timeout: Duration,
    /// Time between SIGTERM and SIGKILL when stopping a service; longer than the
    /// services' drain timeout so that they can finish in-flight calls.
    #[serde(default = "default_stop_timeout", with = "humantime_serde")]
    pub stop_timeout: Duration,
    /// Time between removing an instance from the registry and stopping it.
    #[serde(default = "default_deregister_grace", with = "humantime_serde")]
    pub deregister_grace: Duration,
    /// First delay before restarting a service that died.
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub restart_backoff_initial: Duration,
    /// Longest delay before restarting a service that keeps dying.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub restart_backoff_max: Duration,
    /// This many exits within `crash_loop_window` make a crash loop.
    #[serde(default = "default_crash_loop_exits")]
    pub crash_loop_exits: usize,
    /// See `crash_loop_exits`.
    #[serde(default = "default_crash_loop_window", with = "humantime_serde")]
    pub crash_loop_window: Duration,
    /// A log file is rotated at this size.
    #[serde(default = "default_log_max_bytes")]
    pub log_max_bytes: u64,
    /// Rotated log files kept per instance.
    #[serde(default = "default_log_keep")]
    pub log_keep: u32,
}

impl Default for LocalRuntimeConfig {
    fn default() -> Self {
        Self {
            bin_dir: None,
            data_dir: default_data_dir(),
            desired_state: None,
            ready_timeout: default_ready_timeout(),
            stop_timeout: default_stop_timeout(),
            deregister_grace: default_deregister_grace(),
            restart_backoff_initial: default_backoff_initial(),
            restart_backoff_max: default_backoff_max(),
            crash_loop_exits: default_crash_loop_exits(),
            crash_loop_window: default_crash_loop_window(),
            log_max_bytes: default_log_max_bytes(),
            log_keep: default_log_keep(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(".omnimesh")
}
fn default_ready_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_stop_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_deregister_grace() -> Duration {
    Duration::from_secs(1)
}
fn default_backoff_initial() -> Duration {
    Duration::from_millis(250)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(30)
}
fn default_crash_loop_exits() -> usize {
    5
}
fn default_crash_loop_window() -> Duration {
    Duration::from_secs(60)
}
fn default_log_max_bytes() -> u64 {
    10 * 1024 * 1024
}
fn default_log_keep() -> u32 {
    3
}

/// How long a process must stay up before its restart back-off starts over.
const STABLE_AFTER: Duration = Duration::from_secs(30);

impl LocalRuntimeConfig {
    /// Checks the relations between the durations.
    ///
    /// # Errors
    /// The key (relative to the section) and the reason.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.restart_backoff_initial.is_zero() {
            return Err((
                "restart_backoff_initial",
                "must be greater than zero".into(),
            ));
        }
        if self.restart_backoff_max < self.restart_backoff_initial {
            return Err((
                "restart_backoff_max",
                "must not be shorter than restart_backoff_initial".into(),
            ));
        }
        if self.ready_timeout.is_zero() {
            return Err(("ready_timeout", "must be greater than zero".into()));
        }
        if self.crash_loop_exits < 2 {
            return Err(("crash_loop_exits", "must be at least 2".into()));
        }
        if self.log_max_bytes < 4096 {
            return Err(("log_max_bytes", "must be at least 4096".into()));
        }
        Ok(())
    }

    /// Where the logs go.
    pub fn log_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }

    /// Log rotation settings.
    pub fn rotation(&self) -> Rotation {
        Rotation {
            max_bytes: self.log_max_bytes,
            keep: self.log_keep,
        }
    }

    /// The runtime's options: binaries, desired state, pacing.
    ///
    /// # Errors
    /// When the binary directory cannot be found or an address cannot be read.
    pub fn runtime_options(&self, sources: &Sources) -> Result<RuntimeOptions, Error> {
        let bin_dir = match &self.bin_dir {
            Some(dir) => dir.clone(),
            None => std::env::current_exe()
                .map_err(|source| Error::Io {
                    what: "locating the running binary",
                    path: PathBuf::new(),
                    source,
                })?
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        };
        let defaults = DesiredState::defaults(sources)?;
        for spec in defaults.services.values() {
            let binary = bin_dir.join(&spec.binary);
            if !binary.is_file() {
                return Err(Error::MissingBinary { binary });
            }
        }
        Ok(RuntimeOptions {
            bin_dir,
            desired_path: self
                .desired_state
                .clone()
                .unwrap_or_else(|| self.data_dir.join("desired-state.toml")),
            defaults,
            config_file: sources
                .file()
                .map(|file| std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf())),
            policy: RestartPolicy {
                initial: self.restart_backoff_initial,
                max: self.restart_backoff_max,
                stable_after: STABLE_AFTER,
                crash_loop_exits: self.crash_loop_exits,
                crash_loop_window: self.crash_loop_window,
            },
            ready_timeout: self.ready_timeout,
            stop_timeout: self.stop_timeout,
            deregister_grace: self.deregister_grace,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            env: Vec::new(),
        })
    }
}

/// Why the platform could not be launched.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A service's address could not be read from the configuration.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// A service binary is missing.
    #[error("{binary} not found; build the workspace first (`cargo build --release`)")]
    MissingBinary {
        /// The expected path.
        binary: PathBuf,
    },
    /// The desired-state file is invalid.
    #[error("desired state: {0}")]
    Desired(#[from] desired::Invalid),
    /// A file or directory of the runtime could not be created or read.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Some services did not report `SERVING` in time.
    #[error("not SERVING after {timeout:?}: {services}; see their logs in {logs}")]
    NotReady {
        /// How long the launcher waited.
        timeout: Duration,
        /// The services that were not ready.
        services: String,
        /// The log directory.
        logs: String,
    },
}

/// Whether every desired instance is SERVING.
fn all_serving(status: &PlatformStatus) -> bool {
    status.values().all(|service| {
        service.instances.len() as u32 == service.desired
            && service
                .instances
                .values()
                .all(|instance| instance.state == State::Serving)
    })
}

/// Prints the runtime's notices and, once, the status table; returns when `shutdown`
/// resolves, or with [`Error::NotReady`] when the platform is not ready in time.
///
/// # Errors
/// [`Error::NotReady`].
pub async fn follow(
    runtime: &RuntimeHandle,
    config: &LocalRuntimeConfig,
    controller: SocketAddr,
    out: &mut (impl Write + Send),
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let mut notices = runtime.notices();
    let status = runtime.status();
    tokio::pin!(shutdown);
    let ready_deadline = tokio::time::sleep(config.ready_timeout);
    tokio::pin!(ready_deadline);
    let mut ready = false;
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = &mut ready_deadline, if !ready => {
                let current = status.borrow().clone();
                let services: Vec<String> = current
                    .values()
                    .flat_map(|service| service.instances.values())
                    .filter(|instance| instance.state != State::Serving)
                    .map(|instance| format!("{} ({})", instance.id, instance.state.to_string().to_lowercase()))
                    .collect();
                return Err(Error::NotReady {
                    timeout: config.ready_timeout,
                    services: services.join(", "),
                    logs: config.log_dir().display().to_string(),
                });
            }
            notice = notices.recv() => {
                if let Ok(notice) = notice {
                    let _ = writeln!(out, "{notice}");
                }
                // Every instance that becomes SERVING says so, after its state is
                // published: the table follows the last such line.
                let current = status.borrow().clone();
                if !ready && !current.is_empty() && all_serving(&current) {
                    ready = true;
                    print_ready(&current, controller, &config.log_dir(), out);
                }
            }
        }
    }
}

fn print_ready(
    status: &Arc<PlatformStatus>,
    controller: SocketAddr,
    log_dir: &Path,
    out: &mut impl Write,
) {
    let mut rows: BTreeMap<String, (String, String, String)> = BTreeMap::new();
    rows.insert(
        "mesh-controller".to_owned(),
        (
            controller.to_string(),
            "SERVING".to_owned(),
            std::process::id().to_string(),
        ),
    );
    for instance in status
        .values()
        .flat_map(|service| service.instances.values())
    {
        rows.insert(
            instance.id.clone(),
            (
                instance.address.to_string(),
                instance.state.to_string(),
                instance
                    .pid
                    .map_or_else(|| "-".to_owned(), |pid| pid.to_string()),
            ),
        );
    }
    let mut table = format!(
        "\n{:<22} {:<22} {:<12} {}\n",
        "INSTANCE", "ADDRESS", "STATE", "PID"
    );
    for (name, (address, state, pid)) in &rows {
        table.push_str(&format!("{name:<22} {address:<22} {state:<12} {pid}\n"));
    }
    let services = status.len() + 1;
    table.push_str(&format!(
        "\nOmniMesh is running: {services} services, {} instances SERVING\n",
        rows.len()
    ));
    if let Some(gateway) = status
        .get("proxy-gateway")
        .and_then(|s| s.instances.get(&0))
    {
        table.push_str(&format!(
            "  gateway         http://{}  (gRPC and HTTP entry point)\n\
             \x20 gateway admin   http://{}/metrics  (GatewayAdmin, health, reflection)\n",
            gateway.address, gateway.health_address
        ));
    }
    table.push_str(&format!(
        "  controller      {controller}  (Registry, Events, Runtime: grpcurl -plaintext {controller} list)\n\
         \x20 logs            {}\n\
         Press Ctrl-C to stop.\n",
        log_dir.display()
    ));
    let _ = write!(out, "{table}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_must_be_sensible() {
        let config = LocalRuntimeConfig {
            restart_backoff_max: Duration::from_millis(1),
            ..LocalRuntimeConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().0, "restart_backoff_max");
        let config = LocalRuntimeConfig {
            crash_loop_exits: 1,
            ..LocalRuntimeConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().0, "crash_loop_exits");
        assert_eq!(LocalRuntimeConfig::default().validate(), Ok(()));
    }

    #[test]
    fn missing_binaries_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let config = LocalRuntimeConfig {
            bin_dir: Some(dir.path().to_path_buf()),
            ..LocalRuntimeConfig::default()
        };
        let error = config.runtime_options(&Sources::new()).unwrap_err();
        assert!(error.to_string().contains("not found"), "{error}");
    }
}
