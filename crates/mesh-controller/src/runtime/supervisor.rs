//! The local runtime's adapters: one supervisor task per instance (spawn, capture logs,
//! wait for health, restart per [`RestartPolicy`], stop with SIGTERM then SIGKILL), and
//! the manager actor that reconciles them with the [`DesiredState`], registers serving
//! instances in the registry (and removes them *before* stopping them), records every
//! step as an event, and answers `Scale` and the platform health.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher as _, Hasher as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use omnimesh_common::config;
use omnimesh_common::time::now_ms;
use serde::Serialize;
use tokio::process::{Child, Command as Process};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::desired::{self, DesiredState, MAX_REPLICAS, ServiceSpec};
use super::logs::LogHub;
use super::policy::{AfterExit, ExitHistory, RestartPolicy, replica_plan};
use crate::events::{EventStore, ExpectedVersion, NewEvent};
use crate::registry::RegistryHandle;
use crate::registry::model::{Health, Registration};

/// The stream of the runtime's events.
pub const STREAM: &str = "runtime";
/// How often a starting instance's health is polled.
const HEALTH_POLL: Duration = Duration::from_millis(50);
/// How often the manager heartbeats registered instances and looks at the file.
const TICK: Duration = Duration::from_millis(500);

/// An instance's state, as the health API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    /// Started, not yet SERVING.
    Starting,
    /// SERVING and registered.
    Serving,
    /// Exited; restarting after a back-off.
    BackingOff,
    /// Exited too often too quickly; retried only at the slowest pace.
    CrashLoop,
    /// Being stopped (deregistered, then SIGTERM).
    Stopping,
    /// Stopped.
    Stopped,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            State::Starting => "STARTING",
            State::Serving => "SERVING",
            State::BackingOff => "BACKING_OFF",
            State::CrashLoop => "CRASH_LOOP",
            State::Stopping => "STOPPING",
            State::Stopped => "STOPPED",
        })
    }
}

/// One instance, as the health API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceStatus {
    /// `<service>-<index>`.
    pub id: String,
    /// Where clients go.
    pub address: SocketAddr,
    /// Where `grpc.health.v1` is served.
    pub health_address: SocketAddr,
    /// Its state.
    pub state: State,
    /// The running process.
    pub pid: Option<u32>,
    /// When the current process became SERVING (ms since the epoch).
    pub serving_since_ms: Option<i64>,
    /// Restarts so far.
    pub restarts: u32,
    /// How the last process ended, or why it failed to start.
    pub last_error: String,
    /// The release it runs.
    pub version: String,
}

/// One service, as the health API shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceStatus {
    /// The desired replica count.
    pub desired: u32,
    /// By replica index.
    pub instances: BTreeMap<u32, InstanceStatus>,
}

/// Every service the runtime runs.
pub type PlatformStatus = BTreeMap<String, ServiceStatus>;

/// How the runtime runs processes.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Where the binaries are.
    pub bin_dir: PathBuf,
    /// The desired-state file (written with `defaults` when missing).
    pub desired_path: PathBuf,
    /// The desired state when the file is missing.
    pub defaults: DesiredState,
    /// The configuration file the children read (`OMNIMESH_CONFIG`), if any.
    pub config_file: Option<PathBuf>,
    /// Restart pacing.
    pub policy: RestartPolicy,
    /// A start that is not SERVING within this is a failed start.
    pub ready_timeout: Duration,
    /// Between SIGTERM and SIGKILL.
    pub stop_timeout: Duration,
    /// Between removing an instance from the registry and stopping it, so that the
    /// gateway stops sending it requests first.
    pub deregister_grace: Duration,
    /// The version recorded for instances.
    pub version: String,
    /// Environment given to every instance (e.g. where the controller is).
    pub env: Vec<(String, String)>,
}

/// Why a scale request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScaleError {
    /// No such service in the desired state.
    #[error("unknown service {0:?}; the local runtime runs {1}")]
    UnknownService(String, String),
    /// The replica count is out of range.
    #[error("replicas: {0}")]
    Invalid(String),
    /// The desired state could not be saved or recorded; nothing changed.
    #[error("{0}")]
    Unavailable(String),
}

enum Command {
    Scale {
        service: String,
        replicas: i64,
        relative: bool,
        dry_run: bool,
        actor: String,
        reply: oneshot::Sender<Result<(u32, u32), ScaleError>>,
    },
    Stop {
        reply: oneshot::Sender<()>,
    },
}

/// What a supervisor tells the manager.
#[derive(Debug)]
enum Report {
    Started {
        id: String,
        pid: u32,
    },
    Serving {
        id: String,
        pid: u32,
    },
    Exited {
        id: String,
        pid: u32,
        status: String,
        after: AfterExit,
        restarts: u32,
    },
    SpawnFailed {
        id: String,
        error: String,
        after: AfterExit,
        restarts: u32,
    },
    Stopped {
        id: String,
        status: String,
    },
}

/// The local runtime, as its callers see it.
#[derive(Debug, Clone)]
pub struct RuntimeHandle {
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<Arc<PlatformStatus>>,
    notices: broadcast::Sender<String>,
    logs: Arc<LogHub>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl RuntimeHandle {
    /// Loads (or writes) the desired state and starts reconciling it.
    ///
    /// # Errors
    /// When the desired-state file exists but is invalid.
    pub async fn start(
        options: RuntimeOptions,
        store: EventStore,
        registry: RegistryHandle,
        logs: Arc<LogHub>,
    ) -> Result<Self, desired::Invalid> {
        let desired = if options.desired_path.exists() {
            DesiredState::read(&options.desired_path)?
        } else {
            options
                .defaults
                .write(&options.desired_path)
                .map_err(|error| desired::Invalid {
                    field: options.desired_path.display().to_string(),
                    reason: error.to_string(),
                })?;
            options.defaults.clone()
        };
        let (commands, queue) = mpsc::channel(64);
        let (status, status_rx) = watch::channel(Arc::new(PlatformStatus::new()));
        let (notices, _) = broadcast::channel(1024);
        let (reports, reported) = mpsc::unbounded_channel();
        let manager = Manager {
            desired_mtime: mtime(&options.desired_path),
            options,
            desired,
            store,
            registry,
            logs: Arc::clone(&logs),
            status,
            notices: notices.clone(),
            reports,
            instances: BTreeMap::new(),
            supervisors: JoinSet::new(),
        };
        tokio::spawn(manager.run(queue, reported));
        Ok(Self {
            commands,
            status: status_rx,
            notices,
            logs,
        })
    }

    /// Changes the replica count of `service` (absolute, or relative when `relative`).
    /// Returns (previous, new).
    ///
    /// # Errors
    /// An unknown service, an out-of-range count, or a state that cannot be saved.
    pub async fn scale(
        &self,
        service: &str,
        replicas: i64,
        relative: bool,
        dry_run: bool,
        actor: &str,
    ) -> Result<(u32, u32), ScaleError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Scale {
                service: service.to_owned(),
                replicas,
                relative,
                dry_run,
                actor: actor.to_owned(),
                reply,
            })
            .await
            .map_err(|_| ScaleError::Unavailable("the runtime is stopping".into()))?;
        answer
            .await
            .map_err(|_| ScaleError::Unavailable("the runtime is stopping".into()))?
    }

    /// Stops every instance (deregistered first) and returns when all have exited.
    pub async fn stop(&self) {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Stop { reply }).await.is_ok() {
            let _ = answer.await;
        }
    }

    /// The platform now and at every change.
    pub fn status(&self) -> watch::Receiver<Arc<PlatformStatus>> {
        self.status.clone()
    }

    /// Human-readable lines about what the runtime does (for `launch`'s output).
    pub fn notices(&self) -> broadcast::Receiver<String> {
        self.notices.subscribe()
    }

    /// The captured logs.
    pub fn logs(&self) -> &Arc<LogHub> {
        &self.logs
    }
}

struct Instance {
    service: String,
    index: u32,
    status: InstanceStatus,
    stop: watch::Sender<bool>,
    registered: bool,
}

struct Manager {
    options: RuntimeOptions,
    desired: DesiredState,
    desired_mtime: Option<SystemTime>,
    store: EventStore,
    registry: RegistryHandle,
    logs: Arc<LogHub>,
    status: watch::Sender<Arc<PlatformStatus>>,
    notices: broadcast::Sender<String>,
    reports: mpsc::UnboundedSender<Report>,
    instances: BTreeMap<String, Instance>,
    supervisors: JoinSet<()>,
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
}

fn instance_id(service: &str, index: u32) -> String {
    format!("{service}-{index}")
}

impl Manager {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut reports: mpsc::UnboundedReceiver<Report>,
    ) {
        self.reconcile().await;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stopped = loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Scale { service, replicas, relative, dry_run, actor, reply }) => {
                        let result = self.scale(&service, replicas, relative, dry_run, &actor).await;
                        let _ = reply.send(result);
                    }
                    Some(Command::Stop { reply }) => break Some(reply),
                    None => break None,
                },
                Some(report) = reports.recv() => self.on_report(report).await,
                _ = tick.tick() => self.on_tick().await,
            }
        };
        // Stop everything: out of the registry first, then SIGTERM to all at once.
        let ids: Vec<String> = self.instances.keys().cloned().collect();
        for id in &ids {
            self.deregister(id).await;
        }
        for instance in self.instances.values() {
            let _ = instance.stop.send(true);
        }
        drop(self.reports);
        while self.supervisors.join_next().await.is_some() {}
        while let Ok(report) = reports.try_recv() {
            if let Report::Stopped { id, status } = report {
                let _ = self.notices.send(format!("{id} stopped: {status}"));
            }
        }
        if let Some(reply) = stopped {
            let _ = reply.send(());
        }
    }

    /// Publishes the state, then tells people: whoever reads the notice and asks for
    /// the state sees what the notice says.
    fn notify(&self, line: String) {
        self.publish();
        let _ = self.notices.send(line);
    }

    fn publish(&self) {
        let mut platform = PlatformStatus::new();
        for (name, spec) in &self.desired.services {
            platform.entry(name.clone()).or_default().desired = spec.replicas;
        }
        for instance in self.instances.values() {
            platform
                .entry(instance.service.clone())
                .or_default()
                .instances
                .insert(instance.index, instance.status.clone());
        }
        self.status.send_replace(Arc::new(platform));
    }

    async fn record(&self, event_type: &str, data: serde_json::Value, actor: &str) {
        let event = NewEvent::json(event_type, &data, actor);
        if let Err(error) = self
            .store
            .append(STREAM, ExpectedVersion::Any, vec![event])
            .await
        {
            tracing::warn!(%error, event_type, "runtime event not stored");
        }
    }

    /// Starts missing replicas and stops extra ones, service by service.
    async fn reconcile(&mut self) {
        let mut wanted: BTreeMap<String, u32> = self
            .desired
            .services
            .iter()
            .map(|(name, spec)| (name.clone(), spec.replicas))
            .collect();
        for instance in self.instances.values() {
            wanted.entry(instance.service.clone()).or_insert(0);
        }
        for (service, replicas) in wanted {
            let running: Vec<u32> = self
                .instances
                .values()
                .filter(|i| i.service == service && i.status.state != State::Stopping)
                .map(|i| i.index)
                .collect();
            let (start, stop) = replica_plan(replicas, &running);
            for index in start {
                if let Some(spec) = self.desired.services.get(&service).cloned() {
                    self.start_instance(&service, index, &spec);
                }
            }
            for index in stop {
                self.stop_instance(&instance_id(&service, index)).await;
            }
        }
        self.publish();
    }

    fn start_instance(&mut self, service: &str, index: u32, spec: &ServiceSpec) {
        let id = instance_id(service, index);
        if self.instances.contains_key(&id) {
            // Its predecessor is still stopping; a later tick starts it.
            return;
        }
        let ports = match resolve_ports(spec, index) {
            Ok(ports) => ports,
            Err(error) => {
                let _ = self.notices.send(format!("{id} cannot start: {error}"));
                return;
            }
        };
        let address = ports[&spec.register];
        let health_address = ports[&spec.health];
        let binary = if Path::new(&spec.binary).is_absolute() {
            PathBuf::from(&spec.binary)
        } else {
            self.options.bin_dir.join(&spec.binary)
        };
        let prefix = format!(
            "OMNIMESH_{}__LISTEN__",
            service.replace('-', "_").to_ascii_uppercase()
        );
        let mut env: Vec<(String, String)> = ports
            .iter()
            .map(|(key, addr)| {
                (
                    format!("{prefix}{}", key.to_ascii_uppercase()),
                    addr.to_string(),
                )
            })
            .collect();
        env.extend(self.options.env.iter().cloned());
        env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(file) = &self.options.config_file {
            env.push((
                config::CONFIG_PATH_VAR.to_owned(),
                file.display().to_string(),
            ));
        }
        let (stop, stop_rx) = watch::channel(false);
        let plan = Plan {
            service: service.to_owned(),
            id: id.clone(),
            binary,
            args: spec.args.clone(),
            env,
            health: health_address,
            policy: self.options.policy,
            ready_timeout: self.options.ready_timeout,
            stop_timeout: self.options.stop_timeout,
        };
        self.supervisors.spawn(supervise(
            plan,
            Arc::clone(&self.logs),
            self.reports.clone(),
            stop_rx,
        ));
        self.instances.insert(
            id.clone(),
            Instance {
                service: service.to_owned(),
                index,
                stop,
                registered: false,
                status: InstanceStatus {
                    id,
                    address,
                    health_address,
                    state: State::Starting,
                    pid: None,
                    serving_since_ms: None,
                    restarts: 0,
                    last_error: String::new(),
                    version: self.options.version.clone(),
                },
            },
        );
    }

    /// Out of the registry, a grace period for the gateway to notice, then SIGTERM.
    async fn stop_instance(&mut self, id: &str) {
        let was_registered = self.instances.get(id).is_some_and(|i| i.registered);
        self.deregister(id).await;
        let Some(instance) = self.instances.get_mut(id) else {
            return;
        };
        instance.status.state = State::Stopping;
        let stop = instance.stop.clone();
        let grace = if was_registered {
            self.options.deregister_grace
        } else {
            Duration::ZERO
        };
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let _ = stop.send(true);
        });
    }

    async fn deregister(&mut self, id: &str) {
        let Some(instance) = self.instances.get_mut(id) else {
            return;
        };
        if !instance.registered {
            return;
        }
        instance.registered = false;
        if let Err(error) = self.registry.deregister(id, "local-runtime").await {
            tracing::debug!(%error, id, "deregistration");
        }
    }

    async fn on_report(&mut self, report: Report) {
        match report {
            Report::Started { id, pid } => {
                if let Some(instance) = self.instances.get_mut(&id) {
                    instance.status.pid = Some(pid);
                    if instance.status.state != State::Stopping {
                        instance.status.state = State::Starting;
                    }
                }
                self.record(
                    "runtime.instance_started",
                    serde_json::json!({ "instance": id, "pid": pid }),
                    "local-runtime",
                )
                .await;
            }
            Report::Serving { id, pid } => {
                let Some(instance) = self.instances.get_mut(&id) else {
                    return;
                };
                if instance.status.state == State::Stopping {
                    return;
                }
                instance.status.state = State::Serving;
                instance.status.serving_since_ms = Some(now_ms());
                let registration = Registration {
                    id: id.clone(),
                    service: instance.service.clone(),
                    address: instance.status.address.to_string(),
                    version: instance.status.version.clone(),
                    subset: "stable".to_owned(),
                    weight: 100,
                    health: Health::Serving,
                    labels: BTreeMap::from([("runtime".to_owned(), "local".to_owned())]),
                    ttl_ms: 0,
                };
                match self.registry.register(registration, "local-runtime").await {
                    Ok(_) => {
                        if let Some(instance) = self.instances.get_mut(&id) {
                            instance.registered = true;
                        }
                    }
                    Err(error) => tracing::warn!(%error, id, "registration failed"),
                }
                self.notify(format!("{id} SERVING (pid {pid})"));
                self.record(
                    "runtime.instance_serving",
                    serde_json::json!({ "instance": id, "pid": pid }),
                    "local-runtime",
                )
                .await;
            }
            Report::Exited {
                id,
                pid,
                status,
                after,
                restarts,
            } => {
                self.deregister(&id).await;
                let Some(instance) = self.instances.get_mut(&id) else {
                    return;
                };
                instance.status.pid = None;
                instance.status.serving_since_ms = None;
                instance.status.restarts = restarts;
                instance.status.last_error = format!("exited: {status}");
                let (state, word) = match after {
                    AfterExit::RestartIn(_) => (State::BackingOff, "restarting"),
                    AfterExit::CrashLoop { .. } => (State::CrashLoop, "crash loop; next try"),
                };
                if instance.status.state != State::Stopping {
                    instance.status.state = state;
                }
                self.notify(format!(
                    "{id} (pid {pid}) exited: {status}; {word} in {}",
                    humantime::format_duration(round_ms(after.delay()))
                ));
                let kind = if state == State::CrashLoop {
                    "runtime.crash_loop"
                } else {
                    "runtime.instance_exited"
                };
                self.record(kind, serde_json::json!({ "instance": id, "pid": pid, "status": status, "restarts": restarts }), "local-runtime").await;
            }
            Report::SpawnFailed {
                id,
                error,
                after,
                restarts,
            } => {
                if let Some(instance) = self.instances.get_mut(&id) {
                    instance.status.restarts = restarts;
                    instance.status.last_error = format!("failed to start: {error}");
                    if instance.status.state != State::Stopping {
                        instance.status.state = match after {
                            AfterExit::RestartIn(_) => State::BackingOff,
                            AfterExit::CrashLoop { .. } => State::CrashLoop,
                        };
                    }
                }
                self.notify(format!(
                    "{id} failed to start: {error}; retrying in {}",
                    humantime::format_duration(round_ms(after.delay()))
                ));
            }
            Report::Stopped { id, status } => {
                self.instances.remove(&id);
                self.notify(format!("{id} stopped: {status}"));
                self.record(
                    "runtime.instance_stopped",
                    serde_json::json!({ "instance": id, "status": status }),
                    "local-runtime",
                )
                .await;
                // A replica of the same index may be waiting for this one to go.
                self.reconcile().await;
            }
        }
        self.publish();
    }

    async fn on_tick(&mut self) {
        let registered: Vec<String> = self
            .instances
            .iter()
            .filter(|(_, instance)| instance.registered)
            .map(|(id, _)| id.clone())
            .collect();
        for id in registered {
            if self.registry.heartbeat(&id).await.is_err() {
                // Expired (the controller was busy): register again on the next SERVING.
                if let Some(instance) = self.instances.get_mut(&id) {
                    instance.registered = false;
                }
            }
        }
        let modified = mtime(&self.options.desired_path);
        if modified.is_some() && modified != self.desired_mtime {
            self.desired_mtime = modified;
            match DesiredState::read(&self.options.desired_path) {
                Ok(desired) if desired != self.desired => {
                    let _ = self
                        .notices
                        .send("desired state changed; reconciling".to_owned());
                    self.desired = desired;
                    self.record(
                        "runtime.desired_state_changed",
                        serde_json::json!({ "source": "file" }),
                        "local-runtime",
                    )
                    .await;
                    self.reconcile().await;
                }
                Ok(_) => {}
                Err(error) => {
                    let _ = self.notices.send(format!(
                        "desired state refused, keeping the running one: {error}"
                    ));
                    self.record(
                        "runtime.desired_state_refused",
                        serde_json::json!({ "error": error.to_string() }),
                        "local-runtime",
                    )
                    .await;
                }
            }
        }
    }

    async fn scale(
        &mut self,
        service: &str,
        replicas: i64,
        relative: bool,
        dry_run: bool,
        actor: &str,
    ) -> Result<(u32, u32), ScaleError> {
        let Some(spec) = self.desired.services.get(service) else {
            let known: Vec<&str> = self.desired.services.keys().map(String::as_str).collect();
            return Err(ScaleError::UnknownService(
                service.to_owned(),
                known.join(", "),
            ));
        };
        let previous = spec.replicas;
        let target = if relative {
            i64::from(previous).saturating_add(replicas)
        } else {
            replicas
        };
        let Ok(target) = u32::try_from(target) else {
            return Err(ScaleError::Invalid(format!(
                "{target} is out of range (0 to {MAX_REPLICAS})"
            )));
        };
        if target > MAX_REPLICAS {
            return Err(ScaleError::Invalid(format!(
                "{target} is out of range (0 to {MAX_REPLICAS})"
            )));
        }
        if dry_run || target == previous {
            return Ok((previous, target));
        }
        let mut desired = self.desired.clone();
        if let Some(spec) = desired.services.get_mut(service) {
            spec.replicas = target;
        }
        desired.write(&self.options.desired_path).map_err(|error| {
            ScaleError::Unavailable(format!("saving the desired state: {error}"))
        })?;
        self.desired_mtime = mtime(&self.options.desired_path);
        self.desired = desired;
        self.record(
            "runtime.scaled",
            serde_json::json!({ "service": service, "from": previous, "to": target }),
            actor,
        )
        .await;
        let _ = self.notices.send(format!(
            "{service} scaled from {previous} to {target} by {actor}"
        ));
        self.reconcile().await;
        Ok((previous, target))
    }
}

/// Listen addresses of replica `index`: the spec's for replica 0 (port 0 → a free port),
/// free ports on the same host for the others.
fn resolve_ports(spec: &ServiceSpec, index: u32) -> std::io::Result<BTreeMap<String, SocketAddr>> {
    spec.ports
        .iter()
        .map(|(key, addr)| {
            let addr = if index == 0 {
                *addr
            } else {
                SocketAddr::new(addr.ip(), 0)
            };
            Ok((key.clone(), resolve(addr)?))
        })
        .collect()
}

/// Ports [`resolve`] has handed out in this process. A free port is found by binding port
/// 0 and closing the socket, so until the child binds it the kernel may offer the same
/// port again: to another instance, whose bind then fails (seen: an engine replica and
/// the gateway's admin port on one port). No port is handed out twice.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A port of 0 becomes a free port now, so that the runtime knows where to check health
/// and what to register; never one handed out before.
pub(crate) fn resolve(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    let ip = if addr.ip().is_unspecified() {
        Ipv4Addr::LOCALHOST.into()
    } else {
        addr.ip()
    };
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    for _ in 0..256 {
        let free = StdListener::bind((ip, 0))?.local_addr()?;
        if handed_out.insert(free.port()) {
            return Ok(free);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "every free port offered was handed out already",
    ))
}

fn round_ms(duration: Duration) -> Duration {
    Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// Everything a supervisor needs to run one instance.
struct Plan {
    service: String,
    id: String,
    binary: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    health: SocketAddr,
    policy: RestartPolicy,
    ready_timeout: Duration,
    stop_timeout: Duration,
}

fn jitter() -> f64 {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (random >> 11) as f64 / (1u64 << 53) as f64
}

/// Runs one instance until `stop` turns true: start, wait for health, restart.
async fn supervise(
    plan: Plan,
    logs: Arc<LogHub>,
    reports: mpsc::UnboundedSender<Report>,
    mut stop: watch::Receiver<bool>,
) {
    let mut history = ExitHistory::default();
    let started_at = Instant::now();
    loop {
        let after = match spawn(&plan, &logs) {
            Ok(mut child) => {
                let pid = child.id().unwrap_or_default();
                let started = Instant::now();
                let _ = reports.send(Report::Started {
                    id: plan.id.clone(),
                    pid,
                });
                let mut serving = false;
                let ready = tokio::time::sleep(plan.ready_timeout);
                tokio::pin!(ready);
                let exit = loop {
                    tokio::select! {
                        status = child.wait() => break Some(describe(status)),
                        () = wait_serving(plan.health), if !serving => {
                            serving = true;
                            let _ = reports.send(Report::Serving { id: plan.id.clone(), pid });
                        }
                        () = &mut ready, if !serving => {
                            let status = terminate(&mut child, pid, plan.stop_timeout).await;
                            break Some(format!("not SERVING within {}; {status}", humantime::format_duration(plan.ready_timeout)));
                        }
                        () = stopped(&mut stop) => break None,
                    }
                };
                let Some(status) = exit else {
                    let status = terminate(&mut child, pid, plan.stop_timeout).await;
                    let _ = reports.send(Report::Stopped {
                        id: plan.id.clone(),
                        status,
                    });
                    return;
                };
                let now = u64::try_from(started_at.elapsed().as_millis()).unwrap_or(u64::MAX);
                let after = plan
                    .policy
                    .after_exit(&mut history, now, started.elapsed(), jitter());
                let _ = reports.send(Report::Exited {
                    id: plan.id.clone(),
                    pid,
                    status,
                    after,
                    restarts: history.restarts,
                });
                after
            }
            Err(error) => {
                let now = u64::try_from(started_at.elapsed().as_millis()).unwrap_or(u64::MAX);
                let after = plan
                    .policy
                    .after_exit(&mut history, now, Duration::ZERO, jitter());
                let _ = reports.send(Report::SpawnFailed {
                    id: plan.id.clone(),
                    error: error.to_string(),
                    after,
                    restarts: history.restarts,
                });
                after
            }
        };
        tokio::select! {
            () = tokio::time::sleep(after.delay()) => {}
            () = stopped(&mut stop) => {
                let _ = reports.send(Report::Stopped { id: plan.id.clone(), status: "not running".into() });
                return;
            }
        }
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

fn spawn(plan: &Plan, logs: &Arc<LogHub>) -> std::io::Result<Child> {
    let mut command = Process::new(&plan.binary);
    command
        .args(&plan.args)
        .envs(plan.env.iter().map(|(key, value)| (key, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a Ctrl-C at the terminal reaches only the runtime,
        // which then stops the children in order.
        .process_group(0)
        // A last resort: a child never outlives a runtime that is dropped.
        .kill_on_drop(true);
    let mut child = command.spawn()?;
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(Arc::clone(logs).capture(plan.service.clone(), plan.id.clone(), stdout));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(Arc::clone(logs).capture(plan.service.clone(), plan.id.clone(), stderr));
    }
    Ok(child)
}

/// Resolves once the instance reports `SERVING`; never otherwise (the caller races it
/// against the process's exit and the ready timeout).
async fn wait_serving(address: SocketAddr) {
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
                return;
            }
        }
        tokio::time::sleep(HEALTH_POLL).await;
    }
}

/// SIGTERM, then SIGKILL after `timeout`; returns how the process ended.
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

pub(crate) fn describe(status: std::io::Result<ExitStatus>) -> String {
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
    fn free_ports_are_never_handed_out_twice() {
        // 2,000 binds to port 0 over the ~28,000 ephemeral ports repeat a port dozens of
        // times (the birthday bound); none may be handed out twice.
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let mut seen = BTreeSet::new();
        for _ in 0..2000 {
            let port = resolve(any).expect("a free port").port();
            assert_ne!(port, 0);
            assert!(seen.insert(port), "port {port} handed out twice");
        }
        let fixed = SocketAddr::from((Ipv4Addr::LOCALHOST, 8080));
        assert_eq!(resolve(fixed).expect("as given"), fixed);
    }
}
