//! The crate's error type.

use crate::runtime;

/// Why mesh-controller cannot start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The gRPC server failed to build or to serve.
    #[error(transparent)]
    Server(#[from] omnimesh_common::server::Error),
    /// The event store could not be opened or migrated.
    #[error("event store: {0}")]
    EventStore(sqlx::Error),
    /// The registry or the projections could not be rebuilt from the event log.
    #[error("rebuilding from the event log: {0}")]
    Registry(crate::events::AppendError),
    /// The token keys could not be loaded or created.
    #[error("auth keys: {0}")]
    Auth(omnimesh_common::auth::KeyError),
    /// The local runtime could not launch or keep the platform running.
    #[error(transparent)]
    Launch(#[from] runtime::local::Error),
}
