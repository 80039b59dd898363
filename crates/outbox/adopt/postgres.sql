-- What migration 1 creates besides the outbox table, for a table the application created
-- itself (from migrations/postgres/1_outbox.sql, with its own migration tool). Idempotent.
CREATE UNIQUE INDEX IF NOT EXISTS onephase_outbox_id ON onephase_outbox (id);
CREATE INDEX IF NOT EXISTS onephase_outbox_unpublished ON onephase_outbox (seq) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS onephase_outbox_unpublished_key ON onephase_outbox (key, seq)
    WHERE published_at IS NULL AND key IS NOT NULL;
CREATE INDEX IF NOT EXISTS onephase_outbox_published ON onephase_outbox (seq) WHERE published_at IS NOT NULL;
ALTER TABLE onephase_outbox SET (
    fillfactor = 70,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02
);
CREATE OR REPLACE FUNCTION onephase_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('onephase_outbox', '');
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS onephase_outbox_notify ON onephase_outbox;
CREATE TRIGGER onephase_outbox_notify AFTER INSERT ON onephase_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION onephase_outbox_notify();
CREATE TABLE IF NOT EXISTS onephase_inbox (
    consumer     TEXT        NOT NULL,
    message_id   UUID        NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX IF NOT EXISTS onephase_inbox_processed_at ON onephase_inbox (processed_at);
