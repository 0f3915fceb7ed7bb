//! mesh-controller: the control plane — service registry, event store, progressive
//! delivery and the runtimes — served as the `omnimesh.controller.v1` services
//! `Registry`, `Events`, `Rollouts` and `Runtime`.
//!
//! Start reading at [`App`]: [`App::build`] assembles the service from a [`Config`],
//! [`App::serve`] serves it on a listener the caller bound (tests bind `127.0.0.1:0`).
//! `events` is the event store (the controller's memory), served by `transport`'s
//! `Events`; `registry` is the service registry (a sans-IO core in `registry::model`
//! and an actor that stores every change as an event), served as `Registry`; the
//! rollouts and runtime RPCs answer `UNIMPLEMENTED` until they land.
//! `runtime::local` is the local runtime: today the supervisor behind `mesh-controller launch` (`make run`), which starts the
//! four services as processes, restarts them with back-off and stops them cleanly.

mod config;
mod error;
pub mod events;
pub mod registry;
pub mod runtime;
mod transport;

use std::future::Future;

use omnimesh_common::server::GrpcServer;
use omnimesh_proto::controller::v1::events_server::EventsServer;
use omnimesh_proto::controller::v1::registry_server::RegistryServer;
use omnimesh_proto::controller::v1::rollouts_server::RolloutsServer;
use omnimesh_proto::controller::v1::runtime_server::RuntimeServer;
use omnimesh_telemetry::Metrics;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::events::EventStore;
use crate::registry::RegistryHandle;

pub use config::Config;
pub use error::Error;

/// The service name used in config sections, metrics and logs.
pub const SERVICE: &str = "mesh-controller";

/// mesh-controller, assembled and ready to serve.
pub struct App {
    server: GrpcServer,
    /// Ends the long-lived streams (Watch, Subscribe) when shutdown begins, so that the
    /// drain does not wait for clients that never hang up; they resume elsewhere.
    streams: CancellationToken,
}

impl App {
    /// Assembles the service described by `config`.
    ///
    /// # Errors
    /// When the gRPC server cannot be assembled.
    pub async fn build(config: Config) -> Result<Self, Error> {
        let metrics = Metrics::new(SERVICE, env!("CARGO_PKG_VERSION"));
        let streams = CancellationToken::new();
        let store = EventStore::open(config.events.store_options())
            .await
            .map_err(Error::EventStore)?;
        let registry = RegistryHandle::start(store.clone(), config.registry.clone())
            .await
            .map_err(Error::Registry)?;
        let server = GrpcServer::builder(SERVICE, &config.server)
            .add_service(RegistryServer::new(transport::RegistryService::new(
                registry,
                streams.clone(),
            )))
            .add_service(EventsServer::new(transport::EventsService::new(
                store.clone(),
                streams.clone(),
            )))
            .add_service(RolloutsServer::new(transport::RolloutsService))
            .add_service(RuntimeServer::new(transport::RuntimeService))
            .descriptor_set(omnimesh_proto::FILE_DESCRIPTOR_SET)
            .reflection(true)
            .admin_http(metrics)
            .build()?;
        Ok(Self { server, streams })
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
        let streams = self.streams;
        let shutdown = async move {
            shutdown.await;
            streams.cancel();
        };
        Ok(self.server.serve(listener, shutdown).await?)
    }
}

/// Starts the whole platform as local processes and supervises it until `shutdown`
/// resolves (`mesh-controller launch`, which `make run` runs); writes the status table
/// and events to standard output.
///
/// # Errors
/// When the platform cannot be started or does not become ready in time.
pub async fn launch(
    config: &Config,
    sources: &omnimesh_common::config::Sources,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let mut stdout = std::io::stdout();
    runtime::local::launch(
        &config.local_runtime,
        sources,
        config.listen.grpc,
        &mut stdout,
        shutdown,
    )
    .await?;
    Ok(())
}
