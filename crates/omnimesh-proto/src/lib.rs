//! Generated tonic/prost code for the OmniMesh wire contracts, and nothing else.
//!
//! One module per proto package (`omnimesh.engine.v1` is [`engine::v1`]), plus
//! [`FILE_DESCRIPTOR_SET`] for gRPC server reflection. The sources of truth are the
//! files under `proto/omnimesh/` at the root of the workspace.

/// The encoded `FileDescriptorSet` of every OmniMesh proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/omnimesh_descriptor.bin"));

/// `omnimesh.engine.*`: core-engine.
pub mod engine {
    /// `omnimesh.engine.v1`.
    #[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)] // Generated code.
    pub mod v1 {
        tonic::include_proto!("omnimesh.engine.v1");
    }
}

/// `omnimesh.gateway.*`: proxy-gateway administration.
pub mod gateway {
    /// `omnimesh.gateway.v1`.
    #[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)] // Generated code.
    pub mod v1 {
        tonic::include_proto!("omnimesh.gateway.v1");
    }
}

/// `omnimesh.controller.*`: mesh-controller.
pub mod controller {
    /// `omnimesh.controller.v1`.
    #[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)] // Generated code.
    pub mod v1 {
        tonic::include_proto!("omnimesh.controller.v1");
    }
}

/// `omnimesh.terminal.*`: omniterm-interface.
pub mod terminal {
    /// `omnimesh.terminal.v1`.
    #[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)] // Generated code.
    pub mod v1 {
        tonic::include_proto!("omnimesh.terminal.v1");
    }
}

/// Fully-qualified gRPC service names, as reflection and health checks use them.
pub mod service_names {
    /// `omnimesh.engine.v1.Engine`.
    pub const ENGINE: &str = "omnimesh.engine.v1.Engine";
    /// `omnimesh.gateway.v1.GatewayAdmin`.
    pub const GATEWAY_ADMIN: &str = "omnimesh.gateway.v1.GatewayAdmin";
    /// `omnimesh.controller.v1.Registry`.
    pub const CONTROLLER_REGISTRY: &str = "omnimesh.controller.v1.Registry";
    /// `omnimesh.controller.v1.Events`.
    pub const CONTROLLER_EVENTS: &str = "omnimesh.controller.v1.Events";
    /// `omnimesh.controller.v1.Rollouts`.
    pub const CONTROLLER_ROLLOUTS: &str = "omnimesh.controller.v1.Rollouts";
    /// `omnimesh.controller.v1.Runtime`.
    pub const CONTROLLER_RUNTIME: &str = "omnimesh.controller.v1.Runtime";
    /// `omnimesh.terminal.v1.Terminal`.
    pub const TERMINAL: &str = "omnimesh.terminal.v1.Terminal";
}
