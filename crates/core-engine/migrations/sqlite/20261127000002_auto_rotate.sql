-- Vault's auto_rotate_period: a key is rotated when its latest version is this old (0: never).
ALTER TABLE engine_keys ADD COLUMN auto_rotate_seconds BIGINT NOT NULL DEFAULT 0;
