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
pub mod connect;
mod error;
mod filewatch;
pub mod health;
pub mod jwks;
pub mod live;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod route;
pub mod tls;
pub mod trace;
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

pub use config::{CircuitBreaker, Config, Listen};
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
    tls: Option<tokio_rustls::TlsAcceptor>,
    admin: GrpcServer,
    live: Arc<live::Live>,
    sources: Sources,
}

/// The layers' sets merged, later layers' clusters replacing earlier ones'.
fn merge(layers: &mut [watch::Receiver<Arc<upstream::Endpoints>>]) -> upstream::Endpoints {
    let mut merged = upstream::Endpoints::new();
    for layer in layers {
        merged.extend(
            layer
                .borrow_and_update()
                .iter()
                .map(|(cluster, set)| (cluster.clone(), set.clone())),
        );
    }
    merged
}

/// Keeps the endpoint sources, the task merging them and the config watcher alive
/// with the app: dropping it stops them.
struct Sources {
    _registry: Option<upstream::RegistrySource>,
    _file: Option<upstream::FileSource>,
    stop: tokio_util::sync::CancellationToken,
    _tasks: tokio_util::sync::DropGuard,
}

impl App {
    /// Assembles the gateway described by `config`.
    ///
    /// # Errors
    /// When a server cannot be assembled, or the endpoints file cannot be read.
    pub async fn build(config: Config) -> Result<Self, Error> {
        use upstream::EndpointSource as _;
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
        let file = if config.upstreams.endpoints_file.is_empty() {
            None
        } else {
            Some(
                upstream::FileSource::start(std::path::Path::new(&config.upstreams.endpoints_file))
                    .map_err(Error::Endpoints)?,
            )
        };
        let mut metrics = Metrics::new(SERVICE, env!("CARGO_PKG_VERSION"));
        let live = Arc::new(live::Live::new(config.clone(), metrics.registry_mut()));
        let gateway_metrics = metrics::GatewayMetrics::register(metrics.registry_mut());
        let stop = tokio_util::sync::CancellationToken::new();
        // Static clusters (they change with the config), then the file's, then the
        // registry's: a later source's cluster replaces an earlier one's.
        let mut layers = vec![live.statics()];
        layers.extend(file.as_ref().map(upstream::FileSource::endpoints));
        layers.extend(registry.as_ref().map(upstream::RegistrySource::endpoints));
        let (balancers_tx, balancers) = watch::channel(Arc::new(balance::Balancers::rebuild(
            &balance::Balancers::default(),
            &merge(&mut layers),
        )));
        let stopped = stop.clone();
        let merge_metrics = Arc::clone(&gateway_metrics);
        tokio::spawn(async move {
            loop {
                let changes = futures::future::select_all(
                    layers.iter_mut().map(|layer| Box::pin(layer.changed())),
                );
                tokio::select! {
                    (changed, _, _) = changes => if changed.is_err() { return },
                    () = stopped.cancelled() => return,
                }
                let next = balance::Balancers::rebuild(&balancers_tx.borrow(), &merge(&mut layers));
                let previous = balancers_tx.send_replace(Arc::new(next));
                // Endpoints that left take their series with them.
                merge_metrics.forget_endpoints(&previous, &balancers_tx.borrow());
            }
        });
        let health = tonic_health::server::HealthReporter::new();
        let health_service = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(health.clone()),
        );
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let verifier = Arc::new(
            omnimesh_common::auth::Verifier::load(&config.auth)
                .map_err(|error| Error::Auth(error.to_string()))?,
        );
        if !config.jwks.url.is_empty() {
            verifier.await_remote_keys();
            tokio::spawn(jwks::follow_url(
                config.jwks.clone(),
                Arc::clone(&verifier),
                jwks::JwksMetrics::register(metrics.registry_mut()),
                stop.clone(),
            ));
        }
        if let Some(path) = &config.auth.jwks_file {
            let watch = filewatch::FileWatch::new(path)
                .map_err(|error| Error::Auth(format!("watching {}: {error}", path.display())))?;
            tokio::spawn(jwks::follow_file(
                watch,
                Arc::clone(&verifier),
                stop.clone(),
            ));
        }
        let proxy = Arc::new(proxy::Proxy::new(proxy::Parts {
            live: Arc::clone(&live),
            balancers: balancers.clone(),
            catalog: proxy::MethodCatalog::from_descriptor_set(omnimesh_proto::FILE_DESCRIPTOR_SET),
            health: health_service,
            verifier: Arc::clone(&verifier),
            metrics: Arc::clone(&gateway_metrics),
            shared_limits: ratelimit::Shared::new(
                &config.redis,
                gateway_metrics.rate_limit_errors.clone(),
            ),
            export_spans: config.telemetry.otlp_endpoint.is_some(),
            max_connections_per_endpoint: config.max_connections_per_endpoint,
            max_pending_per_endpoint: config.max_pending_per_endpoint,
        }));
        tokio::spawn(health::run(
            Arc::clone(&live),
            balancers.clone(),
            health::HealthMetrics::register(metrics.registry_mut()),
            stop.clone(),
        ));
        // Idle clients' rate limit state is dropped, so memory follows active clients.
        let idle = Arc::clone(&live);
        let stopped = stop.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = every.tick() => idle.load().limiters.forget_idle(),
                    () = stopped.cancelled() => return,
                }
            }
        });
        let tls = config
            .tls
            .as_ref()
            .map(|tls| tls::acceptor(tls, stop.clone()))
            .transpose()
            .map_err(Error::Tls)?;
        let admin_service = transport::GatewayAdminService::new(
            Arc::clone(&live),
            balancers,
            gateway_metrics,
            config.admin_requires_token.then_some(verifier),
        );
        let admin = GrpcServer::builder(SERVICE, &config.server)
            .add_service(GatewayAdminServer::new(admin_service.clone()))
            .descriptor_set(omnimesh_proto::FILE_DESCRIPTOR_SET)
            .reflection(true)
            .admin_http(metrics)
            .http_routes(transport::http_routes(admin_service))
            .build()?;
        Ok(Self {
            proxy,
            live,
            health,
            drain: config.server.drain_timeout,
            header_read_timeout: config.header_read_timeout,
            tls,
            admin,
            sources: Sources {
                _registry: registry,
                _file: file,
                stop: stop.clone(),
                _tasks: stop.drop_guard(),
            },
        })
    }

    /// Reloads the configuration from `sources` (the file and environment the gateway
    /// started with) whenever the file changes and on `SIGHUP`; a refused change is
    /// logged with its reason and counted, and the serving configuration stays.
    ///
    /// # Errors
    /// When the file's directory cannot be watched.
    pub fn reload_from(self, sources: omnimesh_common::config::Sources) -> Result<Self, Error> {
        let Some(path) = sources.file().map(std::path::Path::to_owned) else {
            return Ok(self);
        };
        let mut watch = filewatch::FileWatch::new(&path)
            .map_err(|error| Error::Endpoints(format!("watching {}: {error}", path.display())))?;
        let live = Arc::clone(&self.live);
        let stop = self.sources.stop.clone();
        tokio::spawn(async move {
            let mut hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                let hung_up = async {
                    match hangup.as_mut() {
                        Some(signal) => signal.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    changed = watch.changed() => if changed.is_none() { return },
                    _ = hung_up => {}
                    () = stop.cancelled() => return,
                }
                // Refusals are logged and counted by `apply`.
                let _ = live.apply(&sources, &path.display().to_string(), None, false);
            }
        });
        Ok(self)
    }

    /// The configuration serving now (for tests and tools).
    pub fn serving(&self) -> Arc<live::Serving> {
        self.live.load()
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
                    tls: self.tls.clone(),
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
