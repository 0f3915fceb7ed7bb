//! The tonic implementation of `omnimesh.gateway.v1.GatewayAdmin`.

use omnimesh_proto::gateway::v1::gateway_admin_server::GatewayAdmin;

/// `omnimesh.gateway.v1.GatewayAdmin`; every RPC answers `UNIMPLEMENTED` for now (the
/// generated default of each method).
#[derive(Debug, Clone, Copy)]
pub(crate) struct GatewayAdminService;

impl GatewayAdmin for GatewayAdminService {}
