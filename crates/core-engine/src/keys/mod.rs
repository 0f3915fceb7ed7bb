//! The keyring: named, versioned keys with Vault Transit semantics.
//!
//! [`model`] holds the rules (pure), [`store`] the persistence (sqlx: SQLite or
//! PostgreSQL), [`master`] the wrapping key. [`Keyring`] ties them together: it
//! generates material from `ring::rand::SystemRandom`, wraps it before it is stored,
//! keeps unwrapped versions in a bounded cache (zeroized when evicted) and key metadata
//! in a short-lived cache, and counts seals per version against the nonce budget. When
//! key changes are reported ([`Keyring::with_journal`]), each change is stored with its
//! [`events::KeyEvent`] in one transaction and the reporter is woken.

pub(crate) mod events;
pub(crate) mod master;
pub(crate) mod model;
pub(crate) mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom as _, SystemRandom};
use zeroize::Zeroizing;

use crate::crypto::{self, AeadAlg, AeadKey, Signer};
use crate::error::EngineError;
use events::KeyEvent;
use master::MasterKey;
use model::{ConfigUpdate, KeyMeta, KeyType, VersionMeta};
use store::KeyStore;

pub(crate) use omnimesh_common::time::now_ms;

/// A version's usable material.
#[allow(
    clippy::large_enum_variant,
    reason = "one per cached version, always behind an Arc"
)]
pub(crate) enum Material {
    /// An AEAD key; the raw bytes are kept for derivation.
    Aead {
        alg: AeadAlg,
        key: AeadKey,
        raw: Zeroizing<Vec<u8>>,
    },
    Signer(Signer),
    Hmac(Zeroizing<Vec<u8>>),
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Material::Aead { .. } => "Material::Aead(..)",
            Material::Signer(_) => "Material::Signer(..)",
            Material::Hmac(_) => "Material::Hmac(..)",
        })
    }
}

/// Secret material (to be wrapped) and the public key when there is one.
type Generated = (Zeroizing<Vec<u8>>, Option<Vec<u8>>);

impl Material {
    /// New secret material for `key_type`, and the public key when there is one.
    fn generate(key_type: KeyType, rng: &SystemRandom) -> Result<Generated, EngineError> {
        Ok(match key_type {
            KeyType::Aes256Gcm | KeyType::ChaCha20Poly1305 | KeyType::HmacSha256 => {
                (crypto::random(rng, 32)?, None)
            }
            KeyType::Ed25519 => {
                let pkcs8 = Signer::generate_ed25519(rng)?;
                let public = Signer::ed25519(&pkcs8)?.public_key();
                (pkcs8, Some(public))
            }
            KeyType::EcdsaP256 => {
                let pkcs8 = Signer::generate_p256(rng)?;
                let public = Signer::p256(&pkcs8, rng)?.public_key();
                (pkcs8, Some(public))
            }
        })
    }

    /// Material from its stored secret.
    fn load(
        key_type: KeyType,
        secret: Zeroizing<Vec<u8>>,
        rng: &SystemRandom,
    ) -> Result<Self, EngineError> {
        Ok(match key_type {
            KeyType::Aes256Gcm | KeyType::ChaCha20Poly1305 => {
                let alg = if key_type == KeyType::Aes256Gcm {
                    AeadAlg::Aes256Gcm
                } else {
                    AeadAlg::ChaCha20Poly1305
                };
                Material::Aead {
                    alg,
                    key: AeadKey::new(alg, &secret)?,
                    raw: secret,
                }
            }
            KeyType::HmacSha256 => Material::Hmac(secret),
            KeyType::Ed25519 => Material::Signer(Signer::ed25519(&secret)?),
            KeyType::EcdsaP256 => Material::Signer(Signer::p256(&secret, rng)?),
        })
    }
}

/// A cached, unwrapped version and its seal counter.
#[derive(Debug)]
pub(crate) struct VersionHandle {
    pub(crate) material: Material,
    /// Seals known when it was loaded plus those made since.
    seals: AtomicU64,
}

/// How the keyring is sized.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyringLimits {
    /// Unwrapped versions kept in memory.
    pub(crate) cache_versions: usize,
    /// How long key metadata read from the store is trusted (another replica's change
    /// is seen within this).
    pub(crate) metadata_ttl: Duration,
    /// Seals one AEAD version may make before it must be rotated (2^32 for random
    /// 96-bit GCM nonces).
    pub(crate) max_seals_per_version: u64,
}

/// Why stored versions were not rewrapped under the master key.
#[derive(Debug)]
pub(crate) enum RewrapError {
    /// Versions wrapped by master keys that are not loaded: per key id, its versions.
    UnknownMasterKeys {
        master: String,
        unknown: Vec<(String, Vec<String>)>,
    },
    Store(EngineError),
}

impl From<EngineError> for RewrapError {
    fn from(error: EngineError) -> Self {
        Self::Store(error)
    }
}

impl std::fmt::Display for RewrapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        /// Versions named in the message, per master key.
        const NAMED: usize = 5;
        match self {
            Self::Store(error) => write!(f, "reading the key store: {error}"),
            Self::UnknownMasterKeys { master, unknown } => {
                for (index, (id, versions)) in unknown.iter().enumerate() {
                    let named = versions.iter().take(NAMED).cloned().collect::<Vec<_>>();
                    let more = versions.len().saturating_sub(NAMED);
                    write!(
                        f,
                        "{}{} key version(s) ({}{}) are wrapped by master key {id}",
                        if index == 0 { "" } else { "; " },
                        versions.len(),
                        named.join(", "),
                        if more > 0 {
                            format!(" and {more} more")
                        } else {
                            String::new()
                        },
                    )?;
                }
                write!(
                    f,
                    ", which is neither the master key ({master}) nor in \
                     previous_master_keys_file: start with the master key that wrapped them, \
                     or list it in that file"
                )
            }
        }
    }
}

/// A borrowed `(name, version)` key of the version cache: hashed as the owned tuple
/// is (field by field), so a lookup allocates nothing.
#[derive(Hash)]
struct VersionKey<'a>(&'a str, u32);

impl quick_cache::Equivalent<(String, u32)> for VersionKey<'_> {
    fn equivalent(&self, key: &(String, u32)) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

/// The keyring.
pub(crate) struct Keyring {
    store: KeyStore,
    master: MasterKey,
    /// Other master keys that may wrap stored versions: retired ones, or during the
    /// first step of a rotation the next one.
    previous_masters: Vec<MasterKey>,
    /// Whether versions wrapped by those are rewrapped under the master key.
    rewrap: bool,
    rng: SystemRandom,
    limits: KeyringLimits,
    metas: quick_cache::sync::Cache<String, (Arc<KeyMeta>, Instant)>,
    versions: quick_cache::sync::Cache<(String, u32), Arc<VersionHandle>>,
    /// Seals made but not yet written to the store, by key name, then version.
    pending_seals: Mutex<HashMap<String, HashMap<u32, u64>>>,
    /// Serialises this process's changes to keys (replicas are serialised by revision).
    changes: tokio::sync::Mutex<()>,
    metrics: crate::metrics::EngineMetrics,
    /// When changes are reported: woken after each stored change.
    journal: Option<Arc<tokio::sync::Notify>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("master", &self.master)
            .finish_non_exhaustive()
    }
}

impl Keyring {
    pub(crate) fn new(store: KeyStore, master: MasterKey, limits: KeyringLimits) -> Self {
        Self {
            store,
            master,
            previous_masters: Vec::new(),
            rewrap: true,
            rng: SystemRandom::new(),
            metas: quick_cache::sync::Cache::new(4096),
            versions: quick_cache::sync::Cache::new(limits.cache_versions.max(1)),
            pending_seals: Mutex::new(HashMap::new()),
            changes: tokio::sync::Mutex::new(()),
            metrics: crate::metrics::EngineMetrics::default(),
            journal: None,
            limits,
        }
    }

    /// Unwraps versions wrapped by these master keys too, and when `rewrap` is set
    /// stores them wrapped by the master key instead (off while the list holds the next
    /// master key rather than retired ones, so that replicas do not move versions back).
    pub(crate) fn with_previous_masters(mut self, previous: Vec<MasterKey>, rewrap: bool) -> Self {
        self.previous_masters = previous;
        self.rewrap = rewrap;
        self
    }

    /// Stores an event with every change to a key and wakes `reporter` after each.
    pub(crate) fn with_journal(mut self, reporter: Arc<tokio::sync::Notify>) -> Self {
        self.journal = Some(reporter);
        self
    }

    /// The event to store with a change, when changes are reported; `make` is given a
    /// random id.
    fn event(&self, make: impl FnOnce(u128) -> KeyEvent) -> Result<Option<KeyEvent>, EngineError> {
        if self.journal.is_none() {
            return Ok(None);
        }
        let mut id = [0_u8; 16];
        self.rng.fill(&mut id).map_err(|_| EngineError::Internal)?;
        Ok(Some(make(u128::from_be_bytes(id))))
    }

    /// Wakes the reporter after a change was stored.
    fn recorded(&self) {
        if let Some(reporter) = &self.journal {
            reporter.notify_one();
        }
    }

    /// Reports to `metrics` (registered in the service's registry).
    pub(crate) fn with_metrics(mut self, metrics: crate::metrics::EngineMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    pub(crate) fn metrics(&self) -> &crate::metrics::EngineMetrics {
        &self.metrics
    }

    pub(crate) fn rng(&self) -> &SystemRandom {
        &self.rng
    }

    fn remember(&self, meta: KeyMeta) -> Arc<KeyMeta> {
        let meta = Arc::new(meta);
        self.metas
            .insert(meta.name.clone(), (Arc::clone(&meta), Instant::now()));
        meta
    }

    /// Creates a key with version 1.
    pub(crate) async fn create(
        &self,
        name: &str,
        key_type: KeyType,
        derived: bool,
        update: ConfigUpdate,
    ) -> Result<Arc<KeyMeta>, EngineError> {
        model::validate_name("name", name)?;
        let _change = self.changes.lock().await;
        let now = now_ms();
        let (secret, public_key) = Material::generate(key_type, &self.rng)?;
        let mut meta = KeyMeta::new(
            name.to_owned(),
            key_type,
            derived,
            now,
            VersionMeta {
                version: 1,
                created_at_ms: now,
                public_key,
            },
        )?;
        if update != ConfigUpdate::default() {
            meta.update(update, now)?;
            meta.revision = 1;
        }
        let wrapped = self.master.wrap(&self.rng, name, 1, &secret)?;
        let event = self.event(|id| KeyEvent::created(&meta, id))?;
        self.store
            .insert(&meta, &wrapped, self.master.id(), event.as_ref())
            .await?;
        self.recorded();
        Ok(self.remember(meta))
    }

    /// A key's metadata (cached for `metadata_ttl`).
    pub(crate) async fn get(&self, name: &str) -> Result<Arc<KeyMeta>, EngineError> {
        model::validate_name("key_name", name)?;
        if let Some((meta, at)) = self.metas.get(name)
            && at.elapsed() < self.limits.metadata_ttl
        {
            return Ok(meta);
        }
        self.fresh(name).await
    }

    async fn fresh(&self, name: &str) -> Result<Arc<KeyMeta>, EngineError> {
        match self.store.load(name).await? {
            Some(meta) => Ok(self.remember(meta)),
            None => {
                self.metas.remove(name);
                Err(EngineError::NotFound(name.to_owned()))
            }
        }
    }

    /// Keys after `after` in name order, at most `limit`.
    pub(crate) async fn list(&self, after: &str, limit: u32) -> Result<Vec<KeyMeta>, EngineError> {
        self.store.list(after, limit).await
    }

    /// Adds a version.
    pub(crate) async fn rotate(&self, name: &str) -> Result<Arc<KeyMeta>, EngineError> {
        model::validate_name("name", name)?;
        let _change = self.changes.lock().await;
        let meta = (*self.fresh(name).await?).clone();
        self.add_version(meta, now_ms(), false).await
    }

    /// Rotates every key whose automatic rotation is due at `now_ms` (its latest version is
    /// `auto_rotate_period` old); returns each key rotated with its new version. A key that
    /// another replica rotated or changed first, or deleted, is looked at again next time;
    /// one key's failure does not stop the others.
    pub(crate) async fn rotate_due(&self, now_ms: i64) -> Result<Vec<(String, u32)>, EngineError> {
        let mut rotated = Vec::new();
        for name in self.store.due_for_rotation(now_ms).await? {
            let _change = self.changes.lock().await;
            let outcome = match self.fresh(&name).await {
                Ok(meta) if meta.rotation_due(now_ms) => {
                    self.add_version((*meta).clone(), now_ms, true).await
                }
                Ok(_) => continue,
                Err(error) => Err(error),
            };
            match outcome {
                Ok(meta) => {
                    self.metrics.operation("auto_rotate", meta.key_type, 1);
                    tracing::info!(key = %name, version = meta.latest_version, "key rotated automatically");
                    rotated.push((name, meta.latest_version));
                }
                Err(EngineError::Aborted(_) | EngineError::NotFound(_)) => {}
                Err(error) => tracing::warn!(key = %name, %error, "automatic rotation failed"),
            }
        }
        Ok(rotated)
    }

    /// Adds the next version to `meta` (read fresh, under the change lock) at `now_ms`.
    async fn add_version(
        &self,
        mut meta: KeyMeta,
        now_ms: i64,
        automatic: bool,
    ) -> Result<Arc<KeyMeta>, EngineError> {
        let (secret, public_key) = Material::generate(meta.key_type, &self.rng)?;
        let version = meta.rotate(now_ms, public_key)?;
        let wrapped = self.master.wrap(&self.rng, &meta.name, version, &secret)?;
        let event = self.event(|id| KeyEvent::rotated(&meta, automatic, id))?;
        self.store
            .add_version(&meta, &wrapped, self.master.id(), event.as_ref())
            .await?;
        self.recorded();
        Ok(self.remember(meta))
    }

    /// Changes the configuration.
    pub(crate) async fn update(
        &self,
        name: &str,
        update: ConfigUpdate,
    ) -> Result<Arc<KeyMeta>, EngineError> {
        model::validate_name("name", name)?;
        let _change = self.changes.lock().await;
        let mut meta = (*self.fresh(name).await?).clone();
        meta.update(update, now_ms())?;
        let event = self.event(|id| KeyEvent::config_updated(&meta, id))?;
        self.store.save_config(&meta, event.as_ref()).await?;
        self.recorded();
        Ok(self.remember(meta))
    }

    /// Destroys versions below `min_available`.
    pub(crate) async fn trim(
        &self,
        name: &str,
        min_available: u32,
    ) -> Result<Arc<KeyMeta>, EngineError> {
        model::validate_name("name", name)?;
        let _change = self.changes.lock().await;
        let mut meta = (*self.fresh(name).await?).clone();
        let destroyed = meta.trim(min_available, now_ms())?;
        let event = self.event(|id| KeyEvent::trimmed(&meta, &destroyed, id))?;
        self.store.save_config(&meta, event.as_ref()).await?;
        self.recorded();
        for version in destroyed {
            self.versions.remove(&VersionKey(name, version));
        }
        Ok(self.remember(meta))
    }

    /// Deletes a key that allows it.
    pub(crate) async fn delete(&self, name: &str) -> Result<(), EngineError> {
        model::validate_name("name", name)?;
        let _change = self.changes.lock().await;
        let meta = self.fresh(name).await?;
        meta.check_deletable()?;
        self.flush_seals().await;
        let event = self.event(|id| KeyEvent::deleted(&meta, id))?;
        self.store.delete(name, event.as_ref()).await?;
        self.recorded();
        self.metas.remove(name);
        for version in meta.versions.iter().map(|version| version.version) {
            self.versions.remove(&VersionKey(name, version));
        }
        Ok(())
    }

    /// The unwrapped material of `version` (cached).
    pub(crate) async fn version(
        &self,
        meta: &KeyMeta,
        version: u32,
    ) -> Result<Arc<VersionHandle>, EngineError> {
        if let Some(handle) = self.versions.get(&VersionKey(&meta.name, version)) {
            return Ok(handle);
        }
        let wrapped = self
            .store
            .wrapped(&meta.name, version)
            .await?
            .ok_or(EngineError::DecryptionFailed)?;
        let secret = if wrapped.master_key_id == self.master.id() {
            self.master.unwrap(&meta.name, version, &wrapped.material)?
        } else {
            // Wrapped by a retired master key (by a replica not yet given the new one, say):
            // unwrapped with it and stored under the master key.
            let Some(previous) = self.previous_master(&wrapped.master_key_id) else {
                tracing::error!(
                    key = %meta.name,
                    version,
                    stored = %wrapped.master_key_id,
                    loaded = %self.master.id(),
                    "a key version was wrapped by a master key that is not loaded"
                );
                return Err(EngineError::Internal);
            };
            let secret = previous.unwrap(&meta.name, version, &wrapped.material)?;
            if self.rewrap
                && let Err(error) = self
                    .rewrap_version(&meta.name, version, previous, &secret)
                    .await
            {
                // Unwrapped all the same: the next load or start-up tries again.
                tracing::warn!(key = %meta.name, version, %error, "rewrapping a key version failed");
            }
            secret
        };
        let material = Material::load(meta.key_type, secret, &self.rng)?;
        let seals = self
            .store
            .seal_counts(&meta.name)
            .await?
            .into_iter()
            .find_map(|(v, seals)| (v == version).then_some(seals))
            .unwrap_or_default();
        let handle = Arc::new(VersionHandle {
            material,
            seals: AtomicU64::new(seals + self.pending(&meta.name, version)),
        });
        self.versions
            .insert((meta.name.clone(), version), Arc::clone(&handle));
        Ok(handle)
    }

    /// The master key's id (safe to log).
    pub(crate) fn master_key_id(&self) -> &str {
        self.master.id()
    }

    /// The retired master key with `id`.
    fn previous_master(&self, id: &str) -> Option<&MasterKey> {
        self.previous_masters.iter().find(|key| key.id() == id)
    }

    /// Stores `secret`, unwrapped from `version`'s material wrapped by `from`, wrapped by
    /// the master key instead; whether this call replaced it (not another replica, first).
    async fn rewrap_version(
        &self,
        name: &str,
        version: u32,
        from: &MasterKey,
        secret: &[u8],
    ) -> Result<bool, EngineError> {
        let wrapped = self.master.wrap(&self.rng, name, version, secret)?;
        let done = self
            .store
            .rewrap(name, version, from.id(), &wrapped, self.master.id())
            .await?;
        if done {
            self.metrics.master_key_rewrap();
        }
        Ok(done)
    }

    /// Rewraps, under the master key, every stored version wrapped by a retired one (a
    /// master key rotation). Refuses, changing nothing, when a version is wrapped by a
    /// master key that is not loaded: it could not be used, and its owner should know at
    /// start-up, not at the first request. Returns the number of versions rewrapped.
    pub(crate) async fn rewrap_retired(&self) -> Result<usize, RewrapError> {
        let others = self.store.wrapped_by_others(self.master.id()).await?;
        let mut known = Vec::new();
        let mut unknown: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
        for (name, version, wrapped) in &others {
            match self.previous_master(&wrapped.master_key_id) {
                Some(previous) => known.push((name, *version, previous, &wrapped.material)),
                None => unknown
                    .entry(&wrapped.master_key_id)
                    .or_default()
                    .push(format!("{name} v{version}")),
            }
        }
        if !unknown.is_empty() {
            return Err(RewrapError::UnknownMasterKeys {
                master: self.master.id().to_owned(),
                unknown: unknown
                    .into_iter()
                    .map(|(id, versions)| (id.to_owned(), versions))
                    .collect(),
            });
        }
        let mut rewrapped = 0;
        if !self.rewrap {
            return Ok(rewrapped);
        }
        for (name, version, previous, material) in known {
            // A blob that does not unwrap was unusable before and stays as it is (logged).
            let Ok(secret) = previous.unwrap(name, version, material) else {
                continue;
            };
            // Conditional on the blob still being wrapped by `previous`: one trimmed or
            // rewrapped by another replica since the list was read is left alone.
            if self
                .rewrap_version(name, version, previous, &secret)
                .await?
            {
                rewrapped += 1;
            }
        }
        Ok(rewrapped)
    }

    fn pending(&self, name: &str, version: u32) -> u64 {
        self.pending_seals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .and_then(|versions| versions.get(&version))
            .copied()
            .unwrap_or_default()
    }

    fn add_pending(&self, name: &str, version: u32, seals: u64) {
        let mut pending = self
            .pending_seals
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // The name is copied only the first time: a hot key's seals are counted with no
        // allocation.
        match pending.get_mut(name) {
            Some(versions) => *versions.entry(version).or_default() += seals,
            None => {
                pending.insert(name.to_owned(), HashMap::from([(version, seals)]));
            }
        }
    }

    /// Reserves `count` seals of `version`; refuses when the nonce budget would be
    /// exceeded.
    pub(crate) fn reserve_seals(
        &self,
        meta: &KeyMeta,
        version: u32,
        handle: &VersionHandle,
        count: u64,
    ) -> Result<(), EngineError> {
        let budget = self.limits.max_seals_per_version;
        let before = handle.seals.fetch_add(count, Ordering::Relaxed);
        if before.saturating_add(count) > budget {
            handle.seals.fetch_sub(count, Ordering::Relaxed);
            return Err(EngineError::FailedPrecondition(format!(
                "key `{}` version {version} has used its budget of {budget} seals; rotate the key",
                meta.name
            )));
        }
        self.metrics.seals(before.saturating_add(count), budget);
        self.add_pending(&meta.name, version, count);
        Ok(())
    }

    /// Seal counts per version: stored plus not yet flushed.
    pub(crate) async fn seal_counts(&self, name: &str) -> Result<HashMap<u32, u64>, EngineError> {
        let mut counts: HashMap<u32, u64> =
            self.store.seal_counts(name).await?.into_iter().collect();
        if let Some(versions) = self
            .pending_seals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            for (version, seals) in versions {
                *counts.entry(*version).or_default() += seals;
            }
        }
        Ok(counts)
    }

    /// Writes pending seal counts to the store (periodically, and at shutdown).
    pub(crate) async fn flush_seals(&self) {
        let pending = std::mem::take(
            &mut *self
                .pending_seals
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for (name, versions) in pending {
            for (version, seals) in versions {
                if self.store.add_seals(&name, version, seals).await.is_err() {
                    // Keep them for the next flush.
                    self.add_pending(&name, version, seals);
                }
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn store(&self) -> &KeyStore {
        &self.store
    }
}

#[cfg(test)]
mod tests;
