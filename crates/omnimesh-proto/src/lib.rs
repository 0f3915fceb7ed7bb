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

/// The protobuf codec of every OmniMesh service: tonic-prost's, with buffers sized for
/// the message instead of grown by doubling.
pub mod codec {
    use std::marker::PhantomData;

    use prost::Message;
    use tonic::Status;
    use tonic::codec::{BufferSettings, EncodeBuf, Encoder};

    /// The buffer a call starts with, to encode into or decode from (tonic's default is
    /// 8 KiB). tonic 0.14.9 appends each received DATA frame to it, then reserves the
    /// message's whole length again although the message is already there (fixed
    /// upstream after 0.14.9, grpc/grpc-rust pull request 2735): a buffer smaller than
    /// twice a message is reallocated and the message copied once more. 256 KiB keeps
    /// messages up to 128 KiB to one copy (the engine's batched Encrypt: 5–7 % more
    /// items/s), and a larger one being encoded grows once, to its size, rather than by
    /// doubling. It is address space until written: a unary call with a small message
    /// touches only the pages that message fills, while a long stream walks through
    /// the whole buffer over its messages and keeps 256 KiB resident while it lasts.
    const BUFFER_SIZE: usize = 256 * 1024;

    /// Messages are flushed to the connection once this much is buffered (tonic's
    /// default).
    const YIELD_THRESHOLD: usize = 32 * 1024;

    fn settings() -> BufferSettings {
        BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
    }

    /// The codec named in the generated clients and servers.
    #[derive(Debug, Clone, Copy)]
    pub struct Codec<T, U>(PhantomData<(T, U)>);

    impl<T, U> Default for Codec<T, U> {
        fn default() -> Self {
            Self(PhantomData)
        }
    }

    impl<T, U> tonic::codec::Codec for Codec<T, U>
    where
        T: Message + Send + 'static,
        U: Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = SizedEncoder<T>;
        type Decoder = tonic_prost::ProstDecoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            SizedEncoder(PhantomData)
        }

        fn decoder(&mut self) -> Self::Decoder {
            tonic_prost::ProstDecoder::new(settings())
        }
    }

    /// Reserves the encoded length before encoding, so that a large message is written
    /// into one allocation instead of being copied at every doubling of the buffer.
    #[derive(Debug, Clone, Copy)]
    pub struct SizedEncoder<T>(PhantomData<T>);

    impl<T: Message> Encoder for SizedEncoder<T> {
        type Item = T;
        type Error = Status;

        fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
            buf.reserve(item.encoded_len());
            item.encode(buf)
                .map_err(|error| Status::internal(format!("encoding a message: {error}")))
        }

        fn buffer_settings(&self) -> BufferSettings {
            settings()
        }
    }
}
