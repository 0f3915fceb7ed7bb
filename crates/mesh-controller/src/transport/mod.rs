//! The tonic implementations of the `omnimesh.controller.v1` services.
//!
//! `Events` serves the event store; `Registry`, `Rollouts` and `Runtime` answer
//! `UNIMPLEMENTED` (the generated default of each method) until they land.

mod events;

use omnimesh_proto::controller::v1::registry_server::Registry;
use omnimesh_proto::controller::v1::rollouts_server::Rollouts;
use omnimesh_proto::controller::v1::runtime_server::Runtime;

pub(crate) use events::EventsService;
pub(crate) use omnimesh_common::time::timestamp;

/// `omnimesh.controller.v1.Registry`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RegistryService;

impl Registry for RegistryService {}

/// `omnimesh.controller.v1.Rollouts`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RolloutsService;

impl Rollouts for RolloutsService {}

/// `omnimesh.controller.v1.Runtime`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RuntimeService;

impl Runtime for RuntimeService {}
