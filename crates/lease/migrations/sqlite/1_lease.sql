-- Leases: one row per name, kept after release so that its last token is never handed out
-- again. Times are Unix milliseconds on the granting server's clock.
CREATE TABLE onephase_leases (
    name           TEXT   PRIMARY KEY,
    -- Who holds it, or NULL once released.
    holder         TEXT,
    -- The last fencing token granted for this name; it only goes up.
    token          BIGINT NOT NULL,
    ttl_ms         BIGINT NOT NULL,
    acquired_at_ms BIGINT NOT NULL,
    expires_at_ms  BIGINT NOT NULL
);

-- The resource side: the highest token each fenced resource has accepted.
CREATE TABLE onephase_fences (
    resource TEXT   PRIMARY KEY,
    token    BIGINT NOT NULL
);
