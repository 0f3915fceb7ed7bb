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
pub mod projections;
pub mod registry;
pub mod runtime;
mod transport;

use std::future::Future;

use std::sync::Arc;

use omnimesh_common::auth::{Authenticator, Verifier};
use omnimesh_common::server::GrpcServer;
use omnimesh_proto::controller::v1::events_server::EventsServer;
use omnimesh_proto::controller::v1::registry_server::RegistryServer;
use omnimesh_proto::controller::v1::rollouts_server::RolloutsServer;
use omnimesh_proto::controller::v1::runtime_server::RuntimeServer;
use omnimesh_telemetry::Metrics;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::events::EventStore;
use crate::projections::Projections;
use crate::registry::RegistryHandle;
use crate::runtime::build::Builder;
use crate::runtime::supervisor::RuntimeHandle;

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

/// The controller's state: the event store and the registry built on it.
struct Core {
    store: EventStore,
    registry: RegistryHandle,
    projections: Projections,
}

impl Core {
    async fn open(config: &Config) -> Result<Self, Error> {
        let store = EventStore::open(config.events.store_options())
            .await
            .map_err(Error::EventStore)?;
        let registry = RegistryHandle::start(store.clone(), config.registry.clone())
            .await
            .map_err(Error::Registry)?;
        let projections = Projections::start(store.clone())
            .await
            .map_err(Error::Registry)?;
        Ok(Self {
            store,
            registry,
            projections,
        })
    }
}

impl App {
    /// Assembles the service described by `config`, without a local runtime (its RPCs
    /// answer `FAILED_PRECONDITION`; `mesh-controller launch` runs one).
    ///
    /// # Errors
    /// When the event store cannot be opened or the gRPC server cannot be assembled.
    pub async fn build(config: Config) -> Result<Self, Error> {
        let core = Core::open(&config).await?;
        Self::assemble(&config, core, None)
    }

    fn assemble(
        config: &Config,
        core: Core,
        runtime: Option<RuntimeHandle>,
    ) -> Result<Self, Error> {
        let metrics = Metrics::new(SERVICE, env!("CARGO_PKG_VERSION"));
        let streams = CancellationToken::new();
        let verifier = Verifier::load(&config.auth).map_err(Error::Auth)?;
        let auth = Authenticator::new(Arc::new(verifier));
        // Only the event store takes core-engine's report tokens.
        let events_auth = match config.reporting.auth() {
            Some(reporting) => auth
                .clone()
                .with_reporters(Arc::new(Verifier::load(&reporting).map_err(Error::Auth)?)),
            None => auth.clone(),
        };
        let server = GrpcServer::builder(SERVICE, &config.server)
            .add_service(RegistryServer::with_interceptor(
                transport::RegistryService::new(core.registry, streams.clone()),
                auth.clone(),
            ))
            .add_service(EventsServer::with_interceptor(
                transport::EventsService::new(core.store.clone(), streams.clone()),
                events_auth,
            ))
            .add_service(RolloutsServer::with_interceptor(
                transport::RolloutsService,
                auth.clone(),
            ))
            .add_service(RuntimeServer::with_interceptor(
                transport::RuntimeService::new(
                    runtime,
                    Builder::new(config.build.clone(), core.store.clone()),
                    core.projections,
                    streams.clone(),
                ),
                auth,
            ))
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

/// Serves the controller and runs the rest of the platform as local processes until
/// `shutdown` resolves (`mesh-controller launch`, which `make run` runs); writes what
/// happens and the status table to `out`.
///
/// # Errors
/// When the platform cannot be started or does not become ready in time (everything
/// started is stopped first).
pub async fn launch(
    config: &Config,
    sources: &omnimesh_common::config::Sources,
    out: &mut (impl std::io::Write + Send),
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let local = &config.local_runtime;
    let mut options = local.runtime_options(sources)?;
    let io = |what: &'static str, path: std::path::PathBuf| {
        move |source| runtime::local::Error::Io { what, path, source }
    };
    let logs = runtime::logs::LogHub::new(local.log_dir(), local.rotation())
        .map_err(io("creating", local.log_dir()))?;
    let address = runtime::supervisor::resolve(config.listen.grpc).map_err(io(
        "finding a port for",
        std::path::PathBuf::from(config.listen.grpc.to_string()),
    ))?;
    let listener = TcpListener::bind(address)
        .await
        .map_err(io("binding", std::path::PathBuf::from(address.to_string())))?;
    // The gateway follows this controller's registry, wherever it listens.
    options.env.push((
        "OMNIMESH_PROXY_GATEWAY__UPSTREAMS__REGISTRY".to_owned(),
        format!("http://{address}"),
    ));
    // core-engine reports key changes to this controller, signed with the report key
    // (created here when missing, before any engine starts), or not at all when the
    // controller takes no reports.
    let controller = match config.reporting.auth() {
        Some(reporting) => {
            Verifier::load(&reporting).map_err(Error::Auth)?;
            format!("http://{address}")
        }
        None => String::new(),
    };
    for (key, value) in [
        ("CONTROLLER", controller),
        (
            "KEY_FILE",
            config.reporting.core_engine_key_file.display().to_string(),
        ),
        ("GENERATE_KEY", "false".to_owned()),
    ] {
        options
            .env
            .push((format!("OMNIMESH_CORE_ENGINE__AUDIT__{key}"), value));
    }
    let core = Core::open(config).await?;
    let (store, registry_handle) = (core.store.clone(), core.registry.clone());
    let _ = writeln!(
        out,
        "mesh-controller serving on {address}; starting the platform (logs in {})",
        local.log_dir().display()
    );
    let runtime = RuntimeHandle::start(options, store, registry_handle.clone(), logs)
        .await
        .map_err(runtime::local::Error::from)?;
    // The controller is an instance too: the gateway routes its API through the registry.
    let heartbeat = {
        let registry = registry_handle.clone();
        let own = registry::model::Registration {
            id: "mesh-controller-0".to_owned(),
            service: SERVICE.to_owned(),
            address: address.to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            subset: "stable".to_owned(),
            weight: 100,
            health: registry::model::Health::Serving,
            labels: std::collections::BTreeMap::from([("runtime".to_owned(), "local".to_owned())]),
            ttl_ms: 0,
        };
        tokio::spawn(async move {
            let mut beat = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                beat.tick().await;
                if registry.heartbeat("mesh-controller-0").await.is_err() {
                    let _ = registry.register(own.clone(), "local-runtime").await;
                }
            }
        })
    };
    let app = App::assemble(config, core, Some(runtime.clone()))?;
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.serve(listener, async move {
        let _ = server_stopped.await;
    }));
    let outcome = runtime::local::follow(&runtime, local, address, out, shutdown).await;
    let _ = writeln!(out, "stopping the platform");
    let mut notices = runtime.notices();
    let stopping = runtime.stop();
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            () = &mut stopping => break,
            Ok(notice) = notices.recv() => { let _ = writeln!(out, "{notice}"); }
        }
    }
    while let Ok(notice) = notices.try_recv() {
        let _ = writeln!(out, "{notice}");
    }
    heartbeat.abort();
    let _ = registry_handle
        .deregister("mesh-controller-0", "local-runtime")
        .await;
    let _ = stop_server.send(());
    if let Ok(served) = server.await {
        served?;
    }
    let _ = writeln!(out, "all services stopped");
    outcome?;
    Ok(())
}
