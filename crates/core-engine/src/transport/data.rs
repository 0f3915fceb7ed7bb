//! The data operations: batch-native, one result or error per item, `reference` echoed.
//! Whole-request problems (unknown key, wrong key type, version below a minimum for the
//! version asked for) fail the call; problems of one item fail only that item.

use std::collections::HashMap;
use std::sync::Arc;

use omnimesh_proto::engine::v1 as pb;

use super::convert;
use crate::crypto::{self, AeadKey, envelope};
use crate::error::EngineError;
use crate::keys::model::{KeyMeta, KeyType};
use crate::keys::{Keyring, Material, VersionHandle, now_ms};

/// Batches whose payload is larger than this run on the blocking pool, not on a tokio
/// worker.
const INLINE_BYTES: usize = 256 * 1024;

async fn off_the_runtime<T: Send + 'static>(
    bytes: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, EngineError> {
    if bytes <= INLINE_BYTES {
        Ok(work())
    } else {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|_| EngineError::Internal)
    }
}

fn require(meta: &KeyMeta, ok: bool, what: &str) -> Result<(), EngineError> {
    if ok {
        Ok(())
    } else {
        Err(EngineError::FailedPrecondition(format!(
            "key `{}` is {}; it cannot {what}",
            meta.name,
            meta.key_type.as_str()
        )))
    }
}

/// The key named by a request, checked for the operation and counted in the metrics.
async fn key_for(
    keyring: &Keyring,
    name: &str,
    able: fn(KeyType) -> bool,
    what: &str,
    operation: &'static str,
    items: usize,
) -> Result<std::sync::Arc<KeyMeta>, EngineError> {
    let meta = keyring.get(name).await?;
    require(&meta, able(meta.key_type), what)?;
    keyring.metrics().operation(operation, meta.key_type, items);
    Ok(meta)
}

/// Runs `f` with the AEAD key for an item: the version's key, or one derived from
/// `context` for derived keys.
fn with_aead<R>(
    handle: &VersionHandle,
    derived: bool,
    context: &[u8],
    index: usize,
    f: impl FnOnce(&AeadKey) -> Result<R, EngineError>,
) -> Result<R, EngineError> {
    let Material::Aead { alg, key, raw } = &handle.material else {
        return Err(EngineError::Internal);
    };
    match (derived, context.is_empty()) {
        (true, true) => Err(EngineError::invalid(
            format!("items[{index}].context"),
            "required: the key is derived",
        )),
        (false, false) => Err(EngineError::invalid(
            format!("items[{index}].context"),
            "must be empty: the key is not derived",
        )),
        (true, false) => f(&AeadKey::new(*alg, &crypto::derive(raw, context)?)?),
        (false, true) => f(key),
    }
}

/// What seals a batch's items: a version's handle, whether the key is derived, its
/// number, and the buffers each item reuses (wiped when the batch is done: a sealing
/// that fails may leave plaintext in `body`).
struct SealWith<'a> {
    handle: &'a VersionHandle,
    derived: bool,
    version: u32,
    aad: Vec<u8>,
    body: zeroize::Zeroizing<Vec<u8>>,
}

impl<'a> SealWith<'a> {
    fn new(handle: &'a VersionHandle, derived: bool, version: u32) -> Self {
        Self {
            handle,
            derived,
            version,
            aad: Vec::new(),
            body: zeroize::Zeroizing::new(Vec::new()),
        }
    }

    fn seal(
        &mut self,
        nonce: [u8; crypto::NONCE_LEN],
        index: usize,
        plaintext: &[u8],
        associated_data: &[u8],
        context: &[u8],
    ) -> Result<String, EngineError> {
        let version = self.version;
        let (aad, body) = (&mut self.aad, &mut *self.body);
        with_aead(self.handle, self.derived, context, index, |key| {
            envelope::aad_into(version, associated_data, aad);
            key.seal_body_into(nonce, aad, plaintext, body)?;
            Ok(envelope::format(version, body))
        })
    }
}

fn encrypt_result(
    reference: String,
    version: u32,
    outcome: Result<String, EngineError>,
) -> pb::EncryptResult {
    pb::EncryptResult {
        reference,
        key_version: version,
        outcome: Some(match outcome {
            Ok(ciphertext) => pb::encrypt_result::Outcome::Ciphertext(ciphertext),
            Err(error) => pb::encrypt_result::Outcome::Error(convert::item_error(&error)),
        }),
    }
}

pub(super) async fn encrypt(
    keyring: &Keyring,
    request: pb::EncryptRequest,
) -> Result<Vec<pb::EncryptResult>, EngineError> {
    let meta = key_for(
        keyring,
        &request.key_name,
        KeyType::encrypts,
        "encrypt",
        "encrypt",
        request.items.len(),
    )
    .await?;
    let version = meta.encryption_version(request.key_version, now_ms())?;
    let handle = keyring.version(&meta, version).await?;
    keyring.reserve_seals(&meta, version, &handle, request.items.len() as u64)?;
    let bytes = request.items.iter().map(|item| item.plaintext.len()).sum();
    let derived = meta.derived;
    let nonces = crypto::nonces(keyring.rng(), request.items.len())?;
    off_the_runtime(bytes, move || {
        let mut with = SealWith::new(&handle, derived, version);
        request
            .items
            .into_iter()
            .zip(nonces)
            .enumerate()
            .map(|(index, (item, nonce))| {
                let outcome = with.seal(
                    nonce,
                    index,
                    &item.plaintext,
                    &item.associated_data,
                    &item.context,
                );
                encrypt_result(item.reference, version, outcome)
            })
            .collect()
    })
    .await
}

/// Per version: its handle, or why it cannot be used.
type Handles = HashMap<u32, Result<Arc<VersionHandle>, EngineError>>;

/// The handles of every version the parsed items need, or why each cannot be used.
async fn handles_for(
    keyring: &Keyring,
    meta: &KeyMeta,
    versions: impl Iterator<Item = u32>,
) -> Handles {
    let mut handles = HashMap::new();
    let now = now_ms();
    for version in versions {
        if handles.contains_key(&version) {
            continue;
        }
        let handle = match meta.check_decryption_version(version, now) {
            Ok(()) => keyring.version(meta, version).await,
            Err(error) => Err(error),
        };
        handles.insert(version, handle);
    }
    handles
}

struct Sealed {
    version: u32,
    body: Vec<u8>,
}

/// Opens an item in its decoded buffer; `aad` is a buffer the batch reuses.
fn open(
    handles: &Handles,
    derived: bool,
    index: usize,
    parsed: Result<Sealed, EngineError>,
    associated_data: &[u8],
    context: &[u8],
    aad: &mut Vec<u8>,
) -> Result<Vec<u8>, EngineError> {
    let sealed = parsed?;
    let handle = handles
        .get(&sealed.version)
        .ok_or(EngineError::Internal)?
        .as_ref()
        .map_err(Clone::clone)?;
    with_aead(handle, derived, context, index, |key| {
        envelope::aad_into(sealed.version, associated_data, aad);
        key.open_body(aad, sealed.body)
    })
}

/// Every item's ciphertext parsed, and the handles of the versions they need.
async fn parse_all<'a>(
    keyring: &Keyring,
    meta: &KeyMeta,
    ciphertexts: impl Iterator<Item = &'a String>,
) -> (Vec<Result<Sealed, EngineError>>, Handles) {
    let parsed: Vec<Result<Sealed, EngineError>> = ciphertexts
        .enumerate()
        .map(|(index, ciphertext)| parse(index, ciphertext))
        .collect();
    let versions = parsed
        .iter()
        .filter_map(|p| p.as_ref().ok())
        .map(|s| s.version);
    let handles = handles_for(keyring, meta, versions).await;
    (parsed, handles)
}

fn parse(index: usize, ciphertext: &str) -> Result<Sealed, EngineError> {
    envelope::parse(format_args!("items[{index}].ciphertext"), ciphertext)
        .map(|(version, body)| Sealed { version, body })
}

pub(super) async fn decrypt(
    keyring: &Keyring,
    request: pb::DecryptRequest,
) -> Result<Vec<pb::DecryptResult>, EngineError> {
    let meta = key_for(
        keyring,
        &request.key_name,
        KeyType::encrypts,
        "decrypt",
        "decrypt",
        request.items.len(),
    )
    .await?;
    let (parsed, handles) = parse_all(
        keyring,
        &meta,
        request.items.iter().map(|item| &item.ciphertext),
    )
    .await;
    let bytes = request.items.iter().map(|item| item.ciphertext.len()).sum();
    let derived = meta.derived;
    off_the_runtime(bytes, move || {
        let mut aad = Vec::new();
        request
            .items
            .into_iter()
            .zip(parsed)
            .enumerate()
            .map(|(index, (item, parsed))| {
                let outcome = open(
                    &handles,
                    derived,
                    index,
                    parsed,
                    &item.associated_data,
                    &item.context,
                    &mut aad,
                );
                pb::DecryptResult {
                    reference: item.reference,
                    outcome: Some(match outcome {
                        Ok(plaintext) => pb::decrypt_result::Outcome::Plaintext(plaintext),
                        Err(error) => {
                            pb::decrypt_result::Outcome::Error(convert::item_error(&error))
                        }
                    }),
                }
            })
            .collect()
    })
    .await
}

pub(super) async fn rewrap(
    keyring: &Keyring,
    request: pb::RewrapRequest,
) -> Result<Vec<pb::EncryptResult>, EngineError> {
    let meta = key_for(
        keyring,
        &request.key_name,
        KeyType::encrypts,
        "rewrap",
        "rewrap",
        request.items.len(),
    )
    .await?;
    let latest = meta.encryption_version(0, now_ms())?;
    let target = keyring.version(&meta, latest).await?;
    keyring.reserve_seals(&meta, latest, &target, request.items.len() as u64)?;
    let (parsed, handles) = parse_all(
        keyring,
        &meta,
        request.items.iter().map(|item| &item.ciphertext),
    )
    .await;
    let bytes = request.items.iter().map(|item| item.ciphertext.len()).sum();
    let derived = meta.derived;
    let nonces = crypto::nonces(keyring.rng(), request.items.len())?;
    off_the_runtime(bytes, move || {
        let mut with = SealWith::new(&target, derived, latest);
        let mut aad = Vec::new();
        request
            .items
            .into_iter()
            .zip(parsed)
            .zip(nonces)
            .enumerate()
            .map(|(index, ((item, parsed), nonce))| {
                let outcome = open(
                    &handles,
                    derived,
                    index,
                    parsed,
                    &item.associated_data,
                    &item.context,
                    &mut aad,
                )
                .and_then(|plaintext| {
                    let plaintext = zeroize::Zeroizing::new(plaintext);
                    with.seal(
                        nonce,
                        index,
                        &plaintext,
                        &item.associated_data,
                        &item.context,
                    )
                });
                encrypt_result(item.reference, latest, outcome)
            })
            .collect()
    })
    .await
}

pub(super) async fn generate_data_key(
    keyring: &Keyring,
    request: pb::GenerateDataKeyRequest,
) -> Result<pb::GenerateDataKeyResponse, EngineError> {
    let bits = match request.bits {
        0 => 256,
        bits @ (128 | 256 | 512) => bits,
        _ => return Err(EngineError::invalid("bits", "one of 128, 256, 512")),
    };
    let meta = key_for(
        keyring,
        &request.key_name,
        KeyType::encrypts,
        "wrap data keys",
        "generate_data_key",
        1,
    )
    .await?;
    let version = meta.encryption_version(0, now_ms())?;
    let handle = keyring.version(&meta, version).await?;
    keyring.reserve_seals(&meta, version, &handle, 1)?;
    let plaintext = crypto::random(keyring.rng(), bits as usize / 8)?;
    let ciphertext = SealWith::new(&handle, meta.derived, version)
        .seal(
            crypto::nonces(keyring.rng(), 1)?[0],
            0,
            &plaintext,
            b"",
            &request.context,
        )
        .map_err(|error| match error {
            EngineError::InvalidArgument { reason, .. } => EngineError::invalid("context", reason),
            other => other,
        })?;
    Ok(pb::GenerateDataKeyResponse {
        plaintext: if request.wrapped_only {
            Vec::new()
        } else {
            plaintext.to_vec()
        },
        ciphertext,
        key_version: version,
    })
}

pub(super) async fn sign(
    keyring: &Keyring,
    request: pb::SignRequest,
) -> Result<Vec<pb::SignResult>, EngineError> {
    let meta = key_for(
        keyring,
        &request.key_name,
        KeyType::signs,
        "sign",
        "sign",
        request.items.len(),
    )
    .await?;
    let encoding = convert::encoding(request.encoding)?;
    let version = meta.encryption_version(request.key_version, now_ms())?;
    let handle = keyring.version(&meta, version).await?;
    let Material::Signer(signer) = &handle.material else {
        return Err(EngineError::Internal);
    };
    let rng = keyring.rng();
    Ok(request
        .items
        .into_iter()
        .map(|item| pb::SignResult {
            reference: item.reference,
            outcome: Some(match signer.sign(rng, &item.message, encoding) {
                Ok(signature) => {
                    pb::sign_result::Outcome::Signature(envelope::format(version, &signature))
                }
                Err(error) => pb::sign_result::Outcome::Error(convert::item_error(&error)),
            }),
        })
        .collect())
}

fn verify_result(reference: String, outcome: Result<bool, EngineError>) -> pb::VerifyResult {
    pb::VerifyResult {
        reference,
        outcome: Some(match outcome {
            Ok(valid) => pb::verify_result::Outcome::Valid(valid),
            Err(error) => pb::verify_result::Outcome::Error(convert::item_error(&error)),
        }),
    }
}

pub(super) async fn verify(
    keyring: &Keyring,
    request: pb::VerifyRequest,
) -> Result<Vec<pb::VerifyResult>, EngineError> {
    let meta = key_for(
        keyring,
        &request.key_name,
        KeyType::signs,
        "verify signatures",
        "verify",
        request.items.len(),
    )
    .await?;
    let encoding = convert::encoding(request.encoding)?;
    let now = now_ms();
    Ok(request
        .items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let outcome =
                envelope::parse(format_args!("items[{index}].signature"), &item.signature)
                    .and_then(|(version, signature)| {
                        meta.check_decryption_version(version, now).map_err(
                            |error| match error {
                                EngineError::DecryptionFailed => EngineError::invalid(
                                    format!("items[{index}].signature"),
                                    format!("key `{}` has no version {version}", meta.name),
                                ),
                                other => other,
                            },
                        )?;
                        let public_key = meta
                            .versions
                            .iter()
                            .find(|v| v.version == version)
                            .and_then(|v| v.public_key.as_deref())
                            .ok_or(EngineError::Internal)?;
                        Ok(match meta.key_type {
                            KeyType::Ed25519 => {
                                crypto::verify_ed25519(public_key, &item.message, &signature)
                            }
                            _ => {
                                crypto::verify_p256(public_key, &item.message, &signature, encoding)
                            }
                        })
                    });
            verify_result(item.reference, outcome)
        })
        .collect())
}

fn hmac_key(handle: &VersionHandle) -> Result<&[u8], EngineError> {
    match &handle.material {
        Material::Hmac(raw) => Ok(raw),
        _ => Err(EngineError::Internal),
    }
}

pub(super) async fn hmac(
    keyring: &Keyring,
    request: pb::HmacRequest,
) -> Result<Vec<pb::HmacResult>, EngineError> {
    let meta = key_for(
        keyring,
        &request.key_name,
        |key_type| key_type == KeyType::HmacSha256,
        "compute HMACs",
        "hmac",
        request.items.len(),
    )
    .await?;
    let version = meta.encryption_version(request.key_version, now_ms())?;
    let handle = keyring.version(&meta, version).await?;
    let key = hmac_key(&handle)?;
    Ok(request
        .items
        .into_iter()
        .map(|item| pb::HmacResult {
            reference: item.reference,
            outcome: Some(pb::hmac_result::Outcome::Hmac(envelope::format(
                version,
                &crypto::hmac_sha256(key, &item.message),
            ))),
        })
        .collect())
}

pub(super) async fn verify_hmac(
    keyring: &Keyring,
    request: pb::VerifyHmacRequest,
) -> Result<Vec<pb::VerifyResult>, EngineError> {
    let meta = key_for(
        keyring,
        &request.key_name,
        |key_type| key_type == KeyType::HmacSha256,
        "verify HMACs",
        "verify_hmac",
        request.items.len(),
    )
    .await?;
    let parsed: Vec<Result<(u32, Vec<u8>), EngineError>> = request
        .items
        .iter()
        .enumerate()
        .map(|(index, item)| envelope::parse(format_args!("items[{index}].hmac"), &item.hmac))
        .collect();
    let handles = handles_for(
        keyring,
        &meta,
        parsed
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .map(|(v, _)| *v),
    )
    .await;
    Ok(request
        .items
        .into_iter()
        .zip(parsed)
        .enumerate()
        .map(|(index, (item, parsed))| {
            let outcome = parsed.and_then(|(version, tag)| {
                let handle = handles
                    .get(&version)
                    .ok_or(EngineError::Internal)?
                    .as_ref()
                    .map_err(|error| match error {
                        EngineError::DecryptionFailed => EngineError::invalid(
                            format!("items[{index}].hmac"),
                            format!("key `{}` has no version {version}", meta.name),
                        ),
                        other => other.clone(),
                    })?;
                Ok(crypto::verify_hmac_sha256(
                    hmac_key(handle)?,
                    &item.message,
                    &tag,
                ))
            });
            verify_result(item.reference, outcome)
        })
        .collect())
}

pub(super) async fn describe(
    keyring: &Keyring,
    request: pb::DescribeCiphertextRequest,
) -> Result<pb::DescribeCiphertextResponse, EngineError> {
    let (version, body) = envelope::parse("ciphertext", &request.ciphertext)?;
    let overhead = crypto::NONCE_LEN + crypto::TAG_LEN;
    if body.len() < overhead {
        return Err(EngineError::invalid(
            "ciphertext",
            format!(
                "the body is {} bytes; a ciphertext has at least {overhead}",
                body.len()
            ),
        ));
    }
    let key_type = if request.key_name.is_empty() {
        0
    } else {
        let meta = keyring.get(&request.key_name).await?;
        if version > meta.latest_version {
            return Err(EngineError::invalid(
                "ciphertext",
                format!("key `{}` has no version {version}", meta.name),
            ));
        }
        convert::key_type_number(meta.key_type)
    };
    Ok(pb::DescribeCiphertextResponse {
        key_version: version,
        key_type,
        plaintext_length: (body.len() - overhead) as u64,
    })
}
