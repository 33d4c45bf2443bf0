-- 003: what made every full-range report fast at 5M events (bench/README.md "Reports"):
-- a narrow series rollup, ranking indexes for top-N, and an all-time distinct count.
-- Same rules as 002: the writer keeps them in the statement that stores the events
-- (sluice/edges/store.py), from the rows that were new.

-- rollup_events without country: what a series over a long range reads (a few times
-- fewer rows than rollup_events).
CREATE TABLE rollup_series (
    grain        "char"      NOT NULL,
    bucket       timestamptz NOT NULL,
    source       text        NOT NULL,
    funnel_stage text,
    event_type   text        NOT NULL,
    events       bigint      NOT NULL,
    revenue      numeric     NOT NULL,
    transactions bigint      NOT NULL,
    CONSTRAINT rollup_series_key UNIQUE NULLS NOT DISTINCT
        (grain, bucket, source, funnel_stage, event_type)
) PARTITION BY LIST (grain);
CREATE TABLE rollup_series_m PARTITION OF rollup_series FOR VALUES IN ('m')
    WITH (fillfactor = 80);
CREATE TABLE rollup_series_h PARTITION OF rollup_series FOR VALUES IN ('h')
    WITH (fillfactor = 80);
CREATE TABLE rollup_series_d PARTITION OF rollup_series FOR VALUES IN ('d')
    WITH (fillfactor = 80);

-- Top-N over all time as an index walk (each costs the writer an index update per
-- entity it touches; measured, the upsert itself costs far more).
CREATE INDEX entity_totals_by_events_idx ON entity_totals (entity, events DESC, revenue DESC);
CREATE INDEX entity_totals_by_revenue_idx ON entity_totals (entity, revenue DESC, events DESC)
    WHERE transactions > 0;

-- How many rows entity_totals has per (entity, source): the exact all-time distinct users,
-- kept by the writer from the entity rows it inserted (not updated).
CREATE TABLE entity_counts (
    entity text   NOT NULL,
    source text   NOT NULL,
    n      bigint NOT NULL,
    PRIMARY KEY (entity, source)
);

-- Backfill from what is stored already.
INSERT INTO rollup_series
SELECT g.grain, date_trunc(g.unit, e.occurred_at, 'UTC'), e.source, e.funnel_stage,
       e.event_type, count(*), coalesce(sum(e.revenue), 0), count(e.revenue)
FROM events e
CROSS JOIN (VALUES ('m'::"char", 'minute'), ('h', 'hour'), ('d', 'day')) g (grain, unit)
GROUP BY 1, 2, 3, 4, 5;

INSERT INTO entity_counts
SELECT entity, source, count(*) FROM entity_totals GROUP BY 1, 2;
