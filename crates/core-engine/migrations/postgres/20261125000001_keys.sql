-- Named keys (metadata) and their versions (wrapped material).
CREATE TABLE engine_keys (
    name                   TEXT PRIMARY KEY,
    key_type               TEXT NOT NULL,
    derived                BIGINT NOT NULL,
    min_decryption_version BIGINT NOT NULL,
    min_encryption_version BIGINT NOT NULL,
    min_available_version  BIGINT NOT NULL,
    deletion_allowed       BIGINT NOT NULL,
    keep_last_versions     BIGINT NOT NULL,
    max_age_seconds        BIGINT NOT NULL,
    latest_version         BIGINT NOT NULL,
    -- Incremented by every change: concurrent writers check it (optimistic locking).
    revision               BIGINT NOT NULL,
    created_at_ms          BIGINT NOT NULL,
    updated_at_ms          BIGINT NOT NULL
);

CREATE TABLE engine_key_versions (
    key_name      TEXT NOT NULL REFERENCES engine_keys (name) ON DELETE CASCADE,
    version       BIGINT NOT NULL,
    -- The material sealed by the master key; NULL once trimmed.
    wrapped       BYTEA,
    master_key_id TEXT NOT NULL,
    public_key    BYTEA,
    seal_count    BIGINT NOT NULL DEFAULT 0,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (key_name, version)
);
