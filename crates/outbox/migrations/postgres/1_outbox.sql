-- The outbox table is a contract: any service, in any language, may insert rows into it with
-- plain SQL inside its own transaction. Inserters set id (a UUID, v7 recommended), topic,
-- key (NULL = no order), payload and optionally headers (a JSON object of strings); every
-- other column has a default and belongs to the relay. See docs/outbox.md.
CREATE TABLE onephase_outbox (
    seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id            UUID        NOT NULL DEFAULT gen_random_uuid(),
    topic         TEXT        NOT NULL,
    key           TEXT,
    payload       BYTEA       NOT NULL,
    headers       JSONB       NOT NULL DEFAULT '{}',
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Relay state.
    attempts      INTEGER     NOT NULL DEFAULT 0,
    available_at  TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
    claimed_by    UUID,
    claimed_until TIMESTAMPTZ,
    last_error    TEXT,
    published_at  TIMESTAMPTZ,
    dead_at       TIMESTAMPTZ
);

CREATE UNIQUE INDEX onephase_outbox_id ON onephase_outbox (id);
-- What the relay scans: unpublished rows in order, and per key for the order check.
CREATE INDEX onephase_outbox_unpublished ON onephase_outbox (seq) WHERE published_at IS NULL;
CREATE INDEX onephase_outbox_unpublished_key ON onephase_outbox (key, seq)
    WHERE published_at IS NULL AND key IS NOT NULL;
-- What retention deletes.
CREATE INDEX onephase_outbox_published ON onephase_outbox (seq) WHERE published_at IS NOT NULL;

-- Rows are short-lived: vacuum early so dead tuples from publish and delete do not pile up.
-- Free space on each page lets the relay's claim (which changes no indexed column) be a HOT
-- update: no new index entries.
ALTER TABLE onephase_outbox SET (
    fillfactor = 70,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02
);

-- Wake relays on commit, however the row was inserted. One notification per statement, and
-- PostgreSQL folds identical notifications of one transaction into one.
CREATE FUNCTION onephase_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('onephase_outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER onephase_outbox_notify AFTER INSERT ON onephase_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION onephase_outbox_notify();

-- The inbox: one row per (consumer, message id) applied.
CREATE TABLE onephase_inbox (
    consumer     TEXT        NOT NULL,
    message_id   UUID        NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX onephase_inbox_processed_at ON onephase_inbox (processed_at);
