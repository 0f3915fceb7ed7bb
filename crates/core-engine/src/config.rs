//! core-engine's section of `omnimesh.toml`.

use omnimesh_common::config::{Invalid, ServiceConfig};
use omnimesh_common::server::{GrpcListen, ServerConfig};
use omnimesh_telemetry::TelemetryConfig;
use serde::{Deserialize, Serialize};

/// The `[core-engine]` section.
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
    GrpcListen::new(omnimesh_common::ports::CORE_ENGINE_GRPC)
}

impl ServiceConfig for Config {
    const SERVICE: &'static str = crate::SERVICE;

    fn validate(&self) -> Result<(), Invalid> {
        self.telemetry
            .validate()
            .map_err(|(key, reason)| Invalid::new(format!("telemetry.{key}"), reason))
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

#[cfg(test)]
mod tests {
    use omnimesh_common::config::{Sources, load_from};

    use super::*;

    #[test]
    fn a_partial_section_keeps_the_default_address() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("omnimesh.toml");
        std::fs::write(
            &file,
            "[core-engine.listen]\n[core-engine.server]\ndrain_timeout = \"1s\"\n",
        )
        .unwrap();
        let config: Config = load_from(&Sources::new().with_file(&file)).unwrap();
        assert_eq!(config.listen.grpc, omnimesh_common::ports::CORE_ENGINE_GRPC);
        assert_eq!(
            config.server.drain_timeout,
            std::time::Duration::from_secs(1)
        );
    }

    #[test]
    fn an_address_from_the_environment_wins() {
        let sources =
            Sources::new().with_env("OMNIMESH_CORE_ENGINE__LISTEN__GRPC", "127.0.0.1:6001");
        let config: Config = load_from(&sources).unwrap();
        assert_eq!(config.listen.grpc, "127.0.0.1:6001".parse().unwrap());
    }
}
