-- 007: the per-source time index also holds what the range reports read from raw events.
--
-- Distinct users and the top users and videos over a partial range have no rollup: they
-- read every event in the range (sluice/sql/queries/report_entities_range.sql). With the
-- user, video and revenue in the index, that read is an index-only scan: it does not
-- visit the table, whose rows of one day can lie on any of its pages (events arrive out
-- of order, and backfills land anywhere). It replaces (source, occurred_at), which
-- every range query on one source already used, so inserts still update as many indexes.
--
-- Building it locks out writers (not readers) of events until it is done; this file runs
-- in a transaction, where CREATE INDEX CONCURRENTLY cannot. On a large table, build it
-- beforehand without a lock, under this name, and this migration keeps it (a failed
-- concurrent build leaves an invalid index: drop it and build again):
--   CREATE INDEX CONCURRENTLY events_source_occurred_at_covering_idx
--       ON events (source, occurred_at) INCLUDE (user_id, video_id, revenue);
SET LOCAL maintenance_work_mem = '256MB';

CREATE INDEX IF NOT EXISTS events_source_occurred_at_covering_idx
    ON events (source, occurred_at) INCLUDE (user_id, video_id, revenue);

DROP INDEX IF EXISTS events_source_occurred_at_idx;
