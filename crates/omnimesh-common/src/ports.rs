//! The local default addresses, as SPEC fixes them; every one is configurable.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

const fn local(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// proxy-gateway's data plane: HTTP/1.1 and h2c (gRPC, gRPC-Web, WebSocket, the terminal page).
pub const PROXY_GATEWAY_HTTP: SocketAddr = local(8080);
/// proxy-gateway's admin API (GatewayAdmin, health, reflection, `/metrics`).
pub const PROXY_GATEWAY_ADMIN: SocketAddr = local(9901);
/// core-engine's gRPC (and HTTP `/healthz`, `/readyz`, `/metrics`) port.
pub const CORE_ENGINE_GRPC: SocketAddr = local(50051);
/// mesh-controller's gRPC (and HTTP) port.
pub const MESH_CONTROLLER_GRPC: SocketAddr = local(50052);
/// omniterm-interface's gRPC (and HTTP) port.
pub const OMNITERM_INTERFACE_GRPC: SocketAddr = local(50053);
