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

mod config;
mod error;
mod transport;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;

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
    data_plane: GrpcServer,
    admin: GrpcServer,
}

impl App {
    /// Assembles the gateway described by `config`.
    ///
    /// # Errors
    /// When a server cannot be assembled.
    pub async fn build(config: Config) -> Result<Self, Error> {
        let data_plane = GrpcServer::builder(SERVICE, &config.server).build()?;
        let metrics = Metrics::new(SERVICE, env!("CARGO_PKG_VERSION"));
        let admin = GrpcServer::builder(SERVICE, &config.server)
            .add_service(GatewayAdminServer::new(transport::GatewayAdminService))
            .descriptor_set(omnimesh_proto::FILE_DESCRIPTOR_SET)
            .reflection(true)
            .admin_http(metrics)
            .build()?;
        Ok(Self { data_plane, admin })
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
                Ok::<(), Error>(
                    self.data_plane
                        .serve(listeners.http, data_plane_stop)
                        .await?,
                )
            },
            async { Ok::<(), Error>(self.admin.serve(listeners.admin, admin_stop).await?) },
        )?;
        Ok(())
    }
}
