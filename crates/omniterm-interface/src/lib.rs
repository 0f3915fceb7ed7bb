//! omniterm-interface: the operator's terminal — plain English in, confirmed and audited
//! operations out — served as `omnimesh.terminal.v1.Terminal`.
//!
//! Start reading at [`App`]: [`App::build`] assembles the service from a [`Config`],
//! [`App::serve`] serves it on a listener the caller bound (tests bind `127.0.0.1:0`).
//! `transport` holds the tonic service; its RPCs answer `UNIMPLEMENTED` until the
//! interpreter and the browser terminal land.

mod config;
mod error;
pub mod nl;
pub mod repl;
mod transport;

use std::future::Future;

use omnimesh_common::server::GrpcServer;
use omnimesh_proto::terminal::v1::terminal_server::TerminalServer;
use omnimesh_telemetry::Metrics;
use tokio::net::TcpListener;

pub use config::Config;
pub use error::Error;

/// The service name used in config sections, metrics and logs.
pub const SERVICE: &str = "omniterm-interface";

/// omniterm-interface, assembled and ready to serve.
pub struct App {
    server: GrpcServer,
}

impl App {
    /// Assembles the service described by `config`.
    ///
    /// # Errors
    /// When the gRPC server cannot be assembled.
    pub async fn build(config: Config) -> Result<Self, Error> {
        let metrics = Metrics::new(SERVICE, env!("CARGO_PKG_VERSION"));
        let server = GrpcServer::builder(SERVICE, &config.server)
            .add_service(TerminalServer::new(transport::TerminalService))
            .descriptor_set(omnimesh_proto::FILE_DESCRIPTOR_SET)
            .reflection(true)
            .admin_http(metrics)
            .build()?;
        Ok(Self { server })
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
        Ok(self.server.serve(listener, shutdown).await?)
    }
}
