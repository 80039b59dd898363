-- Rate-limit state: one row per key (its policy's prefix included). Times are Unix
-- microseconds on the deciding process's clock.
--   gcra:           a = theoretical arrival time
--   fixed_window:   a = window, b = count
--   sliding_window: a = window, b = previous window's count, c = current count
--   sliding_log:    b = units in the log, c = the last entry's sequence number
CREATE TABLE onephase_limits (
    key        TEXT    PRIMARY KEY,
    a          INTEGER NOT NULL,
    b          INTEGER NOT NULL,
    c          INTEGER NOT NULL,
    -- From when on the row is the same as no row: the sweep deletes it then.
    expires_us INTEGER NOT NULL
) WITHOUT ROWID;

-- The sliding log's admissions.
CREATE TABLE onephase_limit_log (
    key   TEXT    NOT NULL,
    at_us INTEGER NOT NULL,
    seq   INTEGER NOT NULL,
    cost  INTEGER NOT NULL,
    PRIMARY KEY (key, at_us, seq)
) WITHOUT ROWID;
