-- The event store. Times are Unix milliseconds and ids and JSON are text, the same on both
-- backends, so that most statements are one text.

-- The last global position handed out. An append updates this one row first and holds it to
-- commit, so positions become visible in the order they were assigned: a reader moving forward
-- by position never skips an event whose transaction committed late.
CREATE TABLE onephase_events_head (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    position BIGINT  NOT NULL
);
INSERT INTO onephase_events_head (id, position) VALUES (1, 0);

-- One row per stream: its version (the number of events in it).
CREATE TABLE onephase_events_streams (
    stream     TEXT   PRIMARY KEY,
    category   TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);

CREATE TABLE onephase_events (
    position       BIGINT  PRIMARY KEY,
    id             TEXT    NOT NULL UNIQUE,
    stream         TEXT    NOT NULL,
    category       TEXT    NOT NULL,
    version        BIGINT  NOT NULL,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    data           TEXT    NOT NULL,
    metadata       TEXT    NOT NULL,
    -- Personal data: whose, and which top-level fields of data are sealed with their key.
    subject        TEXT,
    personal       TEXT,
    recorded_ms    BIGINT  NOT NULL,
    UNIQUE (stream, version)
);
CREATE INDEX onephase_events_category ON onephase_events (category, position);
CREATE INDEX onephase_events_subject ON onephase_events (subject) WHERE subject IS NOT NULL;

-- One key per data subject. Forgetting the subject deletes the key (crypto-shredding); the
-- row stays, keyless, so that the subject cannot be written to again by mistake.
CREATE TABLE onephase_events_subjects (
    subject      TEXT   PRIMARY KEY,
    key          TEXT,
    created_ms   BIGINT NOT NULL,
    forgotten_ms BIGINT
);

CREATE TABLE onephase_events_snapshots (
    stream         TEXT    NOT NULL,
    aggregate      TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    version        BIGINT  NOT NULL,
    state          TEXT    NOT NULL,
    taken_ms       BIGINT  NOT NULL,
    PRIMARY KEY (stream, aggregate)
);

-- Projections: one row per generation. `live` is the one readers use; `building` is a
-- blue/green rebuild catching up beside it.
CREATE TABLE onephase_events_projections (
    name            TEXT    NOT NULL,
    generation      BIGINT  NOT NULL,
    role            TEXT    NOT NULL CHECK (role IN ('live', 'building')),
    position        BIGINT  NOT NULL,
    last_event_ms   BIGINT,
    parked_position BIGINT,
    parked_error    TEXT,
    parked_ms       BIGINT,
    started_ms      BIGINT  NOT NULL,
    updated_ms      BIGINT  NOT NULL,
    PRIMARY KEY (name, generation)
);
CREATE UNIQUE INDEX onephase_events_projections_role ON onephase_events_projections (name, role);

-- Projections defined as data (document projections), run by every server of a fleet: one
-- definition per generation, so a rebuild can build a new shape beside the live one.
CREATE TABLE onephase_events_definitions (
    name       TEXT   NOT NULL,
    generation BIGINT NOT NULL,
    definition TEXT   NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (name, generation)
);

-- Which events changed which read-model row: the answer to "why does this row say that?".
CREATE TABLE onephase_events_lineage (
    projection TEXT   NOT NULL,
    generation BIGINT NOT NULL,
    row_key    TEXT   NOT NULL,
    position   BIGINT NOT NULL,
    PRIMARY KEY (projection, generation, row_key, position)
);

-- The rows of document projections.
CREATE TABLE onephase_events_documents (
    projection TEXT   NOT NULL,
    generation BIGINT NOT NULL,
    key        TEXT   NOT NULL,
    doc        TEXT   NOT NULL,
    position   BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (projection, generation, key)
);

-- What operators did to projections: retry, skip, rebuild, switch.
CREATE TABLE onephase_events_audit (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    projection TEXT   NOT NULL,
    action     TEXT   NOT NULL,
    position   BIGINT,
    actor      TEXT   NOT NULL,
    reason     TEXT   NOT NULL,
    at_ms      BIGINT NOT NULL
);
CREATE INDEX onephase_events_audit_projection ON onephase_events_audit (projection, id);
