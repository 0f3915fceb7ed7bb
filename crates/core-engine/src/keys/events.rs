//! Key changes as events for mesh-controller's event store (SPEC: every operation, key
//! rotation among them, is an event there).
//!
//! Each change to a key (create, rotate, configure, trim, delete) yields a [`KeyEvent`]
//! that the store writes in the same transaction as the change (the `engine_key_events`
//! outbox); [`crate::report`] delivers them. An event carries what changed, never key
//! material. Events of one key form the stream `engine-key-<name>`.

use serde_json::json;

use super::model::KeyMeta;

/// A key was created (with version 1).
pub(crate) const CREATED: &str = "engine.key_created";
/// A key gained a version.
pub(crate) const ROTATED: &str = "engine.key_rotated";
/// A key's minimums, deletion flag or retention changed.
pub(crate) const CONFIG_UPDATED: &str = "engine.key_config_updated";
/// Versions of a key were destroyed.
pub(crate) const TRIMMED: &str = "engine.key_trimmed";
/// A key and all its versions were deleted.
pub(crate) const DELETED: &str = "engine.key_deleted";

/// A change to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyEvent {
    /// One of the constants above.
    pub(crate) event_type: &'static str,
    /// The key's name.
    pub(crate) key: String,
    /// JSON.
    pub(crate) data: String,
    /// Unique per change: the controller stores a retried report only once.
    pub(crate) idempotency_key: String,
}

/// The event stream of a key in the controller's store (the streams a report token may
/// append to: `omnimesh_common::reporting`).
pub(crate) fn stream_id(key: &str) -> String {
    format!("{}{key}", omnimesh_common::reporting::STREAM_PREFIX)
}

/// The configuration every event but `deleted` reports, after the change.
fn config(meta: &KeyMeta) -> serde_json::Value {
    json!({
        "min_decryption_version": meta.min_decryption_version,
        "min_encryption_version": meta.min_encryption_version,
        "min_available_version": meta.min_available_version,
        "deletion_allowed": meta.deletion_allowed,
        "keep_last_versions": meta.retention.keep_last,
        "max_age_seconds": meta.retention.max_age.map_or(0, |age| age.as_secs()),
        "auto_rotate_period_seconds": meta.auto_rotate.map_or(0, |period| period.as_secs()),
    })
}

impl KeyEvent {
    fn new(
        event_type: &'static str,
        meta: &KeyMeta,
        mut data: serde_json::Value,
        id: u128,
    ) -> Self {
        if let Some(fields) = data.as_object_mut() {
            fields.insert("key".into(), meta.name.clone().into());
            fields.insert("key_type".into(), meta.key_type.as_str().into());
            fields.insert("revision".into(), meta.revision.into());
            // When the change was made: the controller records when the report arrived.
            fields.insert("changed_at_ms".into(), super::now_ms().into());
        }
        Self {
            event_type,
            key: meta.name.clone(),
            data: data.to_string(),
            idempotency_key: format!("core-engine:{id:032x}"),
        }
    }

    /// `meta` as created; `id` makes the event unique (random).
    pub(crate) fn created(meta: &KeyMeta, id: u128) -> Self {
        let mut data = config(meta);
        data["version"] = meta.latest_version.into();
        data["derived"] = meta.derived.into();
        Self::new(CREATED, meta, data, id)
    }

    /// `meta` after a rotation to its latest version (`automatic`: by its
    /// `auto_rotate_period`, not a RotateKey call).
    pub(crate) fn rotated(meta: &KeyMeta, automatic: bool, id: u128) -> Self {
        let data = json!({ "version": meta.latest_version, "automatic": automatic });
        Self::new(ROTATED, meta, data, id)
    }

    /// `meta` after a configuration change.
    pub(crate) fn config_updated(meta: &KeyMeta, id: u128) -> Self {
        Self::new(CONFIG_UPDATED, meta, config(meta), id)
    }

    /// `meta` after `destroyed` versions were trimmed.
    pub(crate) fn trimmed(meta: &KeyMeta, destroyed: &[u32], id: u128) -> Self {
        let mut data = config(meta);
        data["destroyed_versions"] = destroyed.into();
        Self::new(TRIMMED, meta, data, id)
    }

    /// `meta` as it was when deleted.
    pub(crate) fn deleted(meta: &KeyMeta, id: u128) -> Self {
        Self::new(
            DELETED,
            meta,
            json!({ "latest_version": meta.latest_version }),
            id,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::model::{KeyType, VersionMeta};

    fn meta() -> KeyMeta {
        let mut meta = KeyMeta::new(
            "payments".into(),
            KeyType::Aes256Gcm,
            false,
            1_000,
            VersionMeta {
                version: 1,
                created_at_ms: 1_000,
                public_key: None,
            },
        )
        .unwrap();
        meta.rotate(2_000, None).unwrap();
        meta
    }

    /// What the engine reports is what its report token may append: were the names to
    /// drift apart, the controller would refuse every report.
    #[test]
    fn every_event_is_within_a_report_tokens_reach() {
        for event_type in [CREATED, ROTATED, CONFIG_UPDATED, TRIMMED, DELETED] {
            omnimesh_common::reporting::may_append(
                &stream_id("payments"),
                std::iter::once(event_type),
            )
            .unwrap();
        }
        assert_eq!(stream_id("payments"), "engine-key-payments");
    }

    #[test]
    fn events_name_the_key_and_what_changed_and_nothing_secret() {
        let meta = meta();
        let rotated = KeyEvent::rotated(&meta, false, 7);
        assert_eq!(rotated.event_type, "engine.key_rotated");
        assert_eq!(rotated.key, "payments");
        assert_eq!(
            rotated.idempotency_key,
            "core-engine:00000000000000000000000000000007"
        );
        let mut data: serde_json::Value = serde_json::from_str(&rotated.data).unwrap();
        let changed_at = data["changed_at_ms"].take().as_i64().unwrap();
        assert!(
            (changed_at - super::super::now_ms()).abs() < 60_000,
            "{changed_at}"
        );
        assert_eq!(
            data,
            json!({"key": "payments", "key_type": "aes256-gcm", "version": 2, "automatic": false, "revision": 2, "changed_at_ms": null})
        );

        let created: serde_json::Value =
            serde_json::from_str(&KeyEvent::created(&meta, 1).data).unwrap();
        assert_eq!(created["derived"], false);
        assert_eq!(created["min_decryption_version"], 1);

        let trimmed: serde_json::Value =
            serde_json::from_str(&KeyEvent::trimmed(&meta, &[1], 2).data).unwrap();
        assert_eq!(trimmed["destroyed_versions"], json!([1]));

        let deleted = KeyEvent::deleted(&meta, 3);
        assert_eq!(deleted.event_type, "engine.key_deleted");
        assert!(
            deleted.data.contains("\"latest_version\":2"),
            "{}",
            deleted.data
        );
        assert_eq!(stream_id("payments"), "engine-key-payments");
        // Every stream id is one the controller accepts: letters, digits and -_.:/@,
        // at most 256 bytes (key names are at most 128 of letters, digits, '.', '_', '-').
        let longest = stream_id(&"k".repeat(crate::keys::model::MAX_NAME_LEN));
        assert!(longest.len() <= 256);
    }
}
