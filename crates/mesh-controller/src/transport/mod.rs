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

/// Who made a call: inserted into the request's extensions by the authentication layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Actor(pub(crate) String);

/// The caller recorded in events: the authenticated subject, else `anonymous`.
pub(crate) fn actor<T>(request: &tonic::Request<T>) -> String {
    request
        .extensions()
        .get::<Actor>()
        .map_or_else(|| "anonymous".to_owned(), |actor| actor.0.clone())
}

/// `omnimesh.controller.v1.Rollouts`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RolloutsService;

impl Rollouts for RolloutsService {}
