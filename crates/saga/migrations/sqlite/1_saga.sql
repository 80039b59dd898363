-- See migrations/postgres for what each table is for. Times are Unix milliseconds; ids are
-- UUID text; JSON is text.
CREATE TABLE onephase_saga_definitions (
    name        TEXT    NOT NULL,
    version     INTEGER NOT NULL CHECK (version >= 1),
    definition  TEXT    NOT NULL,
    digest      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE onephase_saga_runs (
    id              TEXT    PRIMARY KEY,
    saga            TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN
                        ('running', 'compensating', 'completed', 'compensated', 'needs_operator', 'aborted')),
    input           TEXT    NOT NULL,
    idempotency_key TEXT,
    input_digest    TEXT    NOT NULL,
    error           TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    finished_at     INTEGER,
    due_at          INTEGER NOT NULL,
    claimed_by      TEXT,
    claimed_until   INTEGER
);
CREATE UNIQUE INDEX onephase_saga_runs_idempotency ON onephase_saga_runs (saga, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX onephase_saga_runs_due ON onephase_saga_runs (due_at)
    WHERE state IN ('running', 'compensating');
CREATE INDEX onephase_saga_runs_state ON onephase_saga_runs (state, created_at);

CREATE TABLE onephase_saga_steps (
    run_id      TEXT    NOT NULL REFERENCES onephase_saga_runs (id) ON DELETE CASCADE,
    step        TEXT    NOT NULL,
    phase       TEXT    NOT NULL CHECK (phase IN ('action', 'compensation')),
    status      TEXT    NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    retry_base  INTEGER NOT NULL DEFAULT 0,
    definite    INTEGER NOT NULL DEFAULT 0,
    due_at      INTEGER,
    output      TEXT,
    last_error  TEXT,
    started_at  INTEGER,
    finished_at INTEGER,
    PRIMARY KEY (run_id, step, phase)
);

CREATE TABLE onephase_saga_history (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id     TEXT    NOT NULL REFERENCES onephase_saga_runs (id) ON DELETE CASCADE,
    at         INTEGER NOT NULL,
    event      TEXT    NOT NULL,
    step       TEXT,
    phase      TEXT,
    attempt    INTEGER,
    elapsed_ms INTEGER,
    detail     TEXT,
    actor      TEXT
);
CREATE INDEX onephase_saga_history_run ON onephase_saga_history (run_id, seq);
