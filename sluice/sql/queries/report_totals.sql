-- Event counts and revenue in a report's scope: whole buckets from rollup_events, the
-- edges no bucket covers from raw events (see sluice/reports/_window.py).
--   $1 text[] grains, $2 timestamptz[] bucket lows, $3 timestamptz[] highs (NULL: open)
--   $4 timestamptz[] raw lows, $5 timestamptz[] raw highs (NULL: open, past the last minute of 9999)
--   $6 text[] sources, $7 funnel stage or NULL, $8 event type or NULL
-- One row per (source, funnel_stage, event_type, country).
WITH parts AS (
    SELECT r.bucket AS at, r.source, r.funnel_stage, r.event_type, r.country,
           r.events, r.revenue, r.transactions
    FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS w (grain, lo, hi)
    CROSS JOIN LATERAL (  -- per part: an index range scan on (grain, bucket)
        SELECT * FROM rollup_events x
        WHERE x.grain = w.grain::"char"
          AND x.bucket >= coalesce(w.lo, '-infinity') AND x.bucket < coalesce(w.hi, 'infinity')
        OFFSET 0  -- keeps the subquery apart, so it stays a per-part index scan
    ) r
    WHERE r.source = ANY($6::text[])
      AND ($7::text IS NULL OR r.funnel_stage = $7::text)
      AND ($8::text IS NULL OR r.event_type = $8::text)
    UNION ALL
    SELECT e.occurred_at, e.source, e.funnel_stage, e.event_type, e.country,
           1, coalesce(e.revenue, 0), (e.revenue IS NOT NULL)::int
    FROM unnest($4::timestamptz[], $5::timestamptz[]) AS w (lo, hi)
    CROSS JOIN LATERAL (  -- per edge: an index range scan on occurred_at
        SELECT * FROM events x WHERE x.occurred_at >= w.lo AND x.occurred_at < coalesce(w.hi, 'infinity')
        OFFSET 0
    ) e
    WHERE e.source = ANY($6::text[])
      AND ($7::text IS NULL OR e.funnel_stage = $7::text)
      AND ($8::text IS NULL OR e.event_type = $8::text)
)
SELECT source, funnel_stage, event_type, country,
       sum(events)::bigint AS events, sum(revenue) AS revenue,
       sum(transactions)::bigint AS transactions
FROM parts
GROUP BY source, funnel_stage, event_type, country
