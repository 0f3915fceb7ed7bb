//! omniterm-interface's section of `omnimesh.toml`.

use omnimesh_common::config::{Invalid, ServiceConfig};
use omnimesh_common::server::{GrpcListen, ServerConfig};
use omnimesh_telemetry::TelemetryConfig;
use serde::{Deserialize, Serialize};

/// The `[omniterm-interface]` section.
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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            server: ServerConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

fn default_listen() -> GrpcListen {
    GrpcListen::new(omnimesh_common::ports::OMNITERM_INTERFACE_GRPC)
}

impl ServiceConfig for Config {
    const SERVICE: &'static str = crate::SERVICE;

    fn validate(&self) -> Result<(), Invalid> {
        self.telemetry
            .validate()
            .map_err(|(key, reason)| Invalid::new(format!("telemetry.{key}"), reason))?;
        self.server
            .validate()
            .map_err(|(key, reason)| Invalid::new(format!("server.{key}"), reason))
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
