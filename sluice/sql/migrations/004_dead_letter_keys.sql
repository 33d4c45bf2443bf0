-- 004: a natural key for dead letters, so a redelivery never writes a letter twice.
--
-- A letter is keyed by a digest of its source and raw payload (the event, or the whole
-- message when a message is dead-lettered whole): the same bytes refused again update
-- the letter (attempts, last_seen, reason) instead of adding one. The writer computes
-- nothing itself; sluice/edges/store.py inserts with the same expression as below.

ALTER TABLE dead_letters
    ADD COLUMN event_id       text,   -- the event's id when the letter is one event
    ADD COLUMN correlation_id text,   -- the request that brought it, when known
    ADD COLUMN digest         bytea;

UPDATE dead_letters
SET digest = sha256(convert_to(source, 'UTF8') || '\x00'::bytea || payload);

-- Letters written twice before this migration: keep the first of each.
DELETE FROM dead_letters d
USING dead_letters first
WHERE d.digest = first.digest AND d.id > first.id;

ALTER TABLE dead_letters ALTER COLUMN digest SET NOT NULL;
ALTER TABLE dead_letters ADD CONSTRAINT dead_letters_digest_key UNIQUE (digest);

-- `sluice dlq list --source S` and `purge --before T`.
CREATE INDEX dead_letters_source_idx ON dead_letters (source, id);
CREATE INDEX dead_letters_last_seen_idx ON dead_letters (last_seen);
