-- The embedded log: durable topics in the store, for running with no broker.
-- Positions are handed out under the topic row's lock (held to commit), so they become visible
-- in the order they were assigned and a reader moving forward by position never skips a
-- transaction that commits late.
CREATE TABLE onephase_log_topics (
    topic         TEXT PRIMARY KEY,
    next_position BIGINT NOT NULL
);

CREATE TABLE onephase_log_records (
    topic       TEXT        NOT NULL,
    position    BIGINT      NOT NULL,
    id          UUID        NOT NULL,
    key         TEXT,
    payload     BYTEA       NOT NULL,
    headers     JSONB       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    appended_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, position)
);

-- A message id appears once per topic: a re-published envelope is absorbed, not duplicated.
CREATE UNIQUE INDEX onephase_log_records_id ON onephase_log_records (topic, id);

CREATE TABLE onephase_log_groups (
    group_name TEXT        NOT NULL,
    topic      TEXT        NOT NULL,
    committed  BIGINT      NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (group_name, topic)
);
