//! mesh-controller's section of `omnimesh.toml`.

use omnimesh_common::config::{Invalid, ServiceConfig};
use omnimesh_common::server::{GrpcListen, ServerConfig};
use omnimesh_telemetry::TelemetryConfig;
use serde::{Deserialize, Serialize};

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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            server: ServerConfig::default(),
            telemetry: TelemetryConfig::default(),
            local_runtime: LocalRuntimeConfig::default(),
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
        self.local_runtime
            .validate()
            .map_err(|(key, reason)| Invalid::new(format!("local_runtime.{key}"), reason))
    }
}

impl Config {
    /// Defaults, listening on `127.0.0.1:0`, for tests.
    pub fn for_test() -> Self {
        Self {
            listen: GrpcListen::any_loopback(),
            ..Self::default()
        }
    }
}
