-- For the TLS test of omnimesh_common::db: a migration applied over an encrypted connection.
CREATE TABLE tls_probe (id BIGSERIAL PRIMARY KEY, value TEXT NOT NULL);
