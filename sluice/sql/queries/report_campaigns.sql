-- Per-campaign counts and revenue in a report's scope (rollup_campaigns + raw edges).
--   $1..$5 the window, as in report_totals.sql; $6 text[] sources
--   $7 campaign id or NULL (all campaigns); $8 series interval or NULL
-- One row per (source, campaign_id) with series = false, one per bucket with true.
WITH parts AS (
    SELECT r.bucket AS at, r.source, r.campaign_id, r.events, r.revenue, r.transactions
    FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS w (grain, lo, hi)
    CROSS JOIN LATERAL (  -- per part: an index range scan on (grain, bucket)
        SELECT * FROM rollup_campaigns x
        WHERE x.grain = w.grain::"char"
          AND x.bucket >= coalesce(w.lo, '-infinity') AND x.bucket < coalesce(w.hi, 'infinity')
        OFFSET 0  -- keeps the subquery apart, so it stays a per-part index scan
    ) r
    WHERE r.source = ANY($6::text[])
      AND ($7::text IS NULL OR r.campaign_id = $7::text)
    UNION ALL
    SELECT e.occurred_at, e.source, e.campaign_id,
           1, coalesce(e.revenue, 0), (e.revenue IS NOT NULL)::int
    FROM unnest($4::timestamptz[], $5::timestamptz[]) AS w (lo, hi)
    CROSS JOIN LATERAL (  -- per edge: an index range scan on occurred_at
        SELECT * FROM events x WHERE x.occurred_at >= w.lo AND x.occurred_at < coalesce(w.hi, 'infinity')
        OFFSET 0
    ) e
    WHERE e.source = ANY($6::text[])
      AND e.campaign_id IS NOT NULL
      AND ($7::text IS NULL OR e.campaign_id = $7::text)
)
SELECT GROUPING(source) = 1 AS series, date_trunc($8::text, at) AS bucket,
       source, campaign_id,
       sum(events)::bigint AS events, sum(revenue) AS revenue,
       sum(transactions)::bigint AS transactions
FROM parts
GROUP BY GROUPING SETS ((source, campaign_id), (date_trunc($8::text, at)))
