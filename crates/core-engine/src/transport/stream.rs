//! EncryptStream and DecryptStream: payloads of any size in constant memory.
//!
//! Request: a `header` naming the key (with associated data, and the context of a
//! derived key), then `data` parts of any size. Response: a `header` with the key
//! version, then `data` parts. The encrypted stream is `OMS1` ‖ version (u32 big-endian)
//! ‖ a c2sp.org/chunked-encryption message whose context binds that version and the
//! associated data, so relabelling, truncation, extension and reordering all fail.
//! Decrypted chunks are released as they are authenticated: a corrupt stream can yield
//! a valid prefix before its error, so a caller must not act on the output until the
//! call ends OK.

use omnimesh_proto::engine::v1 as pb;
use pb::stream_chunk::Part;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tonic::Status;
use tonic::codegen::BoxStream;

use crate::crypto::chunked::{Decryptor, Encryptor};
use crate::crypto::{self, AeadAlg};
use crate::error::EngineError;
use crate::keys::model::KeyMeta;
use crate::keys::{Keyring, Material, now_ms};

const MAGIC: &[u8; 4] = b"OMS1";
const PREFIX_LEN: usize = 8;
/// Responses buffered ahead of a slow reader (then the request side waits).
const IN_FLIGHT: usize = 4;

/// What the chunked-encryption context binds: the version and the associated data.
fn context(version: u32, associated_data: &[u8]) -> Vec<u8> {
    [
        b"omnimesh.engine.v1 stream\0".as_slice(),
        &version.to_be_bytes(),
        associated_data,
    ]
    .concat()
}

async fn first_header(
    incoming: &mut tonic::Streaming<pb::StreamChunk>,
) -> Result<pb::StreamHeader, Status> {
    match incoming.next().await.transpose()? {
        Some(pb::StreamChunk {
            part: Some(Part::Header(header)),
        }) => Ok(header),
        _ => Err(EngineError::invalid("header", "the first message must be the header").into()),
    }
}

/// The request header and its key, which must be an AEAD key.
async fn open_call(
    keyring: &Keyring,
    incoming: &mut tonic::Streaming<pb::StreamChunk>,
    what: &str,
) -> Result<(pb::StreamHeader, std::sync::Arc<KeyMeta>), Status> {
    let request = first_header(incoming).await?;
    let meta = keyring.get(&request.key_name).await?;
    if !meta.key_type.encrypts() {
        return Err(EngineError::FailedPrecondition(format!(
            "key `{}` is {}; it cannot {what}",
            meta.name,
            meta.key_type.as_str()
        ))
        .into());
    }
    Ok((request, meta))
}

/// The input key of one version for one stream: the version's key, or the key derived
/// from the context for derived keys.
fn input_key(
    meta: &KeyMeta,
    material: &Material,
    derived_context: &[u8],
) -> Result<(AeadAlg, zeroize::Zeroizing<Vec<u8>>), EngineError> {
    let Material::Aead { alg, raw, .. } = material else {
        return Err(EngineError::Internal);
    };
    let key = match (meta.derived, derived_context.is_empty()) {
        (true, true) => {
            return Err(EngineError::invalid(
                "header.context",
                "required: the key is derived",
            ));
        }
        (false, false) => {
            return Err(EngineError::invalid(
                "header.context",
                "must be empty: the key is not derived",
            ));
        }
        (true, false) => crypto::derive(raw, derived_context)?,
        (false, true) => zeroize::Zeroizing::new(raw.to_vec()),
    };
    Ok((*alg, key))
}

fn data(bytes: Vec<u8>) -> pb::StreamChunk {
    pb::StreamChunk {
        part: Some(Part::Data(bytes)),
    }
}

fn header(name: &str, version: u32) -> pb::StreamChunk {
    pb::StreamChunk {
        part: Some(Part::Header(pb::StreamHeader {
            key_name: name.to_owned(),
            key_version: version,
            ..pb::StreamHeader::default()
        })),
    }
}

fn over_limit(max: u64, got: u64) -> Status {
    EngineError::ResourceExhausted {
        limit: "limits.max_stream_bytes",
        max,
        got,
    }
    .into()
}

pub(super) async fn encrypt(
    keyring: &Keyring,
    max_bytes: u64,
    mut incoming: tonic::Streaming<pb::StreamChunk>,
) -> Result<BoxStream<pb::StreamChunk>, Status> {
    let (request, meta) = open_call(keyring, &mut incoming, "encrypt").await?;
    let version = meta.encryption_version(request.key_version, now_ms())?;
    let handle = keyring.version(&meta, version).await?;
    let (alg, key) = input_key(&meta, &handle.material, &request.context)?;
    let (encryptor, cobblestone_header) = Encryptor::new(
        alg,
        &key,
        &context(version, &request.associated_data),
        keyring.rng(),
    )?;
    keyring
        .metrics()
        .operation("encrypt_stream", meta.key_type, 1);
    let mut prefix = MAGIC.to_vec();
    prefix.extend_from_slice(&version.to_be_bytes());
    prefix.extend(cobblestone_header);
    let opening = vec![header(&meta.name, version), data(prefix)];
    Ok(pipe(incoming, opening, Vec::new(), max_bytes, encryptor))
}

pub(super) async fn decrypt(
    keyring: &Keyring,
    max_bytes: u64,
    mut incoming: tonic::Streaming<pb::StreamChunk>,
) -> Result<BoxStream<pb::StreamChunk>, Status> {
    let (request, meta) = open_call(keyring, &mut incoming, "decrypt").await?;
    // The version comes from the stream's first bytes.
    let mut pending = Vec::with_capacity(PREFIX_LEN);
    let mut rest = Vec::new();
    while pending.len() < PREFIX_LEN {
        match incoming.next().await.transpose()? {
            Some(pb::StreamChunk {
                part: Some(Part::Data(bytes)),
            }) => {
                let take = (PREFIX_LEN - pending.len()).min(bytes.len());
                pending.extend_from_slice(&bytes[..take]);
                rest = bytes[take..].to_vec();
            }
            Some(_) => {
                return Err(
                    EngineError::invalid("data", "only the first message is a header").into(),
                );
            }
            None => return Err(EngineError::DecryptionFailed.into()),
        }
    }
    if &pending[..4] != MAGIC {
        return Err(EngineError::invalid("data", "not an omnimesh encrypted stream (OMS1)").into());
    }
    let version = u32::from_be_bytes([pending[4], pending[5], pending[6], pending[7]]);
    meta.check_decryption_version(version, now_ms())?;
    let handle = keyring.version(&meta, version).await?;
    let (alg, key) = input_key(&meta, &handle.material, &request.context)?;
    let decryptor = Decryptor::new(alg, &key, &context(version, &request.associated_data))?;
    keyring
        .metrics()
        .operation("decrypt_stream", meta.key_type, 1);
    // Ciphertext is at most 1/512 (one tag per 16 KiB) plus the header above the limit.
    let limit = max_bytes.saturating_add(max_bytes / 512 + 64);
    let opening = vec![header(&meta.name, version)];
    Ok(pipe(incoming, opening, rest, limit, decryptor))
}

/// One direction of a stream: data in, data out, an end that may add the last piece.
trait Transform: Send + 'static {
    fn push(&mut self, data: &[u8]) -> Result<Vec<u8>, EngineError>;
    fn finish(self) -> Result<Vec<u8>, EngineError>;
}

impl Transform for Encryptor {
    fn push(&mut self, data: &[u8]) -> Result<Vec<u8>, EngineError> {
        Encryptor::push(self, data)
    }

    fn finish(self) -> Result<Vec<u8>, EngineError> {
        Encryptor::finish(self)
    }
}

impl Transform for Decryptor {
    fn push(&mut self, data: &[u8]) -> Result<Vec<u8>, EngineError> {
        Decryptor::push(self, data)
    }

    fn finish(self) -> Result<Vec<u8>, EngineError> {
        Decryptor::finish(self)
    }
}

/// Runs `transform` over the rest of the request in a task of its own: `opening`
/// messages first, then `first` and every data part transformed, at most `limit` input
/// bytes; any failure ends the response with its status. The bounded channel is the
/// back-pressure: a slow reader slows the request side.
fn pipe(
    mut incoming: tonic::Streaming<pb::StreamChunk>,
    opening: Vec<pb::StreamChunk>,
    first: Vec<u8>,
    limit: u64,
    mut transform: impl Transform,
) -> BoxStream<pb::StreamChunk> {
    let (sender, receiver) = mpsc::channel(IN_FLIGHT);
    tokio::spawn(async move {
        let send = |message: pb::StreamChunk| {
            let sender = sender.clone();
            async move {
                sender
                    .send(Ok(message))
                    .await
                    .map_err(|_| Status::cancelled("the caller went away"))
            }
        };
        let result: Result<(), Status> = async {
            for message in opening {
                send(message).await?;
            }
            let mut total = first.len() as u64;
            let mut input = Some(first);
            while let Some(bytes) = input.take() {
                let out = transform.push(&bytes)?;
                if !out.is_empty() {
                    send(data(out)).await?;
                }
                input = match incoming.next().await.transpose()? {
                    None => None,
                    Some(pb::StreamChunk {
                        part: Some(Part::Data(bytes)),
                    }) => Some(bytes),
                    Some(_) => {
                        return Err(EngineError::invalid(
                            "data",
                            "only the first message is a header",
                        )
                        .into());
                    }
                };
                total += input.as_ref().map_or(0, |bytes| bytes.len() as u64);
                if total > limit {
                    return Err(over_limit(limit, total));
                }
            }
            let last = transform.finish()?;
            if !last.is_empty() {
                send(data(last)).await?;
            }
            Ok(())
        }
        .await;
        if let Err(status) = result {
            let _ = sender.send(Err(status)).await;
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))
}
