-- The outbox table is a contract: any service, in any language, may insert rows into it with
-- plain SQL inside its own transaction. Inserters set id (a UUID as text, v7 recommended),
-- topic, key (NULL = no order), payload and optionally headers (a JSON object of strings);
-- every other column has a default and belongs to the relay. See docs/outbox.md.
-- Times owned by the relay are Unix milliseconds.
CREATE TABLE onephase_outbox (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT    NOT NULL,
    topic         TEXT    NOT NULL,
    key           TEXT,
    payload       BLOB    NOT NULL,
    headers       TEXT    NOT NULL DEFAULT '{}',
    created_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    available_at  INTEGER NOT NULL DEFAULT 0,
    claimed_by    TEXT,
    claimed_until INTEGER,
    last_error    TEXT,
    published_at  INTEGER,
    dead_at       INTEGER
);

CREATE UNIQUE INDEX onephase_outbox_id ON onephase_outbox (id);
CREATE INDEX onephase_outbox_unpublished ON onephase_outbox (seq) WHERE published_at IS NULL;
CREATE INDEX onephase_outbox_unpublished_key ON onephase_outbox (key, seq)
    WHERE published_at IS NULL AND key IS NOT NULL;
CREATE INDEX onephase_outbox_published ON onephase_outbox (seq) WHERE published_at IS NOT NULL;

CREATE TABLE onephase_inbox (
    consumer     TEXT    NOT NULL,
    message_id   TEXT    NOT NULL,
    processed_at INTEGER NOT NULL,
    PRIMARY KEY (consumer, message_id)
) WITHOUT ROWID;
CREATE INDEX onephase_inbox_processed_at ON onephase_inbox (processed_at);
