-- Saga definitions stored by the server: each (name, version) once, immutable. A run keeps the
-- version it started with.
CREATE TABLE onephase_saga_definitions (
    name        TEXT        NOT NULL,
    version     INTEGER     NOT NULL CHECK (version >= 1),
    definition  JSONB       NOT NULL,
    digest      TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

-- One row per saga run. Orchestrators claim due runs (state running or compensating) with
-- FOR UPDATE SKIP LOCKED and hold them until claimed_until; every write checks the claim.
CREATE TABLE onephase_saga_runs (
    id              UUID        PRIMARY KEY,
    saga            TEXT        NOT NULL,
    version         INTEGER     NOT NULL,
    state           TEXT        NOT NULL CHECK (state IN
                        ('running', 'compensating', 'completed', 'compensated', 'needs_operator', 'aborted')),
    input           JSONB       NOT NULL,
    idempotency_key TEXT,
    input_digest    TEXT        NOT NULL,
    error           TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at     TIMESTAMPTZ,
    due_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    claimed_by      UUID,
    claimed_until   TIMESTAMPTZ
);
CREATE UNIQUE INDEX onephase_saga_runs_idempotency ON onephase_saga_runs (saga, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX onephase_saga_runs_due ON onephase_saga_runs (due_at)
    WHERE state IN ('running', 'compensating');
CREATE INDEX onephase_saga_runs_state ON onephase_saga_runs (state, created_at);
ALTER TABLE onephase_saga_runs SET (autovacuum_vacuum_scale_factor = 0.05);

-- The state of each step's action and compensation.
CREATE TABLE onephase_saga_steps (
    run_id      UUID        NOT NULL REFERENCES onephase_saga_runs (id) ON DELETE CASCADE,
    step        TEXT        NOT NULL,
    phase       TEXT        NOT NULL CHECK (phase IN ('action', 'compensation')),
    status      TEXT        NOT NULL,
    attempts    INTEGER     NOT NULL DEFAULT 0,
    -- Attempts made before the last operator retry; the attempt limit counts from here.
    retry_base  INTEGER     NOT NULL DEFAULT 0,
    definite    BOOLEAN     NOT NULL DEFAULT false,
    due_at      TIMESTAMPTZ,
    output      JSONB,
    last_error  TEXT,
    started_at  TIMESTAMPTZ,
    finished_at TIMESTAMPTZ,
    PRIMARY KEY (run_id, step, phase)
);

-- Every transition and operator action, in order: the run's history and audit trail.
CREATE TABLE onephase_saga_history (
    seq        BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id     UUID        NOT NULL REFERENCES onephase_saga_runs (id) ON DELETE CASCADE,
    at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    event      TEXT        NOT NULL,
    step       TEXT,
    phase      TEXT,
    attempt    INTEGER,
    elapsed_ms BIGINT,
    detail     TEXT,
    actor      TEXT
);
CREATE INDEX onephase_saga_history_run ON onephase_saga_history (run_id, seq);

-- Wakes orchestrators that LISTEN when a run is started (once per statement).
CREATE FUNCTION onephase_saga_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('onephase_saga', '');
    RETURN NULL;
END $$;
CREATE TRIGGER onephase_saga_runs_notify AFTER INSERT ON onephase_saga_runs
    FOR EACH STATEMENT EXECUTE FUNCTION onephase_saga_notify();
