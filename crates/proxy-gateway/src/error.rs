//! The crate's error type.

/// Why proxy-gateway cannot start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The gRPC server failed to build or to serve.
    #[error(transparent)]
    Server(#[from] omnimesh_common::server::Error),
}
