//! The tonic implementation of `omnimesh.terminal.v1.Terminal`.

use omnimesh_proto::terminal::v1::terminal_server::Terminal;

/// `omnimesh.terminal.v1.Terminal`; every RPC answers `UNIMPLEMENTED` for now (the
/// generated default of each method).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TerminalService;

impl Terminal for TerminalService {}
