//! The tonic implementations of the `omnimesh.controller.v1` services.
//!
//! `Events` serves the event store, `Registry` the registry and `Runtime` the local
//! runtime; `Rollouts` answers `UNIMPLEMENTED` (the generated default of each method)
//! until progressive delivery lands.

mod events;
mod registry;
mod runtime;

use omnimesh_proto::controller::v1::rollouts_server::Rollouts;

pub(crate) use events::EventsService;
pub(crate) use omnimesh_common::time::timestamp;
pub(crate) use registry::RegistryService;
pub(crate) use runtime::RuntimeService;

/// The caller of a mutating RPC, recorded as the actor of its events: it must hold an
/// operator (or admin) token.
pub(crate) fn operator<T>(request: &tonic::Request<T>) -> Result<String, tonic::Status> {
    omnimesh_common::auth::require(request, omnimesh_common::auth::Role::Operator)
        .map(|identity| identity.subject)
}

/// `omnimesh.controller.v1.Rollouts`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RolloutsService;

impl Rollouts for RolloutsService {}
