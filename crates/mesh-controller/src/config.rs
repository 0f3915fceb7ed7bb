//! mesh-controller's section of `omnimesh.toml`.

use std::time::Duration;

use omnimesh_common::auth::AuthConfig;
use omnimesh_common::config::{Invalid, ServiceConfig};
use omnimesh_common::db::Backend;
use omnimesh_common::server::{GrpcListen, ServerConfig};
use omnimesh_telemetry::TelemetryConfig;
use serde::{Deserialize, Serialize};

use crate::events::{Limits, StoreOptions};
use crate::registry::RegistryConfig;
use crate::runtime::build::BuildConfig;

use crate::runtime::local::LocalRuntimeConfig;

/// The `[mesh-controller]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the service listens: gRPC, and HTTP `/healthz`, `/readyz`, `/metrics` on the
    /// same port.
    #[serde(default = "default_listen")]
    pub listen: GrpcListen,
    /// gRPC server settings (drain timeout, keep-alive).
    #[serde(default)]
    pub server: ServerConfig,
    /// Logs and traces.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The local runtime behind `mesh-controller launch` (`make run`).
    #[serde(default)]
    pub local_runtime: LocalRuntimeConfig,
    /// The event store.
    #[serde(default)]
    pub events: EventsConfig,
    /// The service registry.
    #[serde(default)]
    pub registry: RegistryConfig,
    /// Who may call: mutating RPCs need an operator or admin token.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Report tokens: core-engine's key changes, appended with a key of its own.
    #[serde(default)]
    pub reporting: ReportingConfig,
    /// `Build`: where the workspace is and which cargo builds it.
    #[serde(default)]
    pub build: BuildConfig,
}

/// `[mesh-controller.reporting]`: the key core-engine signs its key-change reports with
/// (`omnimesh_common::reporting`). Its tokens may append `engine.key_*` events to
/// `engine-key-*` streams and nothing else, so the engine does not need the platform's
/// token key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportingConfig {
    /// The HS256 key (32 random bytes) shared with core-engine's
    /// `[core-engine.audit] key_file`; `""` refuses every report.
    pub core_engine_key_file: std::path::PathBuf,
    /// Create the key file when it is missing (the local default; false in production,
    /// where the key comes from a Secret).
    pub generate_key: bool,
}

impl Default for ReportingConfig {
    fn default() -> Self {
        Self {
            core_engine_key_file: ".omnimesh/engine-report.key".into(),
            generate_key: true,
        }
    }
}

impl ReportingConfig {
    /// How report tokens are checked, or `None` when reports are refused.
    pub fn auth(&self) -> Option<AuthConfig> {
        (!self.core_engine_key_file.as_os_str().is_empty()).then(|| {
            omnimesh_common::reporting::auth_config(
                self.core_engine_key_file.clone(),
                self.generate_key,
            )
        })
    }
}

/// `[mesh-controller.events]`: where the event log lives and what an append may carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// `sqlite://PATH` (embedded default, WAL mode, every commit synced) or
    /// `postgres://…` (production).
    #[serde(default = "default_events_url")]
    pub database_url: String,
    /// Pooled database connections.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Most events in one append.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Largest JSON `data` of one event, in bytes.
    #[serde(default = "default_max_data_bytes")]
    pub max_data_bytes: usize,
    /// How often live subscribers look for new events without a wake-up (events
    /// appended by another process to a SQLite file, lost PostgreSQL notifications).
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            database_url: default_events_url(),
            max_connections: default_max_connections(),
            max_batch: default_max_batch(),
            max_data_bytes: default_max_data_bytes(),
            poll_interval: default_poll_interval(),
        }
    }
}

fn default_events_url() -> String {
    "sqlite://.omnimesh/mesh-controller.db".to_owned()
}
fn default_max_connections() -> u32 {
    8
}
fn default_max_batch() -> usize {
    Limits::default().max_batch
}
fn default_max_data_bytes() -> usize {
    Limits::default().max_data_bytes
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}

impl EventsConfig {
    fn validate(&self) -> Result<(), (&'static str, String)> {
        if Backend::of(&self.database_url).is_none() {
            return Err((
                "database_url",
                "must start with sqlite: or postgres:".to_owned(),
            ));
        }
        if self.max_connections == 0 {
            return Err(("max_connections", "must be at least 1".to_owned()));
        }
        if !(1..=10_000).contains(&self.max_batch) {
            return Err(("max_batch", "must be between 1 and 10000".to_owned()));
        }
        if !(1..=16 * 1024 * 1024).contains(&self.max_data_bytes) {
            return Err(("max_data_bytes", "must be between 1 and 16 MiB".to_owned()));
        }
        if self.poll_interval.is_zero() {
            return Err(("poll_interval", "must be positive".to_owned()));
        }
        Ok(())
    }

    /// How the store is opened.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            database_url: self.database_url.clone(),
            max_connections: self.max_connections,
            limits: Limits {
                max_batch: self.max_batch,
                max_data_bytes: self.max_data_bytes,
            },
            poll_interval: self.poll_interval,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            server: ServerConfig::default(),
            telemetry: TelemetryConfig::default(),
            local_runtime: LocalRuntimeConfig::default(),
            events: EventsConfig::default(),
            registry: RegistryConfig::default(),
            auth: AuthConfig::default(),
            reporting: ReportingConfig::default(),
            build: BuildConfig::default(),
        }
    }
}

fn default_listen() -> GrpcListen {
    GrpcListen::new(omnimesh_common::ports::MESH_CONTROLLER_GRPC)
}

impl ServiceConfig for Config {
    const SERVICE: &'static str = crate::SERVICE;

    fn validate(&self) -> Result<(), Invalid> {
        self.telemetry
            .validate()
            .map_err(|(key, reason)| Invalid::new(format!("telemetry.{key}"), reason))?;
        self.server
            .validate()
            .map_err(|(key, reason)| Invalid::new(format!("server.{key}"), reason))?;
        self.events
            .validate()
            .map_err(|(key, reason)| Invalid::new(format!("events.{key}"), reason))?;
        self.auth
            .validate()
            .map_err(|(key, reason)| Invalid::new(format!("auth.{key}"), reason))?;
        self.registry
            .validate()
            .map_err(|(key, reason)| Invalid::new(format!("registry.{key}"), reason))?;
        self.local_runtime
            .validate()
            .map_err(|(key, reason)| Invalid::new(format!("local_runtime.{key}"), reason))
    }
}

impl Config {
    /// Defaults, listening on `127.0.0.1:0`, with the event store in `dir`, for tests.
    pub fn for_test(dir: &std::path::Path) -> Self {
        Self {
            listen: GrpcListen::any_loopback(),
            events: EventsConfig {
                database_url: format!("sqlite://{}", dir.join("events.db").display()),
                ..EventsConfig::default()
            },
            auth: AuthConfig::for_test(dir),
            reporting: ReportingConfig {
                core_engine_key_file: dir.join("engine-report.key"),
                generate_key: true,
            },
            ..Self::default()
        }
    }
}
