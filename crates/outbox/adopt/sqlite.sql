-- What migration 1 creates besides the outbox table, for a table the application created
-- itself (from migrations/sqlite/1_outbox.sql, with its own migration tool). Idempotent.
CREATE UNIQUE INDEX IF NOT EXISTS onephase_outbox_id ON onephase_outbox (id);
CREATE INDEX IF NOT EXISTS onephase_outbox_unpublished ON onephase_outbox (seq) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS onephase_outbox_unpublished_key ON onephase_outbox (key, seq)
    WHERE published_at IS NULL AND key IS NOT NULL;
CREATE INDEX IF NOT EXISTS onephase_outbox_published ON onephase_outbox (seq) WHERE published_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS onephase_inbox (
    consumer     TEXT    NOT NULL,
    message_id   TEXT    NOT NULL,
    processed_at INTEGER NOT NULL,
    PRIMARY KEY (consumer, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS onephase_inbox_processed_at ON onephase_inbox (processed_at);
