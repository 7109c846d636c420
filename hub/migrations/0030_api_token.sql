-- Bearer tokens for the HTTP API and the auditor pages (hub.audit.tokens). Only a SHA-256 of the token is kept:
-- tokens are 256-bit random values, so a fast hash is enough. Revocation sets revoked_at.
CREATE TABLE api_token (
    id            serial PRIMARY KEY,
    name          text NOT NULL UNIQUE,
    role          text NOT NULL CHECK (role IN ('auditor', 'operator')),
    account       text,                        -- auditor scoped to one establishment; NULL = every account
    token_hash    bytea NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);
