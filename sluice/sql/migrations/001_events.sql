-- 001: raw events and dead letters.
--
-- Each migration runs in its own transaction together with its schema_migrations row
-- (see sluice/sql/migrate.py): no BEGIN/COMMIT here, and nothing that cannot run in a
-- transaction block (CREATE INDEX CONCURRENTLY, ALTER TYPE ... ADD VALUE on old servers).

-- One row per event ever accepted. The primary key on event_id is THE dedup authority:
-- the writer inserts with ON CONFLICT (event_id) DO NOTHING and trusts what comes back.
-- Every index here is paid for on every insert (target ~50k rows/s): keep the list short,
-- reports read rollup tables, not this one, for anything hot.
CREATE TABLE events (
    event_id        text        PRIMARY KEY,
    source          text        NOT NULL,
    funnel_stage    text,
    event_type      text        NOT NULL,
    occurred_at     timestamptz NOT NULL,   -- the event's own timestamp
    received_at     timestamptz NOT NULL,   -- when ingress accepted it
    user_id         text,
    country         text,
    campaign_id     text,
    purchase_amount numeric,                -- exact, as the publisher sent it (never float)
    correlation_id  text,
    data            jsonb       NOT NULL    -- the whole event, unknown fields included
);

-- Time-window scans over all sources, and per-source time windows.
CREATE INDEX events_occurred_at_idx ON events (occurred_at);
CREATE INDEX events_source_occurred_at_idx ON events (source, occurred_at);

-- Payloads that can never be stored, kept raw so they can be inspected and replayed.
CREATE TABLE dead_letters (
    id          bigserial   PRIMARY KEY,
    source      text        NOT NULL,
    reason      text        NOT NULL,
    payload     bytea       NOT NULL,
    attempts    integer     NOT NULL DEFAULT 1,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    replayed_at timestamptz
);

-- `sluice dlq list/replay` walks the letters not yet replayed, oldest first.
CREATE INDEX dead_letters_pending_idx ON dead_letters (id) WHERE replayed_at IS NULL;
