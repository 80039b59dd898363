-- The embedded log: durable topics in the store, for running with no broker.
-- Positions are handed out under the topic row's write lock, so they become visible in the
-- order they were assigned and a reader moving forward by position never skips a late commit.
CREATE TABLE onephase_log_topics (
    topic         TEXT PRIMARY KEY,
    next_position INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE onephase_log_records (
    topic       TEXT    NOT NULL,
    position    INTEGER NOT NULL,
    id          TEXT    NOT NULL,
    key         TEXT,
    payload     BLOB    NOT NULL,
    headers     TEXT    NOT NULL,
    created_at  TEXT    NOT NULL,
    appended_at TEXT    NOT NULL,
    PRIMARY KEY (topic, position)
) WITHOUT ROWID;

-- A message id appears once per topic: a re-published envelope is absorbed, not duplicated.
CREATE UNIQUE INDEX onephase_log_records_id ON onephase_log_records (topic, id);

CREATE TABLE onephase_log_groups (
    group_name TEXT    NOT NULL,
    topic      TEXT    NOT NULL,
    committed  INTEGER NOT NULL,
    updated_at TEXT    NOT NULL,
    PRIMARY KEY (group_name, topic)
) WITHOUT ROWID;
