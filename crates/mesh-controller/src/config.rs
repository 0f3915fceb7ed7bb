//! mesh-controller's section of `omnimesh.toml`.

use std::net::SocketAddr;

use omnimesh_common::config::{Invalid, ServiceConfig};
use omnimesh_common::server::ServerConfig;
use omnimesh_telemetry::TelemetryConfig;

use crate::runtime::local::LocalRuntimeConfig;
use serde::{Deserialize, Serialize};

/// The `[mesh-controller]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the service listens.
    #[serde(default)]
    pub listen: Listen,
    /// gRPC server settings (drain timeout, keep-alive).
    #[serde(default)]
    pub server: ServerConfig,
    /// Logs and traces.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The local runtime behind `mesh-controller launch` (`make run`).
    #[serde(default)]
    pub local_runtime: LocalRuntimeConfig,
}

/// `[mesh-controller.listen]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// gRPC, and HTTP `/healthz`, `/readyz`, `/metrics` on the same port.
    #[serde(default = "default_grpc")]
    pub grpc: SocketAddr,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            grpc: default_grpc(),
        }
    }
}

fn default_grpc() -> SocketAddr {
    omnimesh_common::ports::MESH_CONTROLLER_GRPC
}

impl ServiceConfig for Config {
    const SERVICE: &'static str = crate::SERVICE;

    fn validate(&self) -> Result<(), Invalid> {
        self.telemetry
            .validate()
            .map_err(|(key, reason)| Invalid::new(format!("telemetry.{key}"), reason))?;
        self.local_runtime
            .validate()
            .map_err(|(key, reason)| Invalid::new(format!("local_runtime.{key}"), reason))
    }
}

impl Config {
    /// Loads `[mesh-controller]` from `omnimesh.toml` and `OMNIMESH_MESH_CONTROLLER__…` variables.
    ///
    /// # Errors
    /// One line naming the key, where its value came from, and why it is wrong.
    pub fn load() -> Result<Self, omnimesh_common::config::Error> {
        omnimesh_common::config::load()
    }

    /// Defaults, listening on `127.0.0.1:0`, for tests.
    pub fn for_test() -> Self {
        Self {
            listen: Listen {
                grpc: SocketAddr::from(([127, 0, 0, 1], 0)),
            },
            ..Self::default()
        }
    }
}
