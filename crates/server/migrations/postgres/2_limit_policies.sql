-- Rate-limit policies defined through the API (those in the configuration file are not
-- stored). Every server on the store reads them.
CREATE TABLE onephase_limit_policies (
    name       TEXT   PRIMARY KEY,
    algorithm  TEXT   NOT NULL,
    units      BIGINT NOT NULL,
    period_ms  BIGINT NOT NULL,
    burst      BIGINT,
    fail_mode  TEXT   NOT NULL,
    created_at TEXT   NOT NULL
);
