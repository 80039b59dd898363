-- Bearer tokens for the HTTP API. Only the SHA-256 of a token is stored: the token itself is
-- shown once, when it is created, and cannot be recovered from this table.
CREATE TABLE onephase_api_tokens (
    name         TEXT PRIMARY KEY,
    role         TEXT NOT NULL CHECK (role IN ('admin', 'client')),
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at   TIMESTAMPTZ NOT NULL,
    revoked_at   TIMESTAMPTZ
);
