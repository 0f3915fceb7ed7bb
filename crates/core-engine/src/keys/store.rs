//! Persistence of keys through sqlx: SQLite (the embedded default, WAL mode) or
//! PostgreSQL, one code path over `sqlx::Any`, migrations per backend.
//!
//! Every change that touches more than one row is one transaction, so a failure halfway
//! leaves nothing half-written; changes to a key's versions are conditional on the
//! version the caller read, so of two concurrent rotations one wins and the other gets
//! `ABORTED`. A change may bring a [`KeyEvent`] to report, written in its transaction
//! (the `engine_key_events` outbox) so that it is reported exactly when it happened.

use std::time::Duration;

use omnimesh_common::db;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row as _};

use super::events::KeyEvent;
use super::model::{KeyMeta, KeyType, Retention, VersionMeta};
use crate::error::EngineError;

/// The key store.
#[derive(Debug, Clone)]
pub(crate) struct KeyStore {
    pool: AnyPool,
}

/// A key change waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingEvent {
    /// Its place in the outbox (ascending in the order the changes were stored).
    pub(crate) id: i64,
    pub(crate) event_type: String,
    pub(crate) key: String,
    pub(crate) data: String,
    pub(crate) idempotency_key: String,
}

/// A version's wrapped material as stored.
#[derive(Debug, Clone)]
pub(crate) struct Wrapped {
    pub(crate) material: Vec<u8>,
    pub(crate) master_key_id: String,
}

fn to_i64(value: u32) -> i64 {
    i64::from(value)
}

fn to_u32(value: i64) -> Result<u32, EngineError> {
    u32::try_from(value).map_err(|_| {
        tracing::error!(value, "a stored version number is out of range");
        EngineError::Internal
    })
}

fn store_error(error: sqlx::Error) -> EngineError {
    EngineError::store(&error)
}

impl KeyStore {
    /// Opens (creating a SQLite file and its directory when needed) and migrates.
    pub(crate) async fn open(url: &str, max_connections: u32) -> Result<Self, crate::Error> {
        let options = db::Options {
            max_connections,
            durability: db::Durability::Normal,
        };
        let migrations = db::Migrations {
            sqlite: &sqlx::migrate!("migrations/sqlite"),
            postgres: &sqlx::migrate!("migrations/postgres"),
        };
        let (pool, _) = db::open(url, options, migrations).await?;
        Ok(Self { pool })
    }

    /// Stores a new key with its first version, atomically.
    pub(crate) async fn insert(
        &self,
        key: &KeyMeta,
        wrapped: &[u8],
        master_key_id: &str,
        event: Option<&KeyEvent>,
    ) -> Result<(), EngineError> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let inserted = sqlx::query(
            "INSERT INTO engine_keys (name, key_type, derived, min_decryption_version, \
             min_encryption_version, min_available_version, deletion_allowed, \
             keep_last_versions, max_age_seconds, latest_version, created_at_ms, updated_at_ms, \
             revision, auto_rotate_seconds) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&key.name)
        .bind(key.key_type.as_str())
        .bind(i64::from(key.derived))
        .bind(to_i64(key.min_decryption_version))
        .bind(to_i64(key.min_encryption_version))
        .bind(to_i64(key.min_available_version))
        .bind(i64::from(key.deletion_allowed))
        .bind(to_i64(key.retention.keep_last))
        .bind(max_age_seconds(&key.retention))
        .bind(to_i64(key.latest_version))
        .bind(key.created_at_ms)
        .bind(key.updated_at_ms)
        .bind(key.revision)
        .bind(seconds(key.auto_rotate))
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
                return Err(EngineError::AlreadyExists(key.name.clone()));
            }
            other => other.map_err(store_error)?,
        };
        let first = key.versions.last().ok_or(EngineError::Internal)?;
        insert_version(&mut tx, &key.name, first, wrapped, master_key_id).await?;
        record(&mut tx, event).await?;
        tx.commit().await.map_err(store_error)
    }

    /// A key's metadata, with its live versions.
    pub(crate) async fn load(&self, name: &str) -> Result<Option<KeyMeta>, EngineError> {
        let row = sqlx::query("SELECT * FROM engine_keys WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut key = key_from_row(&row)?;
        key.versions = self.versions(name, key.min_available_version).await?;
        Ok(Some(key))
    }

    async fn versions(&self, name: &str, from: u32) -> Result<Vec<VersionMeta>, EngineError> {
        sqlx::query(
            "SELECT version, created_at_ms, public_key FROM engine_key_versions \
             WHERE key_name = $1 AND version >= $2 ORDER BY version",
        )
        .bind(name)
        .bind(to_i64(from))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?
        .iter()
        .map(|row| {
            Ok(VersionMeta {
                version: to_u32(row.try_get("version").map_err(store_error)?)?,
                created_at_ms: row.try_get("created_at_ms").map_err(store_error)?,
                public_key: row.try_get("public_key").map_err(store_error)?,
            })
        })
        .collect()
    }

    /// Keys in name order after `after`, at most `limit`.
    pub(crate) async fn list(&self, after: &str, limit: u32) -> Result<Vec<KeyMeta>, EngineError> {
        let rows = sqlx::query("SELECT * FROM engine_keys WHERE name > $1 ORDER BY name LIMIT $2")
            .bind(after)
            .bind(to_i64(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        let mut keys = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut key = key_from_row(row)?;
            key.versions = self.versions(&key.name, key.min_available_version).await?;
            keys.push(key);
        }
        Ok(keys)
    }

    /// The names of the keys whose automatic rotation is due at `now_ms`: their latest
    /// version is at least `auto_rotate_seconds` old (one query, however many keys).
    pub(crate) async fn due_for_rotation(&self, now_ms: i64) -> Result<Vec<String>, EngineError> {
        sqlx::query_scalar(
            "SELECT k.name FROM engine_keys k JOIN engine_key_versions v \
             ON v.key_name = k.name AND v.version = k.latest_version \
             WHERE k.auto_rotate_seconds > 0 \
             AND v.created_at_ms + k.auto_rotate_seconds * 1000 <= $1 ORDER BY k.name",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)
    }

    /// A version's wrapped material; `None` when trimmed or missing.
    pub(crate) async fn wrapped(
        &self,
        name: &str,
        version: u32,
    ) -> Result<Option<Wrapped>, EngineError> {
        let row = sqlx::query(
            "SELECT wrapped, master_key_id FROM engine_key_versions \
             WHERE key_name = $1 AND version = $2",
        )
        .bind(name)
        .bind(to_i64(version))
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let material: Option<Vec<u8>> = row.try_get("wrapped").map_err(store_error)?;
        Ok(material.map(|material| Wrapped {
            material,
            master_key_id: row.try_get("master_key_id").unwrap_or_default(),
        }))
    }

    /// The versions whose material is wrapped by a master key other than `master_key_id`
    /// (trimmed versions hold none): key name, version and the material as stored.
    pub(crate) async fn wrapped_by_others(
        &self,
        master_key_id: &str,
    ) -> Result<Vec<(String, u32, Wrapped)>, EngineError> {
        sqlx::query(
            "SELECT key_name, version, wrapped, master_key_id FROM engine_key_versions \
             WHERE wrapped IS NOT NULL AND master_key_id <> $1 ORDER BY key_name, version",
        )
        .bind(master_key_id)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?
        .iter()
        .map(|row| {
            Ok((
                row.try_get("key_name").map_err(store_error)?,
                to_u32(row.try_get("version").map_err(store_error)?)?,
                Wrapped {
                    material: row.try_get("wrapped").map_err(store_error)?,
                    master_key_id: row.try_get("master_key_id").map_err(store_error)?,
                },
            ))
        })
        .collect()
    }

    /// Replaces a version's wrapped material with `wrapped`, by master key `to`, only if
    /// it is still wrapped by master key `from` (another replica may have done it first,
    /// or the version been trimmed); whether it was replaced.
    pub(crate) async fn rewrap(
        &self,
        name: &str,
        version: u32,
        from: &str,
        wrapped: &[u8],
        to: &str,
    ) -> Result<bool, EngineError> {
        let done = sqlx::query(
            "UPDATE engine_key_versions SET wrapped = $1, master_key_id = $2 \
             WHERE key_name = $3 AND version = $4 AND master_key_id = $5 \
             AND wrapped IS NOT NULL",
        )
        .bind(wrapped)
        .bind(to)
        .bind(name)
        .bind(to_i64(version))
        .bind(from)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() == 1)
    }

    /// Stores a rotation: the new latest version and its material, only if the key is
    /// still at `key.revision - 1`.
    pub(crate) async fn add_version(
        &self,
        key: &KeyMeta,
        wrapped: &[u8],
        master_key_id: &str,
        event: Option<&KeyEvent>,
    ) -> Result<(), EngineError> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let updated = sqlx::query(
            "UPDATE engine_keys SET latest_version = $1, updated_at_ms = $2, revision = $3 \
             WHERE name = $4 AND revision = $5",
        )
        .bind(to_i64(key.latest_version))
        .bind(key.updated_at_ms)
        .bind(key.revision)
        .bind(&key.name)
        .bind(key.revision - 1)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        if updated.rows_affected() != 1 {
            return Err(changed_concurrently(&key.name));
        }
        let version = key.versions.last().ok_or(EngineError::Internal)?;
        insert_version(&mut tx, &key.name, version, wrapped, master_key_id).await?;
        record(&mut tx, event).await?;
        tx.commit().await.map_err(store_error)
    }

    /// Stores the configuration (minimums, deletion, retention) and trims material below
    /// the minimum available version, atomically; only if the key is still at
    /// `key.revision - 1`.
    pub(crate) async fn save_config(
        &self,
        key: &KeyMeta,
        event: Option<&KeyEvent>,
    ) -> Result<(), EngineError> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let updated = sqlx::query(
            "UPDATE engine_keys SET min_decryption_version = $1, min_encryption_version = $2, \
             min_available_version = $3, deletion_allowed = $4, keep_last_versions = $5, \
             max_age_seconds = $6, updated_at_ms = $7, revision = $8, auto_rotate_seconds = $9 \
             WHERE name = $10 AND revision = $11",
        )
        .bind(to_i64(key.min_decryption_version))
        .bind(to_i64(key.min_encryption_version))
        .bind(to_i64(key.min_available_version))
        .bind(i64::from(key.deletion_allowed))
        .bind(to_i64(key.retention.keep_last))
        .bind(max_age_seconds(&key.retention))
        .bind(key.updated_at_ms)
        .bind(key.revision)
        .bind(seconds(key.auto_rotate))
        .bind(&key.name)
        .bind(key.revision - 1)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        if updated.rows_affected() != 1 {
            return Err(changed_concurrently(&key.name));
        }
        sqlx::query(
            "UPDATE engine_key_versions SET wrapped = NULL WHERE key_name = $1 AND version < $2",
        )
        .bind(&key.name)
        .bind(to_i64(key.min_available_version))
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        record(&mut tx, event).await?;
        tx.commit().await.map_err(store_error)
    }

    /// Deletes a key and every version; whether it existed.
    pub(crate) async fn delete(
        &self,
        name: &str,
        event: Option<&KeyEvent>,
    ) -> Result<bool, EngineError> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        sqlx::query("DELETE FROM engine_key_versions WHERE key_name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        let deleted = sqlx::query("DELETE FROM engine_keys WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        if deleted.rows_affected() == 1 {
            record(&mut tx, event).await?;
        }
        tx.commit().await.map_err(store_error)?;
        Ok(deleted.rows_affected() == 1)
    }

    /// Adds seal counts (flushed from memory).
    pub(crate) async fn add_seals(
        &self,
        name: &str,
        version: u32,
        seals: u64,
    ) -> Result<(), EngineError> {
        sqlx::query(
            "UPDATE engine_key_versions SET seal_count = seal_count + $1 \
             WHERE key_name = $2 AND version = $3",
        )
        .bind(i64::try_from(seals).unwrap_or(i64::MAX))
        .bind(name)
        .bind(to_i64(version))
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    /// Stored seal counts per version.
    pub(crate) async fn seal_counts(&self, name: &str) -> Result<Vec<(u32, u64)>, EngineError> {
        sqlx::query("SELECT version, seal_count FROM engine_key_versions WHERE key_name = $1")
            .bind(name)
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?
            .iter()
            .map(|row| {
                let version = to_u32(row.try_get("version").map_err(store_error)?)?;
                let seals: i64 = row.try_get("seal_count").map_err(store_error)?;
                Ok((version, u64::try_from(seals).unwrap_or_default()))
            })
            .collect()
    }

    /// The oldest `limit` changes waiting to be reported, oldest first.
    pub(crate) async fn pending_events(
        &self,
        limit: u32,
    ) -> Result<Vec<PendingEvent>, EngineError> {
        sqlx::query(
            "SELECT id, event_type, key_name, data, idempotency_key \
             FROM engine_key_events ORDER BY id LIMIT $1",
        )
        .bind(to_i64(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?
        .iter()
        .map(|row| {
            Ok(PendingEvent {
                id: row.try_get("id").map_err(store_error)?,
                event_type: row.try_get("event_type").map_err(store_error)?,
                key: row.try_get("key_name").map_err(store_error)?,
                data: row.try_get("data").map_err(store_error)?,
                idempotency_key: row.try_get("idempotency_key").map_err(store_error)?,
            })
        })
        .collect()
    }

    /// Removes a reported change from the outbox (another replica may have done so).
    pub(crate) async fn forget_event(&self, id: i64) -> Result<(), EngineError> {
        sqlx::query("DELETE FROM engine_key_events WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// How many changes wait to be reported.
    pub(crate) async fn pending_event_count(&self) -> Result<u64, EngineError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM engine_key_events")
            .fetch_one(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(u64::try_from(count).unwrap_or_default())
    }

    /// The pool, for tests that inspect or sabotage the database.
    #[cfg(test)]
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

/// The loser of a race on a key's revision.
fn changed_concurrently(name: &str) -> EngineError {
    EngineError::Aborted(format!("key `{name}` changed concurrently; retry"))
}

fn max_age_seconds(retention: &Retention) -> i64 {
    seconds(retention.max_age)
}

/// A stored period: whole seconds, 0 for none.
fn seconds(period: Option<Duration>) -> i64 {
    period.map_or(0, |period| {
        i64::try_from(period.as_secs()).unwrap_or(i64::MAX)
    })
}

/// A period read back: `None` for 0.
fn period(seconds: i64) -> Option<Duration> {
    (seconds > 0).then(|| Duration::from_secs(seconds.unsigned_abs()))
}

/// Writes `event` (when there is one) to the outbox inside the change's transaction.
async fn record(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    event: Option<&KeyEvent>,
) -> Result<(), EngineError> {
    let Some(event) = event else {
        return Ok(());
    };
    sqlx::query(
        "INSERT INTO engine_key_events \
         (idempotency_key, event_type, key_name, data, recorded_at_ms) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&event.idempotency_key)
    .bind(event.event_type)
    .bind(&event.key)
    .bind(&event.data)
    .bind(super::now_ms())
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(())
}

async fn insert_version(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    name: &str,
    version: &VersionMeta,
    wrapped: &[u8],
    master_key_id: &str,
) -> Result<(), EngineError> {
    let inserted = sqlx::query(
        "INSERT INTO engine_key_versions \
         (key_name, version, wrapped, master_key_id, public_key, seal_count, created_at_ms) \
         VALUES ($1, $2, $3, $4, $5, 0, $6)",
    )
    .bind(name)
    .bind(to_i64(version.version))
    .bind(wrapped)
    .bind(master_key_id)
    .bind(version.public_key.clone())
    .bind(version.created_at_ms)
    .execute(&mut **tx)
    .await;
    match inserted {
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
            Err(changed_concurrently(name))
        }
        other => other.map(|_| ()).map_err(store_error),
    }
}

fn key_from_row(row: &AnyRow) -> Result<KeyMeta, EngineError> {
    let get_i64 = |column: &str| -> Result<i64, EngineError> {
        row.try_get::<i64, _>(column).map_err(store_error)
    };
    let key_type: String = row.try_get("key_type").map_err(store_error)?;
    Ok(KeyMeta {
        name: row.try_get("name").map_err(store_error)?,
        key_type: KeyType::parse(&key_type).ok_or_else(|| {
            tracing::error!(key_type, "unknown stored key type");
            EngineError::Internal
        })?,
        derived: get_i64("derived")? != 0,
        min_decryption_version: to_u32(get_i64("min_decryption_version")?)?,
        min_encryption_version: to_u32(get_i64("min_encryption_version")?)?,
        min_available_version: to_u32(get_i64("min_available_version")?)?,
        deletion_allowed: get_i64("deletion_allowed")? != 0,
        retention: Retention {
            keep_last: to_u32(get_i64("keep_last_versions")?)?,
            max_age: period(get_i64("max_age_seconds")?),
        },
        auto_rotate: period(get_i64("auto_rotate_seconds")?),
        latest_version: to_u32(get_i64("latest_version")?)?,
        created_at_ms: get_i64("created_at_ms")?,
        updated_at_ms: get_i64("updated_at_ms")?,
        revision: get_i64("revision")?,
        versions: Vec::new(),
    })
}
