//! The local runtime: the four services as supervised processes on 127.0.0.1.
//!
//! [`launch`] is what `make run` runs (`mesh-controller launch`): it resolves each
//! service's address from the same configuration the services read (a port of 0 gets
//! a free port), starts each binary in its own process group with its logs in
//! `<data_dir>/logs/<service>.log`, waits for `grpc.health.v1` to report `SERVING`,
//! prints a status table, restarts a service that dies (exponential back-off with
//! jitter, reset once it has run for a while), and on shutdown stops every child with
//! SIGTERM, then SIGKILL after [`LocalRuntimeConfig::stop_timeout`].
//!
//! Children get their own process group so that a Ctrl-C at the terminal reaches only
//! the launcher, which then stops them in order, instead of racing its own restarts.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder as _, ExponentialBuilder};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use omnimesh_common::config::{self, Sources};
use omnimesh_common::ports;
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long a child must stay up before its restart back-off starts over.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// How often a starting child's health is polled.
const HEALTH_POLL: Duration = Duration::from_millis(50);

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
    /// How long the services get to report `SERVING` at start.
    #[serde(default = "default_ready_timeout", with = "humantime_serde")]
    pub ready_timeout: Duration,
    /// Time between SIGTERM and SIGKILL when stopping a service; longer than the
    /// services' drain timeout so that they can finish in-flight calls.
    #[serde(default = "default_stop_timeout", with = "humantime_serde")]
    pub stop_timeout: Duration,
    /// First delay before restarting a service that died.
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub restart_backoff_initial: Duration,
    /// Longest delay before restarting a service that keeps dying.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub restart_backoff_max: Duration,
}

impl Default for LocalRuntimeConfig {
    fn default() -> Self {
        Self {
            bin_dir: None,
            data_dir: default_data_dir(),
            ready_timeout: default_ready_timeout(),
            stop_timeout: default_stop_timeout(),
            restart_backoff_initial: default_backoff_initial(),
            restart_backoff_max: default_backoff_max(),
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
fn default_backoff_initial() -> Duration {
    Duration::from_millis(250)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(30)
}

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
        Ok(())
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

/// One service the launcher runs.
#[derive(Debug, Clone)]
struct ServiceSpec {
    name: &'static str,
    binary: PathBuf,
    args: Vec<&'static str>,
    /// `OMNIMESH_<SERVICE>__LISTEN__<KEY>` for each resolved address, so that the child
    /// listens exactly where the launcher checks its health.
    env: Vec<(String, String)>,
    /// Where `grpc.health.v1` is served.
    health: SocketAddr,
    /// The address shown to people: where clients go.
    public: SocketAddr,
    log: PathBuf,
}

/// What a supervisor reports to the launcher.
#[derive(Debug)]
enum Event {
    Started {
        service: &'static str,
        pid: u32,
    },
    Serving {
        service: &'static str,
        pid: u32,
    },
    Exited {
        service: &'static str,
        pid: u32,
        status: String,
        restart_in: Duration,
    },
    SpawnFailed {
        service: &'static str,
        error: String,
        restart_in: Duration,
    },
    Stopped {
        service: &'static str,
        pid: u32,
        status: String,
    },
}

/// The state shown in the status table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Serving,
    BackingOff,
    Stopped,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            State::Starting => "STARTING",
            State::Serving => "SERVING",
            State::BackingOff => "BACKING_OFF",
            State::Stopped => "STOPPED",
        })
    }
}

#[derive(Debug)]
struct Row {
    address: SocketAddr,
    /// A separate admin address, where the service has one.
    admin: Option<SocketAddr>,
    state: State,
    pid: Option<u32>,
}

/// Starts the platform, supervises it until `shutdown` resolves, then stops it.
///
/// Progress and the status table are written to `out`.
///
/// # Errors
/// When a binary is missing, an address cannot be resolved, the log directory cannot
/// be created, or the services do not all report `SERVING` within
/// [`LocalRuntimeConfig::ready_timeout`] (the children are stopped first).
pub async fn launch(
    config: &LocalRuntimeConfig,
    sources: &Sources,
    own_grpc: SocketAddr,
    out: &mut (impl Write + Send),
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let bin_dir = match &config.bin_dir {
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
    let log_dir = config.data_dir.join("logs");
    std::fs::create_dir_all(&log_dir).map_err(|source| Error::Io {
        what: "creating",
        path: log_dir.clone(),
        source,
    })?;
    let specs = service_specs(sources, own_grpc, &bin_dir, &log_dir)?;
    let config_file = sources
        .file()
        .map(|file| std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf()));

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut supervisors = JoinSet::new();
    let mut rows = BTreeMap::new();
    for spec in specs {
        rows.insert(
            spec.name,
            Row {
                address: spec.public,
                admin: (spec.health != spec.public).then_some(spec.health),
                state: State::Starting,
                pid: None,
            },
        );
        supervisors.spawn(supervise(
            spec,
            config.clone(),
            config_file.clone(),
            events_tx.clone(),
            stop_rx.clone(),
        ));
    }
    drop(events_tx);
    let _ = writeln!(
        out,
        "starting {} services (logs in {})",
        rows.len(),
        log_dir.display()
    );

    tokio::pin!(shutdown);
    let ready_deadline = tokio::time::sleep(config.ready_timeout);
    tokio::pin!(ready_deadline);
    let mut ready = false;
    let outcome = loop {
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            () = &mut ready_deadline, if !ready => {
                let services: Vec<String> = rows
                    .iter()
                    .filter(|(_, row)| row.state != State::Serving)
                    .map(|(name, row)| format!("{name} ({})", row.state.to_string().to_lowercase()))
                    .collect();
                break Err(Error::NotReady {
                    timeout: config.ready_timeout,
                    services: services.join(", "),
                    logs: log_dir.display().to_string(),
                });
            }
            event = events.recv() => {
                let Some(event) = event else { break Ok(()) };
                apply(&mut rows, &event, out);
                if !ready && rows.values().all(|row| row.state == State::Serving) {
                    ready = true;
                    print_ready(&rows, &log_dir, out);
                }
            }
        }
    };

    let _ = writeln!(out, "stopping {} services", rows.len());
    let _ = stop_tx.send(true);
    // Report the stops as they happen; the supervisors end once their child is gone.
    while let Some(event) = events.recv().await {
        apply(&mut rows, &event, out);
    }
    while supervisors.join_next().await.is_some() {}
    let _ = writeln!(out, "all services stopped");
    outcome
}

/// The four services, their binaries, addresses and log files.
fn service_specs(
    sources: &Sources,
    own_grpc: SocketAddr,
    bin_dir: &Path,
    log_dir: &Path,
) -> Result<Vec<ServiceSpec>, Error> {
    let mut specs = Vec::new();
    let grpc_services = [
        ("core-engine", ports::CORE_ENGINE_GRPC, vec![]),
        ("mesh-controller", own_grpc, vec!["serve"]),
        ("omniterm-interface", ports::OMNITERM_INTERFACE_GRPC, vec![]),
    ];
    for (name, default, args) in grpc_services {
        let grpc = resolve(if name == "mesh-controller" {
            Ok(own_grpc)
        } else {
            config::peek(sources, name, "listen.grpc", default)
        }?)?;
        specs.push(spec(
            name,
            args,
            bin_dir,
            log_dir,
            &[("grpc", grpc)],
            grpc,
            grpc,
        )?);
    }
    let http = resolve(config::peek(
        sources,
        "proxy-gateway",
        "listen.http",
        ports::PROXY_GATEWAY_HTTP,
    )?)?;
    let admin = resolve(config::peek(
        sources,
        "proxy-gateway",
        "listen.admin",
        ports::PROXY_GATEWAY_ADMIN,
    )?)?;
    specs.push(spec(
        "proxy-gateway",
        vec![],
        bin_dir,
        log_dir,
        &[("http", http), ("admin", admin)],
        admin,
        http,
    )?);
    specs.sort_by_key(|spec| spec.name);
    Ok(specs)
}

fn spec(
    name: &'static str,
    args: Vec<&'static str>,
    bin_dir: &Path,
    log_dir: &Path,
    listen: &[(&str, SocketAddr)],
    health: SocketAddr,
    public: SocketAddr,
) -> Result<ServiceSpec, Error> {
    let binary = bin_dir.join(name);
    if !binary.is_file() {
        return Err(Error::MissingBinary { binary });
    }
    let prefix = format!(
        "OMNIMESH_{}__LISTEN__",
        name.replace('-', "_").to_ascii_uppercase()
    );
    Ok(ServiceSpec {
        name,
        binary,
        args,
        env: listen
            .iter()
            .map(|(key, addr)| {
                (
                    format!("{prefix}{}", key.to_ascii_uppercase()),
                    addr.to_string(),
                )
            })
            .collect(),
        health,
        public,
        log: log_dir.join(format!("{name}.log")),
    })
}

/// A configured port of 0 becomes a free port now, so that the launcher knows where to
/// check health (and, later, what to register).
fn resolve(addr: SocketAddr) -> Result<SocketAddr, Error> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    let ip = if addr.ip().is_unspecified() {
        Ipv4Addr::LOCALHOST.into()
    } else {
        addr.ip()
    };
    let listener = StdListener::bind((ip, 0)).map_err(|source| Error::Io {
        what: "finding a free port on",
        path: PathBuf::from(ip.to_string()),
        source,
    })?;
    listener.local_addr().map_err(|source| Error::Io {
        what: "reading the free port on",
        path: PathBuf::from(ip.to_string()),
        source,
    })
}

fn apply(rows: &mut BTreeMap<&'static str, Row>, event: &Event, out: &mut impl Write) {
    let (service, state, pid, line) = match event {
        Event::Started { service, pid } => (*service, State::Starting, Some(*pid), None),
        Event::Serving { service, pid } => (
            *service,
            State::Serving,
            Some(*pid),
            Some(format!("{service} SERVING (pid {pid})")),
        ),
        Event::Exited {
            service,
            pid,
            status,
            restart_in,
        } => (
            *service,
            State::BackingOff,
            None,
            Some(format!(
                "{service} (pid {pid}) exited: {status}; restarting in {}",
                humantime::format_duration(round_ms(*restart_in))
            )),
        ),
        Event::SpawnFailed {
            service,
            error,
            restart_in,
        } => (
            *service,
            State::BackingOff,
            None,
            Some(format!(
                "{service} failed to start: {error}; retrying in {}",
                humantime::format_duration(round_ms(*restart_in))
            )),
        ),
        Event::Stopped {
            service,
            pid,
            status,
        } => (
            *service,
            State::Stopped,
            None,
            Some(format!("{service} (pid {pid}) stopped: {status}")),
        ),
    };
    if let Some(row) = rows.get_mut(service) {
        row.state = state;
        row.pid = pid;
    }
    if let Some(line) = line {
        let _ = writeln!(out, "{line}");
    }
}

fn round_ms(duration: Duration) -> Duration {
    Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

fn print_ready(rows: &BTreeMap<&'static str, Row>, log_dir: &Path, out: &mut impl Write) {
    let mut table = format!(
        "\n{:<20} {:<22} {:<12} {}\n",
        "SERVICE", "ADDRESS", "STATE", "PID"
    );
    for (name, row) in rows {
        let pid = row
            .pid
            .map_or_else(|| "-".to_owned(), |pid| pid.to_string());
        table.push_str(&format!(
            "{name:<20} {:<22} {:<12} {pid}\n",
            row.address.to_string(),
            row.state
        ));
    }
    table.push_str(&format!(
        "\nOmniMesh is running: {} services SERVING\n",
        rows.len()
    ));
    if let Some(gateway) = rows.get("proxy-gateway") {
        table.push_str(&format!(
            "  gateway         http://{}  (gRPC and HTTP entry point)\n",
            gateway.address
        ));
        if let Some(admin) = gateway.admin {
            table.push_str(&format!(
                "  gateway admin   http://{admin}/metrics  (GatewayAdmin, health, reflection)\n"
            ));
        }
    }
    table.push_str(&format!(
        "  any service     grpcurl -plaintext <address> list   |   curl http://<address>/healthz\n\
         \x20 logs            {}\n\
         Press Ctrl-C to stop.\n",
        log_dir.display()
    ));
    let _ = write!(out, "{table}");
    let _ = out.flush();
}

/// Runs one service until `stop` turns true: start, watch, restart with back-off.
async fn supervise(
    spec: ServiceSpec,
    config: LocalRuntimeConfig,
    config_file: Option<PathBuf>,
    events: mpsc::UnboundedSender<Event>,
    mut stop: watch::Receiver<bool>,
) {
    let new_backoff = || {
        ExponentialBuilder::default()
            .with_min_delay(config.restart_backoff_initial)
            .with_max_delay(config.restart_backoff_max)
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut backoff = new_backoff();
    loop {
        let delay = match start(&spec, config_file.as_deref()) {
            Ok(mut child) => {
                let pid = child.id().unwrap_or_default();
                let started = Instant::now();
                let _ = events.send(Event::Started {
                    service: spec.name,
                    pid,
                });
                let mut reported_serving = false;
                let exit = loop {
                    tokio::select! {
                        status = child.wait() => break Some(status),
                        () = watch_health(spec.name, spec.health, pid, &events), if !reported_serving => {
                            reported_serving = true;
                        }
                        _ = stop.wait_for(|stop| *stop) => break None,
                    }
                };
                let Some(status) = exit else {
                    let status = terminate(&mut child, pid, config.stop_timeout).await;
                    let _ = events.send(Event::Stopped {
                        service: spec.name,
                        pid,
                        status,
                    });
                    return;
                };
                if started.elapsed() >= STABLE_AFTER {
                    backoff = new_backoff();
                }
                let delay = backoff.next().unwrap_or(config.restart_backoff_max);
                let _ = events.send(Event::Exited {
                    service: spec.name,
                    pid,
                    status: describe(status),
                    restart_in: delay,
                });
                delay
            }
            Err(error) => {
                let delay = backoff.next().unwrap_or(config.restart_backoff_max);
                let _ = events.send(Event::SpawnFailed {
                    service: spec.name,
                    error: error.to_string(),
                    restart_in: delay,
                });
                delay
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

fn start(spec: &ServiceSpec, config_file: Option<&Path>) -> std::io::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)?;
    let mut command = Command::new(&spec.binary);
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(key, value)| (key, value)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        // A last resort: if the launcher itself is dropped without stopping, the child
        // does not outlive it.
        .kill_on_drop(true);
    if let Some(file) = config_file {
        command.env(config::CONFIG_PATH_VAR, file);
    }
    command.spawn()
}

/// Resolves once the child reports `SERVING`; never resolves otherwise (the caller
/// races it against the child's exit).
async fn watch_health(
    service: &'static str,
    address: SocketAddr,
    pid: u32,
    events: &mpsc::UnboundedSender<Event>,
) {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("a socket address makes a valid URI")
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(1));
    loop {
        if let Ok(channel) = endpoint.connect().await {
            let mut client = HealthClient::new(channel);
            let check = client.check(HealthCheckRequest::default()).await;
            if check.is_ok_and(|response| response.into_inner().status() == ServingStatus::Serving)
            {
                let _ = events.send(Event::Serving { service, pid });
                return;
            }
        }
        tokio::time::sleep(HEALTH_POLL).await;
    }
}

/// SIGTERM, then SIGKILL after `timeout`; returns how the child ended.
async fn terminate(child: &mut Child, pid: u32, timeout: Duration) -> String {
    if let Ok(raw) = i32::try_from(pid)
        && raw > 0
    {
        let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
    }
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => describe(status),
        Err(_elapsed) => {
            let _ = child.kill().await;
            format!(
                "killed after {} (did not stop on SIGTERM)",
                humantime::format_duration(timeout)
            )
        }
    }
}

fn describe(status: std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => Signal::try_from(signal)
                .map_or_else(|_| format!("signal {signal}"), |s| format!("signal {s}")),
            (None, None) => status.to_string(),
        },
        Err(error) => format!("wait failed: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_keeps_fixed_ports_and_fills_zero() {
        let fixed: SocketAddr = "127.0.0.1:50051".parse().unwrap();
        assert_eq!(resolve(fixed).unwrap(), fixed);
        let free = resolve("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(free.port(), 0);
        assert_eq!(free.ip(), Ipv4Addr::LOCALHOST);
    }

    #[test]
    fn missing_binary_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let grpc = ports::CORE_ENGINE_GRPC;
        let error = spec(
            "core-engine",
            vec![],
            dir.path(),
            dir.path(),
            &[],
            grpc,
            grpc,
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("core-engine not found"),
            "{error}"
        );
    }

    #[test]
    fn spec_passes_resolved_addresses_as_environment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("proxy-gateway"), b"").unwrap();
        let http: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let admin: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let spec = spec(
            "proxy-gateway",
            vec![],
            dir.path(),
            dir.path(),
            &[("http", http), ("admin", admin)],
            admin,
            http,
        )
        .unwrap();
        assert_eq!(
            spec.env,
            [
                (
                    "OMNIMESH_PROXY_GATEWAY__LISTEN__HTTP".to_owned(),
                    "127.0.0.1:1".to_owned()
                ),
                (
                    "OMNIMESH_PROXY_GATEWAY__LISTEN__ADMIN".to_owned(),
                    "127.0.0.1:2".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn backoff_durations_must_be_ordered() {
        let config = LocalRuntimeConfig {
            restart_backoff_max: Duration::from_millis(1),
            ..LocalRuntimeConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().0, "restart_backoff_max");
        assert_eq!(LocalRuntimeConfig::default().validate(), Ok(()));
    }

    #[test]
    fn exit_statuses_read_well() {
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(describe(Ok(ExitStatus::from_raw(9))), "signal SIGKILL");
        assert_eq!(describe(Ok(ExitStatus::from_raw(3 << 8))), "exit code 3");
    }
}
