//! The desired state of the local runtime: which services run, how many replicas, from
//! which binary, with which arguments, environment and ports.
//!
//! It lives in a TOML file (`.omnimesh/desired-state.toml` by default), written with the
//! defaults at the first launch so that people can edit it; the runtime re-reads it when
//! it changes and `Scale` rewrites it. A file that does not parse or validate is refused
//! with the reason and the running state is kept.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use omnimesh_common::config::{self, Sources};
use omnimesh_common::ports;
use serde::{Deserialize, Serialize};

/// Most replicas of one service.
pub const MAX_REPLICAS: u32 = 16;
/// Most services in the desired state.
const MAX_SERVICES: usize = 32;
/// Largest desired-state file read, in bytes.
pub const MAX_FILE_BYTES: u64 = 256 * 1024;

/// The whole desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    /// By service name.
    pub services: BTreeMap<String, ServiceSpec>,
}

/// One service as it should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// How many instances.
    pub replicas: u32,
    /// A binary name in the runtime's `bin_dir`, or a path.
    pub binary: String,
    /// Command-line arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Listen key (`grpc`, `http`, `admin`) → `host:port` of the first replica; other
    /// replicas (and port 0) get free ports. Passed to the child as
    /// `OMNIMESH_<SERVICE>__LISTEN__<KEY>`.
    pub ports: BTreeMap<String, SocketAddr>,
    /// The listen key that serves `grpc.health.v1`.
    pub health: String,
    /// The listen key registered in the registry (where clients go).
    pub register: String,
}

/// Why a desired state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    /// The offending field, as a TOML path.
    pub field: String,
    /// Why.
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

impl DesiredState {
    /// The platform's default: core-engine ×2, proxy-gateway and omniterm-interface,
    /// on the addresses the shared configuration gives them.
    ///
    /// # Errors
    /// When a configured address cannot be read.
    pub fn defaults(sources: &Sources) -> Result<Self, config::Error> {
        let grpc = |service: &str, default| -> Result<_, config::Error> {
            Ok(BTreeMap::from([(
                "grpc".to_owned(),
                config::peek(sources, service, "listen.grpc", default)?,
            )]))
        };
        let spec = |replicas, binary: &str, ports, health: &str, register: &str| ServiceSpec {
            replicas,
            binary: binary.to_owned(),
            args: Vec::new(),
            env: BTreeMap::new(),
            ports,
            health: health.to_owned(),
            register: register.to_owned(),
        };
        let gateway_ports = BTreeMap::from([
            (
                "http".to_owned(),
                config::peek(
                    sources,
                    "proxy-gateway",
                    "listen.http",
                    ports::PROXY_GATEWAY_HTTP,
                )?,
            ),
            (
                "admin".to_owned(),
                config::peek(
                    sources,
                    "proxy-gateway",
                    "listen.admin",
                    ports::PROXY_GATEWAY_ADMIN,
                )?,
            ),
        ]);
        Ok(Self {
            services: BTreeMap::from([
                (
                    "core-engine".to_owned(),
                    spec(
                        2,
                        "core-engine",
                        grpc("core-engine", ports::CORE_ENGINE_GRPC)?,
                        "grpc",
                        "grpc",
                    ),
                ),
                (
                    "omniterm-interface".to_owned(),
                    spec(
                        1,
                        "omniterm-interface",
                        grpc("omniterm-interface", ports::OMNITERM_INTERFACE_GRPC)?,
                        "grpc",
                        "grpc",
                    ),
                ),
                (
                    "proxy-gateway".to_owned(),
                    spec(1, "proxy-gateway", gateway_ports, "admin", "http"),
                ),
            ]),
        })
    }

    /// Parses and validates a desired-state document.
    ///
    /// # Errors
    /// Malformed TOML, unknown fields, or an invalid value; the message names the field.
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        let state: Self =
            toml::from_str(text).map_err(|error| invalid("desired state", error.message()))?;
        state.validate()?;
        Ok(state)
    }

    /// Reads `path` (at most [`MAX_FILE_BYTES`]).
    ///
    /// # Errors
    /// An unreadable, oversized or invalid file.
    pub fn read(path: &Path) -> Result<Self, Invalid> {
        let field = path.display().to_string();
        let size = std::fs::metadata(path)
            .map_err(|error| invalid(&field, error.to_string()))?
            .len();
        if size > MAX_FILE_BYTES {
            return Err(invalid(
                field,
                format!("larger than {MAX_FILE_BYTES} bytes"),
            ));
        }
        let text =
            std::fs::read_to_string(path).map_err(|error| invalid(&field, error.to_string()))?;
        Self::parse(&text)
    }

    /// Writes the state to `path` atomically (a temporary file renamed into place).
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = format!(
            "# The local runtime's desired state. Edit it, or use Scale; the runtime follows it.\n{}",
            toml::to_string_pretty(self).map_err(std::io::Error::other)?
        );
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let temporary = path.with_extension("toml.tmp");
        std::fs::write(&temporary, text)?;
        std::fs::rename(&temporary, path)
    }

    /// Checks every service.
    ///
    /// # Errors
    /// The first invalid field.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.services.len() > MAX_SERVICES {
            return Err(invalid("services", format!("at most {MAX_SERVICES}")));
        }
        for (name, spec) in &self.services {
            let field = |key: &str| format!("services.{name}.{key}");
            crate::registry::model::check_service(name)
                .map_err(|error| invalid(format!("services.{name}"), error.to_string()))?;
            if spec.replicas > MAX_REPLICAS {
                return Err(invalid(
                    field("replicas"),
                    format!("at most {MAX_REPLICAS}"),
                ));
            }
            if spec.binary.is_empty() || spec.binary.contains('\0') {
                return Err(invalid(
                    field("binary"),
                    "a binary name or path is required",
                ));
            }
            if spec.args.len() > 64 || spec.env.len() > 64 {
                return Err(invalid(
                    field("args"),
                    "at most 64 arguments and 64 variables",
                ));
            }
            for key in spec.env.keys() {
                let valid =
                    !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !valid {
                    return Err(invalid(
                        field("env"),
                        format!("{key:?} is not a variable name"),
                    ));
                }
            }
            if spec.ports.is_empty() {
                return Err(invalid(field("ports"), "at least one listen address"));
            }
            for key in spec.ports.keys() {
                if !["grpc", "http", "admin"].contains(&key.as_str()) {
                    return Err(invalid(
                        field("ports"),
                        format!("{key:?} is not a listen key (grpc, http, admin)"),
                    ));
                }
            }
            for (key, value) in [("health", &spec.health), ("register", &spec.register)] {
                if !spec.ports.contains_key(value) {
                    return Err(invalid(
                        field(key),
                        format!("{value:?} is not one of this service's ports"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_the_file() {
        let sources = Sources::new();
        let state = DesiredState::defaults(&sources).unwrap();
        assert_eq!(state.services["core-engine"].replicas, 2);
        assert_eq!(state.services["proxy-gateway"].health, "admin");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/desired-state.toml");
        state.write(&path).unwrap();
        assert_eq!(DesiredState::read(&path).unwrap(), state);
    }

    #[test]
    fn malformed_states_name_the_field() {
        let good = "[services.core-engine]\nreplicas = 1\nbinary = \"core-engine\"\n\
                    ports = { grpc = \"127.0.0.1:0\" }\nhealth = \"grpc\"\nregister = \"grpc\"\n";
        DesiredState::parse(good).unwrap();
        for (text, field) in [
            ("not toml [", "desired state"),
            (
                &good.replace("replicas = 1", "replicas = -1"),
                "desired state",
            ),
            (
                &good.replace("replicas = 1", "replicas = 99999999999"),
                "desired state",
            ),
            (
                &good.replace("replicas = 1", "replicas = 17"),
                "services.core-engine.replicas",
            ),
            (
                &good.replace("core-engine]", "\"Core Engine\"]"),
                "services.Core Engine",
            ),
            (
                &good.replace("health = \"grpc\"", "health = \"http\""),
                "services.core-engine.health",
            ),
            (
                &good.replace("grpc = \"127.0.0.1:0\"", "grpc = \"nowhere\""),
                "desired state",
            ),
            (
                &good.replace("grpc = \"127", "ssh = \"127"),
                "services.core-engine.ports",
            ),
            (&format!("{good}surprise = 1\n"), "desired state"),
            (
                &good.replace("binary = \"core-engine\"", "binary = \"\""),
                "services.core-engine.binary",
            ),
            (
                &format!("{good}env = {{ \"A B\" = \"x\" }}\n"),
                "services.core-engine.env",
            ),
        ] {
            let error = DesiredState::parse(text).unwrap_err();
            assert_eq!(error.field, field, "{text}: {error}");
        }
        let dir = tempfile::tempdir().unwrap();
        let huge = dir.path().join("huge.toml");
        std::fs::write(&huge, "#".repeat(MAX_FILE_BYTES as usize + 1)).unwrap();
        assert!(
            DesiredState::read(&huge)
                .unwrap_err()
                .reason
                .contains("larger")
        );
    }
}
