//! Proto messages ⇄ the keyring's types.

use omnimesh_common::time::timestamp;
use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use omnimesh_proto::engine::v1 as pb;

use crate::crypto::{EcdsaEncoding, HashAlg};
use crate::error::EngineError;
use crate::keys::model::{ConfigUpdate, KeyMeta, KeyType, Retention, VersionState};

pub(super) fn key_type(value: i32) -> Result<KeyType, EngineError> {
    match pb::KeyType::try_from(value) {
        Ok(pb::KeyType::Unspecified | pb::KeyType::Aes256Gcm) => Ok(KeyType::Aes256Gcm),
        Ok(pb::KeyType::Chacha20Poly1305) => Ok(KeyType::ChaCha20Poly1305),
        Ok(pb::KeyType::Ed25519) => Ok(KeyType::Ed25519),
        Ok(pb::KeyType::EcdsaP256) => Ok(KeyType::EcdsaP256),
        Ok(pb::KeyType::HmacSha256) => Ok(KeyType::HmacSha256),
        Err(_) => Err(EngineError::invalid(
            "type",
            format!("unknown key type {value}"),
        )),
    }
}

fn key_type_to_pb(key_type: KeyType) -> pb::KeyType {
    match key_type {
        KeyType::Aes256Gcm => pb::KeyType::Aes256Gcm,
        KeyType::ChaCha20Poly1305 => pb::KeyType::Chacha20Poly1305,
        KeyType::Ed25519 => pb::KeyType::Ed25519,
        KeyType::EcdsaP256 => pb::KeyType::EcdsaP256,
        KeyType::HmacSha256 => pb::KeyType::HmacSha256,
    }
}

pub(super) fn key_type_number(key_type: KeyType) -> i32 {
    key_type_to_pb(key_type) as i32
}

fn retention(policy: &pb::RetentionPolicy) -> Retention {
    Retention {
        keep_last: policy.keep_last_versions,
        max_age: (policy.max_age_seconds > 0).then(|| Duration::from_secs(policy.max_age_seconds)),
    }
}

/// The settings a new key may be created with (its minimums can only be 1 or "latest").
pub(super) fn create_config(config: &pb::KeyConfig) -> ConfigUpdate {
    ConfigUpdate {
        min_decryption_version: (config.min_decryption_version != 0)
            .then_some(config.min_decryption_version),
        min_encryption_version: (config.min_encryption_version != 0)
            .then_some(config.min_encryption_version),
        deletion_allowed: config.deletion_allowed.then_some(true),
        retention: config.retention.as_ref().map(retention),
        auto_rotate: (config.auto_rotate_period_seconds != 0)
            .then(|| Duration::from_secs(config.auto_rotate_period_seconds)),
    }
}

pub(super) fn config_update(config: &pb::KeyConfigUpdate) -> ConfigUpdate {
    ConfigUpdate {
        min_decryption_version: config.min_decryption_version,
        min_encryption_version: config.min_encryption_version,
        deletion_allowed: config.deletion_allowed,
        retention: config.retention.as_ref().map(retention),
        auto_rotate: config.auto_rotate_period_seconds.map(Duration::from_secs),
    }
}

/// The proto view of a key: metadata, per-version state and seal counts, never material.
pub(super) fn key(meta: &KeyMeta, seals: &HashMap<u32, u64>, now_ms: i64) -> pb::Key {
    let versions = meta
        .versions
        .iter()
        .map(|version| pb::KeyVersion {
            version: version.version,
            state: match meta.state(version.version, now_ms) {
                VersionState::Active => pb::KeyVersionState::Active,
                VersionState::DecryptOnly => pb::KeyVersionState::DecryptOnly,
                VersionState::Retired => pb::KeyVersionState::Retired,
                VersionState::Destroyed => pb::KeyVersionState::Destroyed,
            } as i32,
            created_at: Some(timestamp(version.created_at_ms)),
            public_key: version.public_key.clone().unwrap_or_default(),
            seal_count: seals.get(&version.version).copied().unwrap_or_default(),
        })
        .collect();
    pb::Key {
        name: meta.name.clone(),
        r#type: key_type_number(meta.key_type),
        config: Some(pb::KeyConfig {
            min_decryption_version: meta.min_decryption_version,
            min_encryption_version: meta.min_encryption_version,
            deletion_allowed: meta.deletion_allowed,
            retention: Some(pb::RetentionPolicy {
                keep_last_versions: meta.retention.keep_last,
                max_age_seconds: meta.retention.max_age.map_or(0, |age| age.as_secs()),
            }),
            auto_rotate_period_seconds: meta.auto_rotate.map_or(0, |period| period.as_secs()),
        }),
        latest_version: meta.latest_version,
        versions,
        derived: meta.derived,
        exportable: false,
        created_at: Some(timestamp(meta.created_at_ms)),
        updated_at: Some(timestamp(meta.updated_at_ms)),
        min_available_version: meta.min_available_version,
        effective_min_decryption_version: meta.effective_min_decryption(now_ms),
    }
}

/// The key name a page token stands for ("" for the first page).
pub(super) fn page_token(token: &str) -> Result<String, EngineError> {
    if token.is_empty() {
        return Ok(String::new());
    }
    let invalid = || EngineError::invalid("page_token", "not a token from a previous page");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let name = String::from_utf8(bytes).map_err(|_| invalid())?;
    crate::keys::model::validate_name("page_token", &name).map_err(|_| invalid())?;
    Ok(name)
}

pub(super) fn next_page_token(last: &str) -> String {
    URL_SAFE_NO_PAD.encode(last)
}

pub(super) fn hash_algorithm(value: i32) -> Result<HashAlg, EngineError> {
    match pb::HashAlgorithm::try_from(value) {
        Ok(pb::HashAlgorithm::Sha256) => Ok(HashAlg::Sha256),
        Ok(pb::HashAlgorithm::Sha384) => Ok(HashAlg::Sha384),
        Ok(pb::HashAlgorithm::Sha512) => Ok(HashAlg::Sha512),
        _ => Err(EngineError::invalid(
            "algorithm",
            "one of HASH_ALGORITHM_SHA256, _SHA384, _SHA512",
        )),
    }
}

pub(super) fn encoding(value: i32) -> Result<EcdsaEncoding, EngineError> {
    match pb::SignatureEncoding::try_from(value) {
        Ok(pb::SignatureEncoding::Unspecified | pb::SignatureEncoding::Der) => {
            Ok(EcdsaEncoding::Der)
        }
        Ok(pb::SignatureEncoding::Fixed) => Ok(EcdsaEncoding::Fixed),
        Err(_) => Err(EngineError::invalid(
            "encoding",
            format!("unknown encoding {value}"),
        )),
    }
}

pub(super) fn item_error(error: &EngineError) -> pb::ItemError {
    pb::ItemError {
        code: error.code() as i32,
        message: error.to_string(),
    }
}
