//! The tonic implementation of `omnimesh.engine.v1.Engine`.

use omnimesh_proto::engine::v1::engine_server::Engine;

/// `omnimesh.engine.v1.Engine`; every RPC answers `UNIMPLEMENTED` for now (the
/// generated default of each method).
#[derive(Debug, Clone, Copy)]
pub(crate) struct EngineService;

impl Engine for EngineService {}
