-- Webhook endpoints, messages, deliveries and attempts. Times are Unix milliseconds (the same
-- numbers on both backends); ids are text ("ep_...", "msg_...").
CREATE TABLE onephase_webhook_endpoints (
    id               TEXT    PRIMARY KEY,
    app              TEXT    NOT NULL,
    url              TEXT    NOT NULL,
    description      TEXT,
    -- JSON array of event types, or NULL for every type.
    event_types      TEXT,
    ordered          INTEGER NOT NULL DEFAULT 0,
    max_concurrency  INTEGER NOT NULL,
    -- Attempts per second, or NULL for no limit.
    rate_limit       INTEGER,
    -- Rate state: the theoretical arrival time of the next attempt (GCRA), Unix microseconds.
    rate_tat_us      BIGINT  NOT NULL DEFAULT 0,
    -- JSON array of {"key": "whsec_..."|"whsk_...", "expires_at_ms": n|null}.
    keys             TEXT    NOT NULL,
    disabled_at_ms   BIGINT,
    disabled_reason  TEXT,
    failing_since_ms BIGINT,
    -- While slow_until_ms is in the future, at most slow_limit attempts are in flight.
    slow_until_ms    BIGINT  NOT NULL DEFAULT 0,
    slow_limit       INTEGER NOT NULL DEFAULT 1,
    created_at_ms    BIGINT  NOT NULL,
    updated_at_ms    BIGINT  NOT NULL
);
CREATE INDEX onephase_webhook_endpoints_app ON onephase_webhook_endpoints (app, id);

CREATE TABLE onephase_webhook_messages (
    id              TEXT   PRIMARY KEY,
    app             TEXT   NOT NULL,
    event_type      TEXT   NOT NULL,
    partition_key   TEXT,
    idempotency_key TEXT,
    -- SHA-256 of the request that created it, to tell a repeat from a reuse of the key.
    digest          TEXT   NOT NULL,
    -- The exact bytes that are signed and sent.
    body            TEXT   NOT NULL,
    created_at_ms   BIGINT NOT NULL
);
CREATE UNIQUE INDEX onephase_webhook_messages_idempotency
    ON onephase_webhook_messages (app, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX onephase_webhook_messages_created ON onephase_webhook_messages (created_at_ms);

-- One row per (message, endpoint): pending until delivered or dead.
CREATE TABLE onephase_webhook_deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id      TEXT    NOT NULL REFERENCES onephase_webhook_messages (id) ON DELETE CASCADE,
    endpoint_id     TEXT    NOT NULL REFERENCES onephase_webhook_endpoints (id) ON DELETE CASCADE,
    partition_key   TEXT,
    status          TEXT    NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_at_ms      BIGINT  NOT NULL,
    -- While in the future, an attempt is in flight: nobody else claims the row.
    locked_until_ms BIGINT  NOT NULL DEFAULT 0,
    last_error      TEXT,
    updated_at_ms   BIGINT  NOT NULL,
    UNIQUE (message_id, endpoint_id)
);
-- What a claim reads, per endpoint: its due deliveries in due order, and the ones in flight
-- (locked), so that neither grows with the endpoint's backlog.
CREATE INDEX onephase_webhook_deliveries_due
    ON onephase_webhook_deliveries (endpoint_id, next_at_ms, id) WHERE status = 'pending';
CREATE INDEX onephase_webhook_deliveries_locked
    ON onephase_webhook_deliveries (endpoint_id, locked_until_ms) WHERE status = 'pending';
CREATE INDEX onephase_webhook_deliveries_order
    ON onephase_webhook_deliveries (endpoint_id, partition_key, id)
    WHERE status = 'pending' AND partition_key IS NOT NULL;
CREATE INDEX onephase_webhook_deliveries_dead ON onephase_webhook_deliveries (endpoint_id, id)
    WHERE status = 'dead';

CREATE TABLE onephase_webhook_attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id BIGINT  NOT NULL,
    message_id  TEXT    NOT NULL,
    endpoint_id TEXT    NOT NULL,
    attempt     INTEGER NOT NULL,
    at_ms       BIGINT  NOT NULL,
    -- delivered, retry, dead, gone
    outcome     TEXT    NOT NULL,
    status_code INTEGER,
    latency_ms  BIGINT  NOT NULL,
    response    TEXT,
    error       TEXT
);
CREATE INDEX onephase_webhook_attempts_message ON onephase_webhook_attempts (message_id, id);
CREATE INDEX onephase_webhook_attempts_endpoint ON onephase_webhook_attempts (endpoint_id, id);
CREATE INDEX onephase_webhook_attempts_at ON onephase_webhook_attempts (at_ms);
