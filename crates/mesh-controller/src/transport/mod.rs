//! The tonic implementations of the `omnimesh.controller.v1` services.
//!
//! Every RPC answers `UNIMPLEMENTED` for now (the generated default of each method).

use omnimesh_proto::controller::v1::events_server::Events;
use omnimesh_proto::controller::v1::registry_server::Registry;
use omnimesh_proto::controller::v1::rollouts_server::Rollouts;
use omnimesh_proto::controller::v1::runtime_server::Runtime;

/// `omnimesh.controller.v1.Registry`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RegistryService;

impl Registry for RegistryService {}

/// `omnimesh.controller.v1.Events`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EventsService;

impl Events for EventsService {}

/// `omnimesh.controller.v1.Rollouts`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RolloutsService;

impl Rollouts for RolloutsService {}

/// `omnimesh.controller.v1.Runtime`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RuntimeService;

impl Runtime for RuntimeService {}
