//! The crate's error type.

/// Why proxy-gateway cannot start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The gRPC server failed to build or to serve.
    #[error(transparent)]
    Server(#[from] omnimesh_common::server::Error),
    /// The registry address is unusable.
    #[error("upstreams.registry: {0}")]
    Registry(String),
    /// The endpoints or configuration file cannot be read or watched.
    #[error("upstreams.endpoints_file: {0}")]
    Endpoints(String),
    /// The TLS certificate or key cannot be used.
    #[error("tls: {0}")]
    Tls(String),
    /// The token keys could not be loaded or created.
    #[error("auth keys: {0}")]
    Auth(String),
    /// The data plane's listener failed.
    #[error("data plane: {0}")]
    DataPlane(std::io::Error),
}
