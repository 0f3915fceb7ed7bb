//! core-engine: encryption as a service with versioned keys, statistics and parallel
//! compute kernels, served as `omnimesh.engine.v1.Engine`.
//!
//! Start reading at [`App`]: [`App::build`] assembles the service from a [`Config`],
//! [`App::serve`] serves it on a listener the caller bound (tests bind `127.0.0.1:0`).
//! `transport` holds the tonic service; `keys` the keyring (rules in `keys::model`,
//! persistence in `keys::store`, the master key in `keys::master`); `crypto` the
//! primitives and the `omnimesh:v<N>:` envelope; `analyze` and `compute` the statistics
//! and kernels, run on a rayon pool of their own. EncryptStream and DecryptStream answer
//! `UNIMPLEMENTED` until they land.

mod analyze;
mod compute;
mod config;
mod crypto;
mod error;
mod keys;
mod transport;

use std::future::Future;
use std::sync::Arc;

use omnimesh_common::server::GrpcServer;
use omnimesh_proto::engine::v1::engine_server::EngineServer;
use omnimesh_telemetry::Metrics;
use tokio::net::TcpListener;

pub use config::{ComputeConfig, Config, KeysConfig, LimitsConfig};
pub use error::{EngineError, Error};

/// The service name used in config sections, metrics and logs.
pub const SERVICE: &str = "core-engine";

/// core-engine, assembled and ready to serve.
pub struct App {
    server: GrpcServer,
    keyring: Arc<keys::Keyring>,
    seal_flush_interval: std::time::Duration,
}

impl App {
    /// Assembles the service described by `config`.
    ///
    /// # Errors
    /// When the master key, the key store or the gRPC server cannot be set up.
    pub async fn build(config: Config) -> Result<Self, Error> {
        let metrics = Metrics::new(SERVICE, env!("CARGO_PKG_VERSION"));
        let rng = ring::rand::SystemRandom::new();
        let env_value = (!config.keys.master_key_env.is_empty())
            .then(|| std::env::var(&config.keys.master_key_env).ok())
            .flatten();
        let master = keys::master::MasterKey::load(
            env_value.as_deref(),
            &config.keys.master_key_file,
            config.keys.generate_master_key,
            &rng,
        )
        .map_err(Error::MasterKey)?;
        let store =
            keys::store::KeyStore::open(&config.keys.database_url, config.keys.max_connections)
                .await?;
        let keyring = Arc::new(keys::Keyring::new(
            store,
            master,
            keys::KeyringLimits {
                cache_versions: config.keys.cache_versions,
                metadata_ttl: config.keys.metadata_ttl,
                max_seals_per_version: config.keys.max_seals_per_version,
            },
        ));
        let pool = Arc::new(compute::ComputePool::new(config.compute.threads)?);
        let service =
            transport::EngineService::new(Arc::clone(&keyring), config.limits.clone(), pool);
        let server = GrpcServer::builder(SERVICE, &config.server)
            .message_limit_key("limits.max_message_bytes")
            .add_service(
                EngineServer::new(service)
                    .max_decoding_message_size(config.limits.max_message_bytes)
                    .max_encoding_message_size(config.limits.max_message_bytes.saturating_mul(2)),
            )
            .descriptor_set(omnimesh_proto::FILE_DESCRIPTOR_SET)
            .reflection(true)
            .admin_http(metrics)
            .build()?;
        Ok(Self {
            server,
            keyring,
            seal_flush_interval: config.keys.seal_flush_interval,
        })
    }

    /// Serves on `listener` until `shutdown` resolves, then drains in-flight calls.
    ///
    /// # Errors
    /// When the server fails while serving.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), Error> {
        let keyring = Arc::clone(&self.keyring);
        let interval = self.seal_flush_interval;
        let flusher = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                keyring.flush_seals().await;
            }
        });
        let served = self.server.serve(listener, shutdown).await;
        flusher.abort();
        // Seal counts made during the drain are kept.
        self.keyring.flush_seals().await;
        Ok(served?)
    }
}
