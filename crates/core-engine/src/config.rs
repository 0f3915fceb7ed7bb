//! core-engine's section of `omnimesh.toml`.

use omnimesh_common::config::{Invalid, ServiceConfig};
use omnimesh_common::server::{GrpcListen, ServerConfig};
use omnimesh_telemetry::TelemetryConfig;
use std::path::PathBuf;
use std::time::Duration;

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
    /// The key store and the master key.
    #[serde(default)]
    pub keys: KeysConfig,
    /// Request limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The compute pool.
    #[serde(default)]
    pub compute: ComputeConfig,
    /// Where key changes are reported.
    #[serde(default)]
    pub audit: AuditConfig,
}

/// `[core-engine.audit]`: every change to a key (create, rotate, configure, trim, delete)
/// is an event in mesh-controller's event store. Each is stored with the change, in the
/// key store, and reported from there, so none is lost while the controller is away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// mesh-controller's gRPC address (`""`: changes are not recorded as events).
    pub controller: String,
    /// The HS256 key the reports are signed with: a key of their own, which the controller
    /// reads too (`[mesh-controller.reporting] core_engine_key_file`). Its tokens may only
    /// append key-change events (`omnimesh_common::reporting`); the engine holds no key
    /// that could sign anything else.
    pub key_file: PathBuf,
    /// Create the key file when it is missing (the local default; false in production,
    /// where the key comes from a Secret).
    pub generate_key: bool,
    /// The deadline of one report (and of connecting).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// First retry delay while the controller is away.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Longest retry delay.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// How often waiting changes are looked for without a change of this process (those
    /// another replica sharing the store left).
    #[serde(with = "humantime_serde")]
    pub recheck_interval: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            controller: format!("http://{}", omnimesh_common::ports::MESH_CONTROLLER_GRPC),
            key_file: PathBuf::from(".omnimesh/engine-report.key"),
            generate_key: true,
            timeout: Duration::from_secs(10),
            retry_initial: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
            recheck_interval: Duration::from_secs(30),
        }
    }
}

impl AuditConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if !self.controller.is_empty() {
            let uri: Result<tonic::transport::Uri, _> = self.controller.parse();
            let valid = uri.is_ok_and(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some()
            });
            if !valid {
                return Err(Invalid::new(
                    "audit.controller",
                    "must be an http:// or https:// address, or \"\" to record no events",
                ));
            }
        }
        if !self.controller.is_empty() && self.key_file.as_os_str().is_empty() {
            return Err(Invalid::new(
                "audit.key_file",
                "must name the report key file (or set audit.controller = \"\" to record no events)",
            ));
        }
        for (key, value) in [
            ("audit.timeout", self.timeout),
            ("audit.retry_initial", self.retry_initial),
            ("audit.recheck_interval", self.recheck_interval),
        ] {
            if value.is_zero() {
                return Err(Invalid::new(key, "must be longer than 0s"));
            }
        }
        if self.retry_max < self.retry_initial {
            return Err(Invalid::new(
                "audit.retry_max",
                "must be at least audit.retry_initial",
            ));
        }
        Ok(())
    }
}

/// `[core-engine.compute]`: the rayon pool that runs Analyze and Compute.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComputeConfig {
    /// Threads of the pool (0: one per core).
    pub threads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            server: ServerConfig::default(),
            telemetry: TelemetryConfig::default(),
            keys: KeysConfig::default(),
            limits: LimitsConfig::default(),
            compute: ComputeConfig::default(),
            audit: AuditConfig::default(),
        }
    }
}

/// `[core-engine.keys]`: where keys live and what wraps them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// `sqlite://path` (created when missing) or `postgres://…`.
    pub database_url: String,
    /// Connections in the store's pool.
    pub max_connections: u32,
    /// The master key file: 32 raw bytes, or their base64 or hex.
    pub master_key_file: PathBuf,
    /// An environment variable that, when set, holds the master key (base64 or hex) and
    /// wins over the file.
    pub master_key_env: String,
    /// Create the master key file (mode 0600) when it is missing: the local default; turn
    /// it off in production so a missing Secret stops start-up.
    pub generate_master_key: bool,
    /// Retired master keys (one base64 or hex key per line; empty: none). Versions
    /// wrapped by one of them are rewrapped under the master key at start-up (and when
    /// loaded, for those another replica wraps meanwhile); start-up stops, naming them,
    /// when a stored version is wrapped by a master key that is neither.
    pub previous_master_keys_file: PathBuf,
    /// Rewrap what those keys wrap under the master key. Off for the first step of a
    /// rotation, when the list holds the next master key (so the replicas not yet on it
    /// can read what the ones on it wrap) and nothing must move back to the old one.
    pub rewrap_to_master_key: bool,
    /// Unwrapped key versions kept in memory.
    pub cache_versions: usize,
    /// How long key metadata is trusted before it is read again (another replica's
    /// rotation or configuration change is seen within this).
    #[serde(with = "humantime_serde")]
    pub metadata_ttl: Duration,
    /// Seals one AEAD key version may make before encryption with it is refused (2^32:
    /// the NIST bound for random 96-bit GCM nonces).
    pub max_seals_per_version: u64,
    /// How often seal counts are written to the store.
    #[serde(with = "humantime_serde")]
    pub seal_flush_interval: Duration,
    /// How often keys with an `auto_rotate_period` are checked (a due key is rotated
    /// within this much of its period).
    #[serde(with = "humantime_serde")]
    pub auto_rotate_check_interval: Duration,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            database_url: "sqlite://.omnimesh/core-engine.db".to_owned(),
            max_connections: 8,
            master_key_file: PathBuf::from(".omnimesh/core-engine-master.key"),
            master_key_env: "OMNIMESH_ENGINE_MASTER_KEY".to_owned(),
            generate_master_key: true,
            previous_master_keys_file: PathBuf::new(),
            rewrap_to_master_key: true,
            cache_versions: 1024,
            metadata_ttl: Duration::from_secs(2),
            max_seals_per_version: 1 << 32,
            seal_flush_interval: Duration::from_secs(5),
            auto_rotate_check_interval: Duration::from_secs(60),
        }
    }
}

/// `[core-engine.limits]`: over any of them a request gets `RESOURCE_EXHAUSTED` naming
/// the limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request message, in bytes.
    pub max_message_bytes: usize,
    /// Most items in one batch request.
    pub max_batch_items: usize,
    /// Largest RandomBytes request.
    pub max_random_bytes: usize,
    /// Most values one AnalyzeStream call may send in all.
    pub max_stream_values: usize,
    /// Most plaintext bytes one EncryptStream call may carry.
    pub max_stream_bytes: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 16 << 20,
            max_batch_items: 10_000,
            max_random_bytes: 1 << 20,
            max_stream_values: 50_000_000,
            max_stream_bytes: 1 << 36,
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
            .map_err(|(key, reason)| Invalid::new(format!("telemetry.{key}"), reason))?;
        self.server
            .validate()
            .map_err(|(key, reason)| Invalid::new(format!("server.{key}"), reason))?;
        let url = &self.keys.database_url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres:")
            || url.starts_with("postgresql:"))
        {
            return Err(Invalid::new(
                "keys.database_url",
                "must start with sqlite: or postgres:",
            ));
        }
        if self.keys.max_connections == 0 {
            return Err(Invalid::new("keys.max_connections", "must be at least 1"));
        }
        if self.limits.max_stream_bytes == 0 {
            return Err(Invalid::new(
                "limits.max_stream_bytes",
                "must be at least 1",
            ));
        }
        if self.keys.max_seals_per_version == 0 {
            return Err(Invalid::new(
                "keys.max_seals_per_version",
                "must be at least 1",
            ));
        }
        for (key, value) in [
            ("keys.seal_flush_interval", self.keys.seal_flush_interval),
            (
                "keys.auto_rotate_check_interval",
                self.keys.auto_rotate_check_interval,
            ),
        ] {
            if value.is_zero() {
                return Err(Invalid::new(key, "must be longer than 0s"));
            }
        }
        self.audit.validate()?;
        for (key, value) in [
            ("limits.max_message_bytes", self.limits.max_message_bytes),
            ("limits.max_batch_items", self.limits.max_batch_items),
            ("limits.max_random_bytes", self.limits.max_random_bytes),
            ("limits.max_stream_values", self.limits.max_stream_values),
        ] {
            if value == 0 {
                return Err(Invalid::new(key, "must be at least 1"));
            }
        }
        Ok(())
    }
}

impl Config {
    /// Defaults, listening on `127.0.0.1:0`, with the key store and the master key in
    /// `dir` and no events recorded, for tests.
    pub fn for_test(dir: &std::path::Path) -> Self {
        Self {
            listen: GrpcListen::any_loopback(),
            keys: KeysConfig {
                database_url: format!("sqlite://{}", dir.join("engine.db").display()),
                master_key_file: dir.join("master.key"),
                master_key_env: String::new(),
                ..KeysConfig::default()
            },
            audit: AuditConfig {
                controller: String::new(),
                key_file: dir.join("engine-report.key"),
                ..AuditConfig::default()
            },
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
    fn key_intervals_must_not_be_zero() {
        let dir = tempfile::tempdir().unwrap();
        for (key, config) in [
            ("keys.seal_flush_interval", {
                let mut config = Config::for_test(dir.path());
                config.keys.seal_flush_interval = Duration::ZERO;
                config
            }),
            ("keys.auto_rotate_check_interval", {
                let mut config = Config::for_test(dir.path());
                config.keys.auto_rotate_check_interval = Duration::ZERO;
                config
            }),
        ] {
            let invalid = config.validate().unwrap_err();
            assert_eq!(invalid.key, key);
        }
        assert!(Config::for_test(dir.path()).validate().is_ok());
    }

    #[test]
    fn audit_settings_are_checked_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let invalid = |audit: AuditConfig| {
            Config {
                audit,
                ..Config::for_test(dir.path())
            }
            .validate()
            .map(|()| "valid".to_owned())
            .unwrap_or_else(|invalid| format!("{}: {}", invalid.key, invalid.reason))
        };
        let base = Config::for_test(dir.path()).audit;
        for controller in [
            "127.0.0.1:50052",
            "ftp://controller",
            "http://",
            "not a uri",
            "\u{0}",
        ] {
            let message = invalid(AuditConfig {
                controller: controller.into(),
                ..base.clone()
            });
            assert!(
                message.contains("audit.controller"),
                "{controller}: {message}"
            );
        }
        let message = invalid(AuditConfig {
            retry_initial: Duration::from_secs(5),
            retry_max: Duration::from_secs(1),
            ..base.clone()
        });
        assert!(message.contains("audit.retry_max"), "{message}");
        let message = invalid(AuditConfig {
            timeout: Duration::ZERO,
            ..base.clone()
        });
        assert!(message.contains("audit.timeout"), "{message}");
        let message = invalid(AuditConfig {
            controller: "http://127.0.0.1:50052".into(),
            key_file: PathBuf::new(),
            ..base.clone()
        });
        assert!(message.contains("audit.key_file"), "{message}");
        // The default reports to the local controller; "" records nothing.
        assert_eq!(Config::default().audit.controller, "http://127.0.0.1:50052");
        for controller in [
            "",
            "http://127.0.0.1:50052",
            "https://controller.mesh.svc:50052",
        ] {
            let config = Config {
                audit: AuditConfig {
                    controller: controller.into(),
                    ..base.clone()
                },
                ..Config::for_test(dir.path())
            };
            assert!(config.validate().is_ok(), "{controller}");
        }
    }

    #[test]
    fn an_address_from_the_environment_wins() {
        let sources =
            Sources::new().with_env("OMNIMESH_CORE_ENGINE__LISTEN__GRPC", "127.0.0.1:6001");
        let config: Config = load_from(&sources).unwrap();
        assert_eq!(config.listen.grpc, "127.0.0.1:6001".parse().unwrap());
    }
}
