-- The event log. global_position is assigned by the single appender inside the append
-- transaction (never by AUTOINCREMENT), so positions are gap-free and commit-ordered.
CREATE TABLE events (
    global_position INTEGER PRIMARY KEY,
    stream_id TEXT NOT NULL,
    stream_version INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    data TEXT NOT NULL,
    actor TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    causation_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    idempotency_key TEXT,
    recorded_at_ms INTEGER NOT NULL,
    UNIQUE (stream_id, stream_version)
);
CREATE UNIQUE INDEX events_idempotency_key ON events (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX events_type ON events (event_type, global_position);

-- The latest snapshot of a stream's state, so that long streams load from it.
CREATE TABLE snapshots (
    stream_id TEXT PRIMARY KEY,
    stream_version INTEGER NOT NULL,
    data TEXT NOT NULL,
    recorded_at_ms INTEGER NOT NULL
);
