-- Partition maps, their every version, and the moves started through the server.
CREATE TABLE IF NOT EXISTS onephase_partition_maps (
    name TEXT PRIMARY KEY,
    version BIGINT NOT NULL,
    spec TEXT NOT NULL,
    updated_ms BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS onephase_partition_map_history (
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    spec TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE IF NOT EXISTS onephase_partition_move_index (
    id TEXT PRIMARY KEY,
    map TEXT NOT NULL,
    partition BIGINT NOT NULL,
    source TEXT NOT NULL,
    spec TEXT NOT NULL,
    saga_run TEXT,
    created_ms BIGINT NOT NULL,
    ended INTEGER NOT NULL DEFAULT 0
);

-- One move at a time per map: a move switches the map by compare-and-set from the version
-- it started from, so a second one switching first would roll the other back.
CREATE UNIQUE INDEX IF NOT EXISTS onephase_partition_move_index_active
    ON onephase_partition_move_index (map) WHERE ended = 0;
