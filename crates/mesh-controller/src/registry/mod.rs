//! The service registry: instances register, heartbeat and are watched.
//!
//! [`model`] is the sans-IO core (decisions and the fold). This module is the adapter
//! around it: one actor task owns the state, stores every change as an event in the
//! `registry` stream *before* applying it, publishes the new state to watchers
//! (`tokio::sync::watch`), expires silent instances, and runs one active health check
//! task per instance (`grpc.health.v1`, counted against the thresholds). On start the
//! state is rebuilt from the latest snapshot of the `registry` stream plus the events
//! after it; a snapshot is written every `snapshot_every` changes.
//!
//! A change's revision is its event's global position, so revisions survive restarts
//! and a watcher can resume with the last revision it saw.

pub mod model;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use omnimesh_common::time::now_ms;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::events::{AppendError, EventStore, ExpectedVersion, NewEvent};
use model::{Change, Instance, Registration, Registry, RegistryError, Rules};

/// The stream that holds every registry change.
pub const STREAM: &str = "registry";

/// `[mesh-controller.registry]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// TTL of an instance that names none.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Longest TTL an instance may ask for.
    #[serde(default = "max_ttl", with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Time between active health checks of one instance.
    #[serde(default = "check_interval", with = "humantime_serde")]
    pub check_interval: Duration,
    /// A check that takes longer fails.
    #[serde(default = "check_timeout", with = "humantime_serde")]
    pub check_timeout: Duration,
    /// Consecutive passed checks before an instance is SERVING.
    #[serde(default = "healthy_threshold")]
    pub healthy_threshold: u32,
    /// Consecutive failed checks before an instance is NOT_SERVING.
    #[serde(default = "unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// Most services.
    #[serde(default = "max_services")]
    pub max_services: usize,
    /// Most instances per service.
    #[serde(default = "max_services")]
    pub max_instances_per_service: usize,
    /// A snapshot of the registry is stored after this many changes.
    #[serde(default = "snapshot_every")]
    pub snapshot_every: u64,
}

fn default_ttl() -> Duration {
    Duration::from_secs(15)
}
fn max_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn check_interval() -> Duration {
    Duration::from_secs(2)
}
fn check_timeout() -> Duration {
    Duration::from_secs(1)
}
fn healthy_threshold() -> u32 {
    2
}
fn unhealthy_threshold() -> u32 {
    3
}
fn max_services() -> usize {
    256
}
fn snapshot_every() -> u64 {
    500
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            default_ttl: default_ttl(),
            max_ttl: max_ttl(),
            check_interval: check_interval(),
            check_timeout: check_timeout(),
            healthy_threshold: healthy_threshold(),
            unhealthy_threshold: unhealthy_threshold(),
            max_services: max_services(),
            max_instances_per_service: max_services(),
            snapshot_every: snapshot_every(),
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl RegistryConfig {
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.default_ttl.is_zero() || self.default_ttl > self.max_ttl {
            return Err(("default_ttl", "must be positive and at most max_ttl".into()));
        }
        if self.check_interval.is_zero() || self.check_timeout.is_zero() {
            return Err(("check_interval", "intervals must be positive".into()));
        }
        if self.healthy_threshold == 0 || self.unhealthy_threshold == 0 {
            return Err(("healthy_threshold", "thresholds must be at least 1".into()));
        }
        if self.snapshot_every == 0 {
            return Err(("snapshot_every", "must be at least 1".into()));
        }
        Ok(())
    }

    fn rules(&self) -> Rules {
        Rules {
            default_ttl_ms: millis(self.default_ttl),
            max_ttl_ms: millis(self.max_ttl),
            healthy_threshold: self.healthy_threshold,
            unhealthy_threshold: self.unhealthy_threshold,
            max_services: self.max_services,
            max_instances_per_service: self.max_instances_per_service,
        }
    }
}

/// Why a registry call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The registry refused the input.
    #[error(transparent)]
    Refused(#[from] RegistryError),
    /// The change could not be stored; nothing changed.
    #[error("the event store is unavailable")]
    Unavailable,
}

enum Command {
    Register {
        registration: Registration,
        actor: String,
        reply: oneshot::Sender<Result<Instance, CallError>>,
    },
    Heartbeat {
        id: String,
        reply: oneshot::Sender<Result<i64, CallError>>,
    },
    Deregister {
        id: String,
        actor: String,
        reply: oneshot::Sender<Result<(), CallError>>,
    },
}

/// The registry, as its callers see it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RegistryHandle {
    commands: mpsc::Sender<Command>,
    view: watch::Receiver<Arc<Registry>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl RegistryHandle {
    /// Rebuilds the registry from the event store and starts its actor.
    ///
    /// # Errors
    /// When the log cannot be read or holds a change this version cannot parse.
    pub async fn start(store: EventStore, config: RegistryConfig) -> Result<Self, AppendError> {
        let (state, version) = rebuild(&store).await?;
        let (view, receiver) = watch::channel(Arc::new(state.clone()));
        let (commands, queue) = mpsc::channel(256);
        let (observations, observed) = mpsc::channel(256);
        let mut actor = Actor {
            rules: config.rules(),
            state,
            store,
            view,
            checks: HashMap::new(),
            observations,
            config,
            since_snapshot: 0,
            stream_version: version,
        };
        let ids: Vec<(String, String)> = actor
            .state
            .services
            .values()
            .flat_map(|entry| entry.instances.values())
            .map(|instance| (instance.id.clone(), instance.address.clone()))
            .collect();
        for (id, address) in ids {
            actor.start_check(&id, &address);
        }
        tokio::spawn(actor.run(queue, observed));
        Ok(Self {
            commands,
            view: receiver,
        })
    }

    async fn call<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, CallError>>) -> Command,
    ) -> Result<T, CallError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| CallError::Unavailable)?;
        answer.await.map_err(|_| CallError::Unavailable)?
    }

    /// Registers (or re-registers) an instance, by `actor`.
    ///
    /// # Errors
    /// A malformed registration, a full registry, or an unavailable store.
    pub async fn register(
        &self,
        registration: Registration,
        actor: &str,
    ) -> Result<Instance, CallError> {
        let actor = actor.to_owned();
        self.call(|reply| Command::Register {
            registration,
            actor,
            reply,
        })
        .await
    }

    /// Keeps an instance alive; returns when it expires (ms since the epoch).
    ///
    /// # Errors
    /// When the instance is not registered.
    pub async fn heartbeat(&self, id: &str) -> Result<i64, CallError> {
        let id = id.to_owned();
        self.call(|reply| Command::Heartbeat { id, reply }).await
    }

    /// Removes an instance, by `actor`.
    ///
    /// # Errors
    /// When the instance is not registered, or the store is unavailable.
    pub async fn deregister(&self, id: &str, actor: &str) -> Result<(), CallError> {
        let (id, actor) = (id.to_owned(), actor.to_owned());
        self.call(|reply| Command::Deregister { id, actor, reply })
            .await
    }

    /// The current state.
    pub fn current(&self) -> Arc<Registry> {
        Arc::clone(&self.view.borrow())
    }

    /// The state now and at every change.
    pub fn changes(&self) -> watch::Receiver<Arc<Registry>> {
        self.view.clone()
    }
}

async fn rebuild(store: &EventStore) -> Result<(Registry, u64), AppendError> {
    let corrupt = |what: &str, error: serde_json::Error| {
        tracing::error!(%error, what, "the registry log holds what this version cannot read");
        AppendError::Unavailable
    };
    let (mut state, mut version) = match store.load_snapshot(STREAM).await? {
        Some(snapshot) => (
            serde_json::from_str::<Registry>(&snapshot.data)
                .map_err(|error| corrupt("snapshot", error))?,
            snapshot.stream_version,
        ),
        None => (Registry::default(), 0),
    };
    let now = now_ms();
    loop {
        let events = store.read_stream(STREAM, version + 1, 1000).await?;
        let Some(last) = events.last() else { break };
        version = last.stream_version;
        for event in &events {
            let change: Change =
                serde_json::from_str(&event.data).map_err(|error| corrupt("event", error))?;
            state.apply(&change, event.global_position, now);
        }
    }
    state.restore_heartbeats(now);
    Ok((state, version))
}

struct Actor {
    rules: Rules,
    config: RegistryConfig,
    state: Registry,
    store: EventStore,
    view: watch::Sender<Arc<Registry>>,
    checks: HashMap<String, AbortHandle>,
    observations: mpsc::Sender<(String, bool)>,
    since_snapshot: u64,
    stream_version: u64,
}

impl Actor {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut observed: mpsc::Receiver<(String, bool)>,
    ) {
        let mut expiry = tokio::time::interval(Duration::from_millis(500));
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.handle(command).await,
                    None => break,
                },
                Some((id, passed)) = observed.recv() => {
                    if let Some(change) = self.state.observe(&id, passed, &self.rules) {
                        // A failed store leaves the health as it was; the next check retries.
                        let _ = self.commit(vec![change], "health-check").await;
                    }
                }
                _ = expiry.tick() => {
                    let expired = self.state.expired(now_ms());
                    if !expired.is_empty() {
                        let _ = self.commit(expired, "registry").await;
                    }
                }
            }
        }
        for (_, check) in self.checks.drain() {
            check.abort();
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Register {
                registration,
                actor,
                reply,
            } => {
                let result = match self.state.register(registration, &self.rules, now_ms()) {
                    Ok(change) => {
                        let Change::Registered { instance } = &change else {
                            unreachable!("register decides a registration")
                        };
                        let instance = instance.clone();
                        self.commit(vec![change], &actor).await.map(|()| instance)
                    }
                    Err(error) => Err(error.into()),
                };
                let _ = reply.send(result);
            }
            Command::Heartbeat { id, reply } => {
                let _ = reply.send(self.state.heartbeat(&id, now_ms()).map_err(Into::into));
            }
            Command::Deregister { id, actor, reply } => {
                let result = match self.state.deregister(&id) {
                    Ok(change) => self.commit(vec![change], &actor).await,
                    Err(error) => Err(error.into()),
                };
                let _ = reply.send(result);
            }
        }
    }

    /// Stores `changes` as events, then applies them and publishes the new state.
    async fn commit(&mut self, changes: Vec<Change>, actor: &str) -> Result<(), CallError> {
        let events = changes
            .iter()
            .map(|change| NewEvent::json(change.event_type(), change, actor))
            .collect();
        let done = self
            .store
            .append(STREAM, ExpectedVersion::Any, events)
            .await
            .map_err(|error| {
                tracing::error!(%error, "registry change not stored");
                CallError::Unavailable
            })?;
        let now = now_ms();
        for (offset, change) in (0u64..).zip(&changes) {
            self.state.apply(change, done.first_position + offset, now);
            match change {
                Change::Registered { instance } => {
                    self.start_check(&instance.id, &instance.address)
                }
                Change::Removed { id, .. } => {
                    if let Some(check) = self.checks.remove(id) {
                        check.abort();
                    }
                }
                Change::HealthChanged { .. } => {}
            }
        }
        self.stream_version = done.next_expected_version;
        self.view.send_replace(Arc::new(self.state.clone()));
        self.since_snapshot += changes.len() as u64;
        if self.since_snapshot >= self.config.snapshot_every {
            self.since_snapshot = 0;
            match serde_json::to_string(&self.state) {
                Ok(data) => {
                    if let Err(error) = self
                        .store
                        .save_snapshot(STREAM, self.stream_version, &data)
                        .await
                    {
                        tracing::warn!(%error, "registry snapshot not stored");
                    }
                }
                Err(error) => tracing::warn!(%error, "registry snapshot not serialised"),
            }
        }
        Ok(())
    }

    fn start_check(&mut self, id: &str, address: &str) {
        let task = tokio::spawn(check_loop(
            id.to_owned(),
            address.to_owned(),
            self.observations.clone(),
            self.config.check_interval,
            self.config.check_timeout,
        ));
        if let Some(previous) = self.checks.insert(id.to_owned(), task.abort_handle()) {
            previous.abort();
        }
    }
}

/// Checks one instance's `grpc.health.v1` every `interval` until aborted.
async fn check_loop(
    id: String,
    address: String,
    observations: mpsc::Sender<(String, bool)>,
    interval: Duration,
    timeout: Duration,
) {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{address}")) else {
        return;
    };
    let channel = endpoint.connect_timeout(timeout).connect_lazy();
    loop {
        let mut client = HealthClient::new(channel.clone());
        let check = client.check(HealthCheckRequest {
            service: String::new(),
        });
        let passed = matches!(
            tokio::time::timeout(timeout, check).await,
            Ok(Ok(response)) if response.get_ref().status() == ServingStatus::Serving
        );
        if observations.send((id.clone(), passed)).await.is_err() {
            return;
        }
        tokio::time::sleep(interval).await;
    }
}
