//! The keyring on the real databases: every test runs on SQLite (a temporary file) and on
//! PostgreSQL (a fresh database on 127.0.0.1:5432).

use std::sync::Arc;
use std::time::Duration;

use ring::rand::SystemRandom;
use sqlx::Row as _;

use super::master::MasterKey;
use super::model::{ConfigUpdate, KeyType};
use super::store::KeyStore;
use super::{Keyring, KeyringLimits, Material};
use crate::error::EngineError;

const LIMITS: KeyringLimits = KeyringLimits {
    cache_versions: 16,
    metadata_ttl: Duration::ZERO,
    max_seals_per_version: 10,
};

fn master(byte: u8) -> MasterKey {
    MasterKey::from_bytes(&[byte; 32]).unwrap()
}

async fn keyring(url: &str, master_byte: u8) -> Keyring {
    Keyring::new(
        KeyStore::open(url, 4).await.unwrap(),
        master(master_byte),
        LIMITS,
    )
}

/// A keyring that stores an event with every change (as when changes are reported).
async fn journaled(url: &str, master_byte: u8) -> Keyring {
    keyring(url, master_byte)
        .await
        .with_journal(Arc::new(tokio::sync::Notify::new()))
}

/// The outbox's event types, oldest first.
async fn journal(keyring: &Keyring) -> Vec<String> {
    let pending = keyring.store().pending_events(1000).await.unwrap();
    assert_eq!(
        keyring.store().pending_event_count().await.unwrap(),
        pending.len() as u64
    );
    pending.into_iter().map(|event| event.event_type).collect()
}

/// Runs `test` on SQLite and on PostgreSQL.
macro_rules! on_both {
    ($name:ident, $test:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("keys.db").display());
                super::$test(&url, Backend::Sqlite).await;
            }

            #[tokio::test]
            async fn postgres() {
                let database = omnimesh_test_support::postgres::TempDatabase::create()
                    .await
                    .expect("PostgreSQL on 127.0.0.1:5432");
                super::$test(database.url(), Backend::Postgres).await;
            }

            use super::Backend;
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

on_both!(lifecycle_follows_vault_transit, lifecycle);
async fn lifecycle(url: &str, _: Backend) {
    let keyring = keyring(url, 1).await;
    let created = keyring
        .create(
            "payments",
            KeyType::Aes256Gcm,
            false,
            ConfigUpdate::default(),
        )
        .await
        .unwrap();
    assert_eq!(created.latest_version, 1);
    assert_eq!(
        keyring
            .create("payments", KeyType::Ed25519, false, ConfigUpdate::default())
            .await
            .unwrap_err(),
        EngineError::AlreadyExists("payments".into())
    );
    assert_eq!(
        keyring.get("nope").await.unwrap_err(),
        EngineError::NotFound("nope".into())
    );
    for _ in 0..3 {
        keyring.rotate("payments").await.unwrap();
    }
    let key = keyring.get("payments").await.unwrap();
    assert_eq!(key.latest_version, 4);
    assert_eq!(
        key.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    // Trim: raise the minimum, then destroy below it; the material is gone from the row.
    keyring
        .update(
            "payments",
            ConfigUpdate {
                min_decryption_version: Some(3),
                ..ConfigUpdate::default()
            },
        )
        .await
        .unwrap();
    let trimmed = keyring.trim("payments", 3).await.unwrap();
    assert_eq!(trimmed.min_available_version, 3);
    let destroyed: Vec<Option<Vec<u8>>> = sqlx::query(
        "SELECT wrapped FROM engine_key_versions WHERE key_name = 'payments' ORDER BY version",
    )
    .fetch_all(keyring.store().pool())
    .await
    .unwrap()
    .iter()
    .map(|row| row.try_get("wrapped").unwrap())
    .collect();
    assert_eq!(destroyed.iter().filter(|w| w.is_none()).count(), 2);
    assert!(destroyed[2].is_some() && destroyed[3].is_some());
    // Deletion must be allowed first.
    assert!(matches!(
        keyring.delete("payments").await,
        Err(EngineError::FailedPrecondition(_))
    ));
    keyring
        .update(
            "payments",
            ConfigUpdate {
                deletion_allowed: Some(true),
                ..ConfigUpdate::default()
            },
        )
        .await
        .unwrap();
    keyring.delete("payments").await.unwrap();
    assert!(matches!(
        keyring.get("payments").await,
        Err(EngineError::NotFound(_))
    ));
    let rows: i64 = sqlx::query("SELECT COUNT(*) AS n FROM engine_key_versions")
        .fetch_one(keyring.store().pool())
        .await
        .unwrap()
        .try_get("n")
        .unwrap();
    assert_eq!(rows, 0);
}

on_both!(material_is_stored_wrapped_and_survives_a_restart, restart);
async fn restart(url: &str, _: Backend) {
    let rng = SystemRandom::new();
    let sealed = {
        let keyring = keyring(url, 7).await;
        let meta = keyring
            .create("k", KeyType::Aes256Gcm, false, ConfigUpdate::default())
            .await
            .unwrap();
        let handle = keyring.version(&meta, 1).await.unwrap();
        let Material::Aead { key, raw, .. } = &handle.material else {
            panic!("an AEAD key");
        };
        // The stored blob is not the key.
        let stored: Vec<u8> = sqlx::query("SELECT wrapped FROM engine_key_versions")
            .fetch_one(keyring.store().pool())
            .await
            .unwrap()
            .try_get("wrapped")
            .unwrap();
        assert!(
            !stored
                .windows(raw.len())
                .any(|window| window == raw.as_slice())
        );
        key.seal(&rng, b"ad", b"hello").unwrap()
    };
    let again = keyring(url, 7).await;
    let meta = again.get("k").await.unwrap();
    let handle = again.version(&meta, 1).await.unwrap();
    let Material::Aead { key, .. } = &handle.material else {
        panic!("an AEAD key");
    };
    assert_eq!(key.open(b"ad", &sealed).unwrap(), b"hello");
    // Another master key cannot unwrap it, and says nothing about why to the caller.
    let wrong = keyring(url, 8).await;
    let meta = wrong.get("k").await.unwrap();
    assert_eq!(
        wrong.version(&meta, 1).await.unwrap_err(),
        EngineError::Internal
    );
}

on_both!(
    a_failure_between_generating_and_storing_leaves_nothing,
    half_written
);
async fn half_written(url: &str, backend: Backend) {
    let keyring = journaled(url, 1).await;
    let pool = keyring.store().pool();
    keyring
        .create("rot", KeyType::HmacSha256, false, ConfigUpdate::default())
        .await
        .unwrap();
    // A real failure inside the database, on the second insert of the transaction.
    let statements: &[&str] = match backend {
        Backend::Sqlite => &[
            "CREATE TRIGGER boom BEFORE INSERT ON engine_key_versions WHEN NEW.key_name IN ('boom', 'rot') \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
        ],
        Backend::Postgres => &[
            "CREATE FUNCTION boom() RETURNS trigger AS $$ BEGIN \
             IF NEW.key_name IN ('boom', 'rot') THEN RAISE EXCEPTION 'injected failure'; END IF; \
             RETURN NEW; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER boom BEFORE INSERT ON engine_key_versions \
             FOR EACH ROW EXECUTE FUNCTION boom()",
        ],
    };
    for statement in statements {
        sqlx::query(*statement).execute(pool).await.unwrap();
    }
    let failed = keyring
        .create("boom", KeyType::HmacSha256, false, ConfigUpdate::default())
        .await;
    assert_eq!(failed.unwrap_err(), EngineError::Internal);
    let keys: i64 = sqlx::query("SELECT COUNT(*) AS n FROM engine_keys WHERE name = 'boom'")
        .fetch_one(pool)
        .await
        .unwrap()
        .try_get("n")
        .unwrap();
    assert_eq!(keys, 0, "the key row was rolled back with the version");
    assert!(matches!(
        keyring.get("boom").await,
        Err(EngineError::NotFound(_))
    ));
    // A rotation that fails the same way leaves the key as it was.
    assert_eq!(
        keyring.rotate("rot").await.unwrap_err(),
        EngineError::Internal
    );
    let key = keyring.get("rot").await.unwrap();
    assert_eq!(key.latest_version, 1);
    assert_eq!(key.versions.len(), 1);
    assert_eq!(key.revision, 1);
    // Only the change that was stored has an event.
    assert_eq!(journal(&keyring).await, ["engine.key_created"]);
}

on_both!(
    concurrent_replicas_rotate_without_losing_a_version,
    concurrent
);
async fn concurrent(url: &str, _: Backend) {
    let first = Arc::new(journaled(url, 3).await);
    first
        .create(
            "shared",
            KeyType::ChaCha20Poly1305,
            false,
            ConfigUpdate::default(),
        )
        .await
        .unwrap();
    // Four "replicas" (keyrings with their own caches and locks) on one database.
    let mut replicas = vec![first];
    for _ in 0..3 {
        replicas.push(Arc::new(journaled(url, 3).await));
    }
    let mut tasks = Vec::new();
    for replica in &replicas {
        for _ in 0..5 {
            let replica = Arc::clone(replica);
            tasks.push(tokio::spawn(async move { replica.rotate("shared").await }));
        }
    }
    let mut won = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => won += 1,
            Err(EngineError::Aborted(_)) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        won >= 4,
        "each replica's first rotation cannot lose to itself"
    );
    let key = replicas[0].get("shared").await.unwrap();
    assert_eq!(key.latest_version, 1 + won);
    let versions: Vec<u32> = key.versions.iter().map(|v| v.version).collect();
    assert_eq!(
        versions,
        (1..=1 + won).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    // One event per stored change: the losers of the race left none.
    let events = replicas[0].store().pending_events(1000).await.unwrap();
    assert_eq!(events.len() as u32, 1 + won);
    let rotated: Vec<serde_json::Value> = events[1..]
        .iter()
        .map(|event| {
            serde_json::from_str::<serde_json::Value>(&event.data).unwrap()["version"].clone()
        })
        .collect();
    assert_eq!(
        rotated,
        (2..=1 + won)
            .map(serde_json::Value::from)
            .collect::<Vec<_>>(),
        "in the order the rotations were stored"
    );
}

on_both!(every_change_is_stored_with_its_event, journaled_changes);
async fn journaled_changes(url: &str, _: Backend) {
    let keyring = journaled(url, 4).await;
    keyring
        .create("audited", KeyType::Ed25519, false, ConfigUpdate::default())
        .await
        .unwrap();
    keyring.rotate("audited").await.unwrap();
    keyring
        .update(
            "audited",
            ConfigUpdate {
                min_decryption_version: Some(2),
                deletion_allowed: Some(true),
                ..ConfigUpdate::default()
            },
        )
        .await
        .unwrap();
    keyring.trim("audited", 2).await.unwrap();
    // Refused changes store nothing.
    assert!(keyring.trim("audited", 9).await.is_err());
    assert!(keyring.rotate("missing").await.is_err());
    keyring.delete("audited").await.unwrap();
    assert_eq!(
        journal(&keyring).await,
        [
            "engine.key_created",
            "engine.key_rotated",
            "engine.key_config_updated",
            "engine.key_trimmed",
            "engine.key_deleted"
        ]
    );
    let events = keyring.store().pending_events(1000).await.unwrap();
    let ids: Vec<i64> = events.iter().map(|event| event.id).collect();
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
    let mut keys: Vec<&str> = events.iter().map(|e| e.idempotency_key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), 5, "every change has its own idempotency key");
    let trimmed: serde_json::Value = serde_json::from_str(&events[3].data).unwrap();
    assert_eq!(trimmed["destroyed_versions"], serde_json::json!([1]));
    assert_eq!(trimmed["min_available_version"], 2);
    for event in &events {
        assert_eq!(event.key, "audited");
        // Public keys and material never travel in an event.
        assert!(!event.data.contains("public_key"), "{}", event.data);
    }
    // A reported event leaves the outbox; forgetting it twice (two replicas) is harmless.
    keyring.store().forget_event(ids[0]).await.unwrap();
    keyring.store().forget_event(ids[0]).await.unwrap();
    assert_eq!(keyring.store().pending_event_count().await.unwrap(), 4);
    assert_eq!(
        keyring.store().pending_events(2).await.unwrap()[0].id,
        ids[1]
    );
    // Without a journal nothing is stored.
    let quiet = super::Keyring::new(KeyStore::open(url, 2).await.unwrap(), master(4), LIMITS);
    quiet
        .create("quiet", KeyType::HmacSha256, false, ConfigUpdate::default())
        .await
        .unwrap();
    assert_eq!(quiet.store().pending_event_count().await.unwrap(), 4);
}

on_both!(seal_counts_are_persisted_and_enforce_the_budget, seals);
async fn seals(url: &str, _: Backend) {
    let first = keyring(url, 2).await;
    let meta = first
        .create("budget", KeyType::Aes256Gcm, false, ConfigUpdate::default())
        .await
        .unwrap();
    let handle = first.version(&meta, 1).await.unwrap();
    first.reserve_seals(&meta, 1, &handle, 6).unwrap();
    first.flush_seals().await;
    first.reserve_seals(&meta, 1, &handle, 4).unwrap();
    assert!(matches!(
        first.reserve_seals(&meta, 1, &handle, 1),
        Err(EngineError::FailedPrecondition(_))
    ));
    assert_eq!(first.seal_counts("budget").await.unwrap()[&1], 10);
    first.flush_seals().await;
    // A restarted engine knows the count: the budget holds across restarts.
    let again = keyring(url, 2).await;
    let handle = again.version(&meta, 1).await.unwrap();
    assert!(again.reserve_seals(&meta, 1, &handle, 1).is_err());
    // A new version has a fresh budget.
    let rotated = again.rotate("budget").await.unwrap();
    let handle = again.version(&rotated, 2).await.unwrap();
    again.reserve_seals(&rotated, 2, &handle, 1).unwrap();
}

#[tokio::test]
async fn a_database_url_of_another_kind_is_refused() {
    let error = KeyStore::open("mysql://localhost/x", 1).await.unwrap_err();
    assert!(
        error.to_string().contains("sqlite: or postgres:"),
        "{error}"
    );
}

on_both!(
    due_keys_are_rotated_once_per_period_across_replicas,
    auto_rotation
);
async fn auto_rotation(url: &str, _: Backend) {
    const HOUR_MS: i64 = 3_600_000;
    let every_day = ConfigUpdate {
        auto_rotate: Some(Duration::from_secs(24 * 3600)),
        ..ConfigUpdate::default()
    };
    let first = Arc::new(journaled(url, 4).await);
    let daily = first
        .create("daily", KeyType::Aes256Gcm, false, every_day)
        .await
        .unwrap();
    first
        .create("manual", KeyType::Ed25519, false, ConfigUpdate::default())
        .await
        .unwrap();
    let created = daily.versions[0].created_at_ms;
    // Not due yet: nothing happens.
    assert_eq!(first.rotate_due(created + 23 * HOUR_MS).await.unwrap(), []);

    // Due: four replicas on one database look at once; one rotation gets through.
    let mut replicas = vec![Arc::clone(&first)];
    for _ in 0..3 {
        replicas.push(Arc::new(journaled(url, 4).await));
    }
    let at = created + 25 * HOUR_MS;
    let mut tasks = Vec::new();
    for replica in &replicas {
        let replica = Arc::clone(replica);
        tasks.push(tokio::spawn(async move { replica.rotate_due(at).await }));
    }
    let mut rotated = Vec::new();
    for task in tasks {
        rotated.extend(task.await.unwrap().unwrap());
    }
    assert_eq!(rotated, [("daily".to_owned(), 2)]);
    let key = first.get("daily").await.unwrap();
    assert_eq!(key.latest_version, 2);
    assert_eq!(key.versions[1].created_at_ms, at);
    assert_eq!(key.auto_rotate, Some(Duration::from_secs(24 * 3600)));
    assert_eq!(first.get("manual").await.unwrap().latest_version, 1);
    // The period counts from the new version.
    assert_eq!(first.rotate_due(at + 23 * HOUR_MS).await.unwrap(), []);
    assert_eq!(
        first.rotate_due(at + 24 * HOUR_MS).await.unwrap(),
        [("daily".to_owned(), 3)]
    );
    // The rotation is an event like any other, marked automatic.
    let events = first.store().pending_events(1000).await.unwrap();
    let rotations: Vec<serde_json::Value> = events
        .iter()
        .filter(|event| event.event_type == "engine.key_rotated")
        .map(|event| serde_json::from_str(&event.data).unwrap())
        .collect();
    assert_eq!(rotations.len(), 2, "one per rotation, none from the losers");
    assert!(rotations.iter().all(|data| data["automatic"] == true));
    // Turned off (and reported so): never due again.
    let off = first
        .update(
            "daily",
            ConfigUpdate {
                auto_rotate: Some(Duration::ZERO),
                ..ConfigUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(off.auto_rotate, None);
    assert_eq!(first.rotate_due(i64::MAX).await.unwrap(), []);
    let restarted = keyring(url, 4).await;
    assert_eq!(restarted.get("daily").await.unwrap().auto_rotate, None);
}

/// Each version's master key id and wrapped blob, in order.
async fn wrapping(keyring: &Keyring) -> Vec<(String, i64, String, Vec<u8>)> {
    sqlx::query(
        "SELECT key_name, version, master_key_id, wrapped FROM engine_key_versions \
         WHERE wrapped IS NOT NULL ORDER BY key_name, version",
    )
    .fetch_all(keyring.store().pool())
    .await
    .unwrap()
    .iter()
    .map(|row| {
        (
            row.try_get("key_name").unwrap(),
            row.try_get("version").unwrap(),
            row.try_get("master_key_id").unwrap(),
            row.try_get("wrapped").unwrap(),
        )
    })
    .collect()
}

/// The AEAD key of `name`'s `version`.
async fn aead(
    keyring: &Keyring,
    name: &str,
    version: u32,
) -> Result<Arc<super::VersionHandle>, EngineError> {
    let meta = keyring.get(name).await?;
    keyring.version(&meta, version).await
}

fn open(handle: &super::VersionHandle, sealed: &[u8]) -> Vec<u8> {
    let Material::Aead { key, .. } = &handle.material else {
        panic!("an AEAD key");
    };
    key.open(b"ad", sealed).unwrap()
}

on_both!(
    a_master_key_rotation_rewraps_every_version_and_loses_none,
    master_key_rotation
);
async fn master_key_rotation(url: &str, _: Backend) {
    let rng = SystemRandom::new();
    let (old_id, new_id) = (master(1).id().to_owned(), master(2).id().to_owned());
    // Under master key 1: an AEAD key with two versions, the first trimmed later, and a
    // signing key; something sealed by each AEAD version.
    let old = keyring(url, 1).await;
    old.create("aead", KeyType::Aes256Gcm, false, ConfigUpdate::default())
        .await
        .unwrap();
    old.rotate("aead").await.unwrap();
    old.rotate("aead").await.unwrap();
    let signing = old
        .create("sign", KeyType::Ed25519, false, ConfigUpdate::default())
        .await
        .unwrap();
    let public_key = signing.versions[0].public_key.clone();
    let mut sealed = Vec::new();
    for version in [2, 3] {
        let handle = aead(&old, "aead", version).await.unwrap();
        let Material::Aead { key, .. } = &handle.material else {
            panic!("an AEAD key");
        };
        sealed.push((
            version,
            key.seal(&rng, b"ad", format!("v{version}").as_bytes())
                .unwrap(),
        ));
    }
    old.update(
        "aead",
        ConfigUpdate {
            min_decryption_version: Some(2),
            ..ConfigUpdate::default()
        },
    )
    .await
    .unwrap();
    old.trim("aead", 2).await.unwrap();
    let before = wrapping(&old).await;
    assert_eq!(
        before.len(),
        3,
        "aead v2, v3 and sign v1 hold material: {before:?}"
    );
    assert!(before.iter().all(|(.., id, _)| *id == old_id));

    // Master key 2 alone: refused, naming the versions and both keys; nothing changes.
    let stranger = keyring(url, 2).await;
    let refused = stranger.rewrap_retired().await.unwrap_err().to_string();
    assert!(
        refused.contains(&format!(
            "3 key version(s) (aead v2, aead v3, sign v1) are wrapped by master key {old_id}"
        )) && refused.contains(&new_id)
            && refused.contains("previous_master_keys_file"),
        "{refused}"
    );
    assert_eq!(wrapping(&stranger).await, before);

    // Master key 2 with master key 1 retired: every version with material is rewrapped,
    // once.
    let new = keyring(url, 2)
        .await
        .with_previous_masters(vec![master(1)], true);
    assert_eq!(new.rewrap_retired().await.unwrap(), 3);
    assert_eq!(new.rewrap_retired().await.unwrap(), 0);
    let after = wrapping(&new).await;
    assert_eq!(after.len(), 3);
    for ((name, version, id, blob), (_, _, _, old_blob)) in after.iter().zip(&before) {
        assert_eq!(*id, new_id, "{name} v{version}");
        assert_ne!(blob, old_blob, "{name} v{version} is wrapped anew");
    }

    // Master key 2 alone now opens what was sealed under master key 1's keys, and signs
    // with the same key pair; master key 1 alone no longer unwraps anything.
    let alone = keyring(url, 2).await;
    assert_eq!(alone.rewrap_retired().await.unwrap(), 0);
    for (version, sealed) in &sealed {
        let handle = aead(&alone, "aead", *version).await.unwrap();
        assert_eq!(open(&handle, sealed), format!("v{version}").into_bytes());
    }
    let sign = aead(&alone, "sign", 1).await.unwrap();
    let Material::Signer(signer) = &sign.material else {
        panic!("a signing key");
    };
    assert_eq!(Some(signer.public_key()), public_key);
    let retired = keyring(url, 1).await;
    assert_eq!(
        aead(&retired, "aead", 3).await.unwrap_err(),
        EngineError::Internal
    );
    assert!(retired.rewrap_retired().await.is_err());
}

on_both!(
    a_version_wrapped_meanwhile_by_the_retired_master_key_is_rewrapped_when_loaded,
    rewrapped_when_loaded
);
async fn rewrapped_when_loaded(url: &str, _: Backend) {
    let rng = SystemRandom::new();
    // A rollout: this replica has master key 2 with 1 retired; another, not yet updated,
    // still wraps with master key 1 (and knows 2, so it reads what this one rewraps).
    let new = keyring(url, 2)
        .await
        .with_previous_masters(vec![master(1)], true);
    let old = keyring(url, 1)
        .await
        .with_previous_masters(vec![master(2)], false);
    assert_eq!(new.rewrap_retired().await.unwrap(), 0);
    old.create("k", KeyType::Aes256Gcm, false, ConfigUpdate::default())
        .await
        .unwrap();
    let handle = aead(&old, "k", 1).await.unwrap();
    let Material::Aead { key, .. } = &handle.material else {
        panic!("an AEAD key");
    };
    let sealed = key.seal(&rng, b"ad", b"secret").unwrap();
    assert_eq!(wrapping(&new).await[0].2, master(1).id());

    let loaded = aead(&new, "k", 1).await.unwrap();
    assert_eq!(open(&loaded, &sealed), b"secret");
    assert_eq!(wrapping(&new).await[0].2, master(2).id());
    // The replica on master key 1, started afresh, still reads it, and moves nothing
    // back: not at start-up, not when it loads the version.
    let restarted = keyring(url, 1)
        .await
        .with_previous_masters(vec![master(2)], false);
    assert_eq!(restarted.rewrap_retired().await.unwrap(), 0);
    assert_eq!(
        open(&aead(&restarted, "k", 1).await.unwrap(), &sealed),
        b"secret"
    );
    assert_eq!(wrapping(&new).await[0].2, master(2).id());
    // Which it would, rewrapping on: the two would undo each other's work.
    let moving_back = keyring(url, 1)
        .await
        .with_previous_masters(vec![master(2)], true);
    assert_eq!(moving_back.rewrap_retired().await.unwrap(), 1);
    assert_eq!(wrapping(&new).await[0].2, master(1).id());
}

on_both!(
    a_tampered_blob_under_the_retired_master_key_is_left_as_it_is,
    tampered_blob
);
async fn tampered_blob(url: &str, _: Backend) {
    let old = keyring(url, 1).await;
    for name in ["good", "tampered"] {
        old.create(name, KeyType::Aes256Gcm, false, ConfigUpdate::default())
            .await
            .unwrap();
    }
    let mut blob = wrapping(&old).await[1].3.clone();
    blob[20] ^= 1;
    sqlx::query("UPDATE engine_key_versions SET wrapped = $1 WHERE key_name = 'tampered'")
        .bind(blob.clone())
        .execute(old.store().pool())
        .await
        .unwrap();
    let new = keyring(url, 2)
        .await
        .with_previous_masters(vec![master(1)], true);
    assert_eq!(new.rewrap_retired().await.unwrap(), 1);
    let rows = wrapping(&new).await;
    assert_eq!(rows[0].2, master(2).id());
    assert_eq!((rows[1].2.as_str(), &rows[1].3), (master(1).id(), &blob));
    assert_eq!(
        aead(&new, "tampered", 1).await.unwrap_err(),
        EngineError::Internal
    );
    // Without master key 1 start-up names it rather than failing at the first request.
    let error = keyring(url, 2).await.rewrap_retired().await.unwrap_err();
    assert!(error.to_string().contains("(tampered v1)"), "{error}");
}

#[test]
fn a_borrowed_version_key_finds_what_the_owned_one_stored() {
    use std::hash::BuildHasher as _;

    use quick_cache::Equivalent as _;

    let state = std::collections::hash_map::RandomState::new();
    assert_eq!(
        state.hash_one(super::VersionKey("orders", 7)),
        state.hash_one(("orders".to_owned(), 7_u32))
    );
    let owned = ("orders".to_owned(), 7_u32);
    assert!(super::VersionKey("orders", 7).equivalent(&owned));
    assert!(!super::VersionKey("orders", 8).equivalent(&owned));
    assert!(!super::VersionKey("order", 7).equivalent(&owned));
    let cache = quick_cache::sync::Cache::<(String, u32), u8>::new(4);
    cache.insert(owned, 1);
    assert_eq!(cache.get(&super::VersionKey("orders", 7)), Some(1));
    assert_eq!(cache.get(&super::VersionKey("orders", 1)), None);
}
