-- Key changes waiting to be reported to mesh-controller's event store (an outbox): each
-- row is written in the same transaction as the change it describes and deleted once
-- the controller has stored it, so a change is reported even across crashes and outages.
CREATE TABLE engine_key_events (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Sent with the event: the controller stores a retried report only once.
    idempotency_key TEXT NOT NULL UNIQUE,
    event_type      TEXT NOT NULL,
    key_name        TEXT NOT NULL,
    -- JSON.
    data            TEXT NOT NULL,
    recorded_at_ms  BIGINT NOT NULL
);
