//! Keys without IO: types, versions and the Vault Transit rules over them.
//!
//! Everything here is a pure function of a key's metadata and the time; the keyring
//! loads, persists and caches around it.

use std::time::Duration;

use crate::error::EngineError;

/// The algorithm of a key; fixed at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum KeyType {
    Aes256Gcm,
    ChaCha20Poly1305,
    Ed25519,
    EcdsaP256,
    HmacSha256,
}

impl KeyType {
    pub(crate) const ALL: [KeyType; 5] = [
        KeyType::Aes256Gcm,
        KeyType::ChaCha20Poly1305,
        KeyType::Ed25519,
        KeyType::EcdsaP256,
        KeyType::HmacSha256,
    ];

    /// The stored (and metric label) name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            KeyType::Aes256Gcm => "aes256-gcm",
            KeyType::ChaCha20Poly1305 => "chacha20-poly1305",
            KeyType::Ed25519 => "ed25519",
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::HmacSha256 => "hmac-sha256",
        }
    }

    pub(crate) fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|key_type| key_type.as_str() == name)
    }

    /// Whether it encrypts (the AEAD types).
    pub(crate) fn encrypts(self) -> bool {
        matches!(self, KeyType::Aes256Gcm | KeyType::ChaCha20Poly1305)
    }

    /// Whether it signs (the asymmetric types).
    pub(crate) fn signs(self) -> bool {
        matches!(self, KeyType::Ed25519 | KeyType::EcdsaP256)
    }

    /// Whether derived keys (HKDF from a caller context) are supported: the AEAD types.
    pub(crate) fn derivable(self) -> bool {
        self.encrypts()
    }
}

/// Automatic retirement of old versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Retention {
    /// Keep at most this many versions usable for decryption (0: unlimited).
    pub(crate) keep_last: u32,
    /// Versions older than this stop being usable for decryption.
    pub(crate) max_age: Option<Duration>,
}

/// What UpdateKeyConfig may change; `None` leaves a setting as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ConfigUpdate {
    pub(crate) min_decryption_version: Option<u32>,
    pub(crate) min_encryption_version: Option<u32>,
    pub(crate) deletion_allowed: Option<bool>,
    pub(crate) retention: Option<Retention>,
    /// `Some(ZERO)` turns automatic rotation off.
    pub(crate) auto_rotate: Option<Duration>,
}

/// One version, without its material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VersionMeta {
    pub(crate) version: u32,
    pub(crate) created_at_ms: i64,
    /// For asymmetric types.
    pub(crate) public_key: Option<Vec<u8>>,
}

/// The state of one version at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VersionState {
    Active,
    DecryptOnly,
    Retired,
    Destroyed,
}

/// A key's metadata: everything but the material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyMeta {
    pub(crate) name: String,
    pub(crate) key_type: KeyType,
    pub(crate) derived: bool,
    pub(crate) min_decryption_version: u32,
    /// 0: encrypt with the latest unless a version is asked for.
    pub(crate) min_encryption_version: u32,
    pub(crate) min_available_version: u32,
    pub(crate) deletion_allowed: bool,
    pub(crate) retention: Retention,
    /// Rotate when the latest version is this old (Vault's `auto_rotate_period`).
    pub(crate) auto_rotate: Option<Duration>,
    pub(crate) latest_version: u32,
    pub(crate) created_at_ms: i64,
    pub(crate) updated_at_ms: i64,
    /// Incremented by every stored change (optimistic locking across replicas).
    pub(crate) revision: i64,
    /// Every version from `min_available_version` to `latest_version`, ascending.
    pub(crate) versions: Vec<VersionMeta>,
}

/// Shortest automatic rotation period (as Vault's).
pub(crate) const MIN_AUTO_ROTATE: Duration = Duration::from_secs(3600);
/// Longest automatic rotation period.
pub(crate) const MAX_AUTO_ROTATE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Longest key name accepted.
pub(crate) const MAX_NAME_LEN: usize = 128;

/// Checks a key name: 1–128 characters of `[A-Za-z0-9._-]`, starting alphanumeric.
pub(crate) fn validate_name(field: &str, name: &str) -> Result<(), EngineError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(EngineError::invalid(
            field,
            format!(
                "a key name is 1-{MAX_NAME_LEN} characters of letters, digits, '.', '_' and '-', \
                 starting with a letter or digit"
            ),
        ))
    }
}

impl KeyMeta {
    /// A new key with version 1.
    pub(crate) fn new(
        name: String,
        key_type: KeyType,
        derived: bool,
        now_ms: i64,
        first: VersionMeta,
    ) -> Result<Self, EngineError> {
        if derived && !key_type.derivable() {
            return Err(EngineError::invalid(
                "derived",
                format!("{} keys cannot be derived", key_type.as_str()),
            ));
        }
        Ok(Self {
            name,
            key_type,
            derived,
            min_decryption_version: 1,
            min_encryption_version: 0,
            min_available_version: 1,
            deletion_allowed: false,
            retention: Retention::default(),
            auto_rotate: None,
            latest_version: 1,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            revision: 1,
            versions: vec![first],
        })
    }

    /// The minimum decryption version in force at `now_ms`: the configured one, advanced
    /// by retention (never beyond the latest version).
    pub(crate) fn effective_min_decryption(&self, now_ms: i64) -> u32 {
        let mut min = self.min_decryption_version.max(self.min_available_version);
        if self.retention.keep_last > 0 {
            min = min.max(
                self.latest_version
                    .saturating_sub(self.retention.keep_last)
                    .saturating_add(1),
            );
        }
        if let Some(max_age) = self.retention.max_age {
            let oldest_allowed =
                now_ms.saturating_sub(i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX));
            let young = self
                .versions
                .iter()
                .find(|version| version.created_at_ms >= oldest_allowed)
                .map_or(self.latest_version, |version| version.version);
            min = min.max(young);
        }
        min.min(self.latest_version)
    }

    /// The lowest version that may encrypt or sign at `now_ms`.
    fn min_encryption(&self, now_ms: i64) -> u32 {
        self.min_encryption_version
            .max(self.effective_min_decryption(now_ms))
    }

    /// The state of `version` at `now_ms`.
    pub(crate) fn state(&self, version: u32, now_ms: i64) -> VersionState {
        if version < self.min_available_version {
            VersionState::Destroyed
        } else if version < self.effective_min_decryption(now_ms) {
            VersionState::Retired
        } else if version < self.min_encryption(now_ms) {
            VersionState::DecryptOnly
        } else {
            VersionState::Active
        }
    }

    /// The version to encrypt (or sign) with: `requested`, or the latest when 0.
    pub(crate) fn encryption_version(
        &self,
        requested: u32,
        now_ms: i64,
    ) -> Result<u32, EngineError> {
        let version = if requested == 0 {
            self.latest_version
        } else {
            requested
        };
        if version > self.latest_version {
            return Err(EngineError::invalid(
                "key_version",
                format!(
                    "version {version} does not exist; the latest is {}",
                    self.latest_version
                ),
            ));
        }
        let min = self.min_encryption(now_ms);
        if version < min {
            return Err(EngineError::FailedPrecondition(format!(
                "key `{}` version {version} is below the minimum encryption version {min}",
                self.name
            )));
        }
        Ok(version)
    }

    /// Checks that `version` may decrypt (or verify) at `now_ms`.
    pub(crate) fn check_decryption_version(
        &self,
        version: u32,
        now_ms: i64,
    ) -> Result<(), EngineError> {
        if version == 0 || version > self.latest_version {
            return Err(EngineError::DecryptionFailed);
        }
        let min = self.effective_min_decryption(now_ms);
        if version < min {
            return Err(EngineError::FailedPrecondition(format!(
                "key `{}` version {version} is below the minimum decryption version {min}",
                self.name
            )));
        }
        Ok(())
    }

    /// Whether automatic rotation is due at `now_ms`: the latest version is at least
    /// `auto_rotate` old.
    pub(crate) fn rotation_due(&self, now_ms: i64) -> bool {
        let (Some(period), Some(latest)) = (self.auto_rotate, self.versions.last()) else {
            return false;
        };
        let period_ms = i64::try_from(period.as_millis()).unwrap_or(i64::MAX);
        now_ms.saturating_sub(latest.created_at_ms) >= period_ms
    }

    /// Adds the next version; applies retention. Returns the new version's number.
    pub(crate) fn rotate(
        &mut self,
        now_ms: i64,
        public_key: Option<Vec<u8>>,
    ) -> Result<u32, EngineError> {
        let version = self.latest_version.checked_add(1).ok_or_else(|| {
            EngineError::FailedPrecondition(format!("key `{}` has no versions left", self.name))
        })?;
        self.latest_version = version;
        self.versions.push(VersionMeta {
            version,
            created_at_ms: now_ms,
            public_key,
        });
        self.updated_at_ms = now_ms;
        self.revision += 1;
        Ok(version)
    }

    /// Applies a partial configuration update after checking it as a whole.
    pub(crate) fn update(&mut self, update: ConfigUpdate, now_ms: i64) -> Result<(), EngineError> {
        let mut next = self.clone();
        if let Some(min) = update.min_decryption_version {
            next.min_decryption_version = min;
        }
        if let Some(min) = update.min_encryption_version {
            next.min_encryption_version = min;
        }
        if let Some(allowed) = update.deletion_allowed {
            next.deletion_allowed = allowed;
        }
        if let Some(retention) = update.retention {
            next.retention = retention;
        }
        if let Some(period) = update.auto_rotate {
            if !period.is_zero() && !(MIN_AUTO_ROTATE..=MAX_AUTO_ROTATE).contains(&period) {
                return Err(EngineError::invalid(
                    "config.auto_rotate_period",
                    "must be 0 (never) or between 1 hour and 100 years",
                ));
            }
            next.auto_rotate = (!period.is_zero()).then_some(period);
        }
        let latest = next.latest_version;
        if next.min_decryption_version == 0 || next.min_decryption_version > latest {
            return Err(EngineError::invalid(
                "config.min_decryption_version",
                format!("must be between 1 and the latest version {latest}"),
            ));
        }
        if next.min_decryption_version < next.min_available_version {
            return Err(EngineError::FailedPrecondition(format!(
                "versions below {} were trimmed; min_decryption_version cannot go below it",
                next.min_available_version
            )));
        }
        if next.min_encryption_version != 0
            && (next.min_encryption_version > latest
                || next.min_encryption_version < next.min_decryption_version)
        {
            return Err(EngineError::invalid(
                "config.min_encryption_version",
                format!(
                    "must be 0 (the latest) or between min_decryption_version {} and the latest \
                     version {latest}",
                    next.min_decryption_version
                ),
            ));
        }
        next.updated_at_ms = now_ms;
        next.revision += 1;
        *self = next;
        Ok(())
    }

    /// Destroys every version below `min_available`; returns the versions destroyed.
    pub(crate) fn trim(
        &mut self,
        min_available: u32,
        now_ms: i64,
    ) -> Result<Vec<u32>, EngineError> {
        let ceiling = if self.min_encryption_version == 0 {
            self.min_decryption_version
        } else {
            self.min_decryption_version.min(self.min_encryption_version)
        };
        if min_available < self.min_available_version || min_available > ceiling {
            return Err(EngineError::invalid(
                "min_available_version",
                format!(
                    "must be between the current {} and min_decryption_version {ceiling}",
                    self.min_available_version
                ),
            ));
        }
        let destroyed: Vec<u32> = (self.min_available_version..min_available).collect();
        self.min_available_version = min_available;
        self.versions
            .retain(|version| version.version >= min_available);
        self.updated_at_ms = now_ms;
        self.revision += 1;
        Ok(destroyed)
    }

    /// Checks that the key may be deleted.
    pub(crate) fn check_deletable(&self) -> Result<(), EngineError> {
        if self.deletion_allowed {
            Ok(())
        } else {
            Err(EngineError::FailedPrecondition(format!(
                "key `{}` does not allow deletion; set deletion_allowed first",
                self.name
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    #[test]
    fn automatic_rotation_is_due_when_the_latest_version_reaches_the_period() {
        let mut key =
            KeyMeta::new("k".into(), KeyType::Aes256Gcm, false, 0, version(1, 0)).unwrap();
        assert!(!key.rotation_due(1000 * HOUR), "off by default");
        let every = |hours: u64| ConfigUpdate {
            auto_rotate: Some(Duration::from_secs(hours * 3600)),
            ..ConfigUpdate::default()
        };
        key.update(every(24), 0).unwrap();
        assert_eq!(key.auto_rotate, Some(Duration::from_secs(86_400)));
        assert!(!key.rotation_due(24 * HOUR - 1));
        assert!(key.rotation_due(24 * HOUR));
        // The period counts from the latest version, however it was made.
        key.rotate(30 * HOUR, None).unwrap();
        assert!(!key.rotation_due(53 * HOUR));
        assert!(key.rotation_due(54 * HOUR));
        // A clock behind the latest version is never due.
        assert!(!key.rotation_due(i64::MIN));
        // 0 turns it off; less than an hour, or more than 100 years, is refused as a whole.
        for refused in [
            Duration::from_secs(3599),
            Duration::from_millis(1),
            MAX_AUTO_ROTATE + Duration::from_secs(1),
            Duration::MAX,
        ] {
            let before = key.clone();
            let error = key
                .update(
                    ConfigUpdate {
                        auto_rotate: Some(refused),
                        deletion_allowed: Some(true),
                        ..ConfigUpdate::default()
                    },
                    0,
                )
                .unwrap_err();
            assert!(
                error.to_string().contains("config.auto_rotate_period"),
                "{error}"
            );
            assert_eq!(key, before, "nothing changed");
        }
        key.update(every(0), 0).unwrap();
        assert_eq!(key.auto_rotate, None);
        assert!(!key.rotation_due(i64::MAX));
    }

    fn version(version: u32, created_at_ms: i64) -> VersionMeta {
        VersionMeta {
            version,
            created_at_ms,
            public_key: None,
        }
    }

    fn key_with_versions(count: u32) -> KeyMeta {
        let mut key =
            KeyMeta::new("k".into(), KeyType::Aes256Gcm, false, 0, version(1, 0)).unwrap();
        for n in 2..=count {
            key.rotate(i64::from(n) * HOUR, None).unwrap();
        }
        key
    }

    #[test]
    fn new_keys_encrypt_with_the_latest_and_decrypt_every_version() {
        let key = key_with_versions(3);
        assert_eq!(key.encryption_version(0, 0), Ok(3));
        assert_eq!(key.encryption_version(1, 0), Ok(1));
        assert!(matches!(
            key.encryption_version(4, 0),
            Err(EngineError::InvalidArgument { .. })
        ));
        for v in 1..=3 {
            assert_eq!(key.check_decryption_version(v, 0), Ok(()));
            assert_eq!(key.state(v, 0), VersionState::Active);
        }
        assert_eq!(
            key.check_decryption_version(4, 0),
            Err(EngineError::DecryptionFailed)
        );
        assert_eq!(
            key.check_decryption_version(0, 0),
            Err(EngineError::DecryptionFailed)
        );
    }

    #[test]
    fn minimum_versions_gate_encryption_and_decryption() {
        let mut key = key_with_versions(4);
        key.update(
            ConfigUpdate {
                min_decryption_version: Some(2),
                min_encryption_version: Some(3),
                ..ConfigUpdate::default()
            },
            0,
        )
        .unwrap();
        assert_eq!(key.state(1, 0), VersionState::Retired);
        assert_eq!(key.state(2, 0), VersionState::DecryptOnly);
        assert_eq!(key.state(3, 0), VersionState::Active);
        assert!(matches!(
            key.check_decryption_version(1, 0),
            Err(EngineError::FailedPrecondition(_))
        ));
        assert!(matches!(
            key.encryption_version(2, 0),
            Err(EngineError::FailedPrecondition(_))
        ));
        assert_eq!(key.encryption_version(3, 0), Ok(3));
        // Lowering the minimum again brings version 1 back: it was not trimmed.
        key.update(
            ConfigUpdate {
                min_decryption_version: Some(1),
                ..ConfigUpdate::default()
            },
            0,
        )
        .unwrap();
        assert_eq!(key.check_decryption_version(1, 0), Ok(()));
    }

    #[test]
    fn invalid_updates_change_nothing() {
        let mut key = key_with_versions(3);
        let before = key.clone();
        for update in [
            ConfigUpdate {
                min_decryption_version: Some(0),
                ..ConfigUpdate::default()
            },
            ConfigUpdate {
                min_decryption_version: Some(4),
                ..ConfigUpdate::default()
            },
            ConfigUpdate {
                min_decryption_version: Some(3),
                min_encryption_version: Some(2),
                ..ConfigUpdate::default()
            },
            ConfigUpdate {
                deletion_allowed: Some(true),
                min_encryption_version: Some(9),
                ..ConfigUpdate::default()
            },
        ] {
            assert!(key.update(update, 5).is_err(), "{update:?}");
            assert_eq!(key, before);
        }
    }

    #[test]
    fn retention_advances_the_minimum_by_count_and_by_age() {
        let mut key = key_with_versions(5);
        key.update(
            ConfigUpdate {
                retention: Some(Retention {
                    keep_last: 2,
                    max_age: None,
                }),
                ..ConfigUpdate::default()
            },
            0,
        )
        .unwrap();
        assert_eq!(key.effective_min_decryption(0), 4);
        assert_eq!(key.state(3, 0), VersionState::Retired);
        key.update(
            ConfigUpdate {
                retention: Some(Retention {
                    keep_last: 0,
                    max_age: Some(Duration::from_secs(90 * 60)),
                }),
                ..ConfigUpdate::default()
            },
            0,
        )
        .unwrap();
        // Versions were created at 1 h intervals (v1 at 0, v5 at 5 h); at 5 h 30 only
        // versions 5 (and 4, created at 4 h) are younger than 90 minutes.
        assert_eq!(key.effective_min_decryption(5 * HOUR + HOUR / 2), 4);
        // Long after, only the latest stays usable: retention never retires it.
        assert_eq!(key.effective_min_decryption(100 * HOUR), 5);
    }

    #[test]
    fn trim_destroys_below_and_never_above_the_minimum() {
        let mut key = key_with_versions(4);
        assert!(key.trim(2, 0).is_err(), "min_decryption_version is still 1");
        key.update(
            ConfigUpdate {
                min_decryption_version: Some(3),
                ..ConfigUpdate::default()
            },
            0,
        )
        .unwrap();
        assert_eq!(key.trim(3, 0), Ok(vec![1, 2]));
        assert_eq!(key.state(2, 0), VersionState::Destroyed);
        assert_eq!(key.versions.first().map(|v| v.version), Some(3));
        assert!(key.trim(2, 0).is_err(), "cannot un-trim");
        assert!(
            key.update(
                ConfigUpdate {
                    min_decryption_version: Some(2),
                    ..ConfigUpdate::default()
                },
                0
            )
            .is_err()
        );
    }

    #[test]
    fn deletion_needs_to_be_allowed_and_signing_keys_cannot_be_derived() {
        let mut key = key_with_versions(1);
        assert!(key.check_deletable().is_err());
        key.update(
            ConfigUpdate {
                deletion_allowed: Some(true),
                ..ConfigUpdate::default()
            },
            0,
        )
        .unwrap();
        assert!(key.check_deletable().is_ok());
        assert!(KeyMeta::new("s".into(), KeyType::Ed25519, true, 0, version(1, 0)).is_err());
    }

    #[test]
    fn names_are_checked() {
        for good in ["a", "payments", "team.key-1_v2", &"a".repeat(128)] {
            assert!(validate_name("name", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-x",
            ".x",
            "a b",
            "a/b",
            "ключ",
            &"a".repeat(129),
            "a\0",
        ] {
            assert!(validate_name("name", bad).is_err(), "{bad}");
        }
    }
}
