//! proxy-gateway: the single entry point for gRPC clients and browsers.
//!
//! Two listeners: the data plane (`listen.http`, 8080) answers
//! `grpc.health.v1.Health/Check` for the gateway itself and will route everything else;
//! the admin listener (`listen.admin`, 9901) serves `omnimesh.gateway.v1.GatewayAdmin`,
//! health, reflection, `/healthz`, `/readyz` and `/metrics`. Routing, load balancing and
//! security arrive with their own modules (`upstream` already holds the
//! `EndpointSource` trait with a static source and one that follows mesh-controller's
//! registry); until then the data plane answers other gRPC
//! calls with `UNIMPLEMENTED` and `GatewayAdmin` RPCs answer `UNIMPLEMENTED`.

pub mod balance;
mod config;
mod error;
pub mod metrics;
pub mod proxy;
pub mod route;
mod transport;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use omnimesh_common::server::GrpcServer;
use omnimesh_proto::gateway::v1::gateway_admin_server::GatewayAdminServer;
use omnimesh_telemetry::Metrics;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{Config, Listen};
pub use error::Error;

/// The service name used in config sections, metrics and logs.
pub const SERVICE: &str = "proxy-gateway";

/// The gateway's two bound listeners.
#[derive(Debug)]
pub struct Listeners {
    /// The data plane (HTTP/1.1 and h2c).
    pub http: TcpListener,
    /// The admin API.
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds both addresses of `listen`.
    ///
    /// # Errors
    /// When either address cannot be bound; the error names it.
    pub async fn bind(listen: &Listen) -> std::io::Result<Self> {
        Ok(Self {
            http: bind(listen.http).await?,
            admin: bind(listen.admin).await?,
        })
    }
}

async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| std::io::Error::new(error.kind(), format!("binding {addr}: {error}")))
}

/// proxy-gateway, assembled and ready to serve.
pub struct App {
    proxy: Arc<proxy::Proxy>,
    health: tonic_health::server::HealthReporter,
    drain: std::time::Duration,
    header_read_timeout: std::time::Duration,
    admin: GrpcServer,
    _sources: Sources,
}

/// Keeps the endpoint sources (and the task merging them) alive with the app.
struct Sources {
    _registry: Option<upstream::RegistrySource>,
    _merge: tokio_util::sync::DropGuard,
}

/// Static clusters as endpoint sets.
fn static_sets(config: &config::Upstreams) -> upstream::Endpoints {
    config
        .clusters
        .iter()
        .map(|(cluster, endpoints)| {
            let endpoints = endpoints
                .iter()
                .map(|address| upstream::Endpoint {
                    id: format!("{cluster}@{address}"),
                    address: address.clone(),
                    weight: 100,
                    subset: String::new(),
                    version: String::new(),
                    healthy: true,
                })
                .collect();
            (
                cluster.clone(),
                upstream::EndpointSet {
                    endpoints,
                    revision: 0,
                },
            )
        })
        .collect()
}

impl App {
    /// Assembles the gateway described by `config`.
    ///
    /// # Errors
    /// When a server cannot be assembled.
    pub async fn build(config: Config) -> Result<Self, Error> {
        let registry = if config.upstreams.registry.is_empty() {
            None
        } else {
            Some(
                upstream::RegistrySource::start(upstream::RegistrySourceOptions {
                    controller: config.upstreams.registry.clone(),
                    services: Vec::new(),
                    backoff_initial: std::time::Duration::from_millis(100),
                    backoff_max: std::time::Duration::from_secs(5),
                })
                .map_err(|error| Error::Registry(error.to_string()))?,
            )
        };
        let statics = static_sets(&config.upstreams);
        let (balancers_tx, balancers) = watch::channel(Arc::new(balance::Balancers::rebuild(
            &balance::Balancers::default(),
            &statics,
        )));
        let stop = tokio_util::sync::CancellationToken::new();
        if let Some(registry) = &registry {
            use upstream::EndpointSource as _;
            let mut sets = registry.endpoints();
            let stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    let mut merged = statics.clone();
                    merged.extend(
                        sets.borrow_and_update()
                            .iter()
                            .map(|(cluster, set)| (cluster.clone(), set.clone())),
                    );
                    let next = balance::Balancers::rebuild(&balancers_tx.borrow(), &merged);
                    balancers_tx.send_replace(Arc::new(next));
                    tokio::select! {
                        changed = sets.changed() => if changed.is_err() { return },
                        () = stop.cancelled() => return,
                    }
                }
            });
        }
        let health = tonic_health::server::HealthReporter::new();
        let health_service = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(health.clone()),
        );
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let routes = config
            .routes
            .clone()
            .map_or_else(route::RouteTable::default, |routes| route::RouteTable {
                routes,
            });
        let mut metrics = Metrics::new(SERVICE, env!("CARGO_PKG_VERSION"));
        let gateway_metrics = metrics::GatewayMetrics::register(metrics.registry_mut());
        let proxy = Arc::new(proxy::Proxy::new(
            routes,
            balancers,
            proxy::MethodCatalog::from_descriptor_set(omnimesh_proto::FILE_DESCRIPTOR_SET),
            health_service,
            Arc::new(
                omnimesh_common::auth::Verifier::load(&config.auth)
                    .map_err(|error| Error::Auth(error.to_string()))?,
            ),
            gateway_metrics,
            config.max_request_body_bytes,
        ));
        let admin = GrpcServer::builder(SERVICE, &config.server)
            .add_service(GatewayAdminServer::new(transport::GatewayAdminService))
            .descriptor_set(omnimesh_proto::FILE_DESCRIPTOR_SET)
            .reflection(true)
            .admin_http(metrics)
            .build()?;
        Ok(Self {
            proxy,
            health,
            drain: config.server.drain_timeout,
            header_read_timeout: config.header_read_timeout,
            admin,
            _sources: Sources {
                _registry: registry,
                _merge: stop.drop_guard(),
            },
        })
    }

    /// Serves both listeners until `shutdown` resolves, then drains both; stops both
    /// when either fails.
    ///
    /// # Errors
    /// When either server fails while serving.
    pub async fn serve(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), Error> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut stop: watch::Receiver<bool>| async move {
            // A dropped sender (the other server failed) also means "stop".
            let _ = stop.wait_for(|stop| *stop).await;
        };
        let signal = async move {
            shutdown.await;
            let _ = stop_tx.send(true);
            Ok::<(), Error>(())
        };
        let data_plane_stop = stopped(stop_rx.clone());
        let admin_stop = stopped(stop_rx);
        tokio::try_join!(
            signal,
            async {
                let health = self.health.clone();
                let stop = async move {
                    data_plane_stop.await;
                    health
                        .set_service_status("", tonic_health::ServingStatus::NotServing)
                        .await;
                };
                let limits = proxy::ConnectionLimits {
                    drain: self.drain,
                    header_read_timeout: self.header_read_timeout,
                };
                proxy::serve(listeners.http, Arc::clone(&self.proxy), stop, limits)
                    .await
                    .map_err(Error::DataPlane)
            },
            async { Ok::<(), Error>(self.admin.serve(listeners.admin, admin_stop).await?) },
        )?;
        Ok(())
    }
}
