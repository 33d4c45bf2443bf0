-- 005: API keys (issue 13). Only a keyed hash of each key is stored: HMAC-SHA256 of the
-- key under the server secret (SLUICE_KEY_SECRET, or <SLUICE_DATA_DIR>/key.secret).
-- The key itself is shown once, by `sluice keys create`, and never stored or logged.

CREATE TABLE api_keys (
    id           bigserial   PRIMARY KEY,
    name         text        NOT NULL UNIQUE,
    key_hash     bytea       NOT NULL UNIQUE,
    scopes       text[]      NOT NULL,
    sources      text[],                  -- NULL: every source
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,             -- updated at most once per cache TTL
    revoked_at   timestamptz,
    CONSTRAINT api_keys_scopes_known CHECK (
        cardinality(scopes) > 0 AND scopes <@ ARRAY['ingest', 'report', 'admin']::text[]
    )
);
