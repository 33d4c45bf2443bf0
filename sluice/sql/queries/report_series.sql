-- The counts of report_totals.sql (from rollup_series) per UTC bucket of $9, read
-- from the grains no wider than $9; $10 is $9's grain ('m' | 'h' | 'd'), whose buckets
-- are the series buckets already (no date_trunc per row). Buckets with events only.
--   $1..$8 as in report_totals.sql
WITH parts AS (
    SELECT CASE WHEN w.grain = $10::text THEN r.bucket ELSE date_trunc($9::text, r.bucket) END
               AS bucket,
           r.events, r.revenue, r.transactions
    FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS w (grain, lo, hi)
    CROSS JOIN LATERAL (  -- per part: an index range scan on (grain, bucket)
        SELECT * FROM rollup_series x
        WHERE x.grain = w.grain::"char"
          AND x.bucket >= coalesce(w.lo, '-infinity') AND x.bucket < coalesce(w.hi, 'infinity')
        OFFSET 0  -- keeps the subquery apart, so it stays a per-part index scan
    ) r
    WHERE r.source = ANY($6::text[])
      AND ($7::text IS NULL OR r.funnel_stage = $7::text)
      AND ($8::text IS NULL OR r.event_type = $8::text)
    UNION ALL
    SELECT date_trunc($9::text, e.occurred_at), 1, coalesce(e.revenue, 0),
           (e.revenue IS NOT NULL)::int
    FROM unnest($4::timestamptz[], $5::timestamptz[]) AS w (lo, hi)
    CROSS JOIN LATERAL (  -- per edge: an index range scan on occurred_at
        SELECT * FROM events x WHERE x.occurred_at >= w.lo AND x.occurred_at < coalesce(w.hi, 'infinity')
        OFFSET 0
    ) e
    WHERE e.source = ANY($6::text[])
      AND ($7::text IS NULL OR e.funnel_stage = $7::text)
      AND ($8::text IS NULL OR e.event_type = $8::text)
)
SELECT bucket, sum(events)::bigint AS events, sum(revenue) AS revenue,
       sum(transactions)::bigint AS transactions
FROM parts
GROUP BY bucket
