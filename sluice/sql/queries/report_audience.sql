-- Events in a report's scope by one user attribute at a time (rollup_audience + raw edges).
--   $1..$5 the window, as in report_totals.sql (hour and day grains); $6 text[] sources
WITH parts AS (
    SELECT r.source, r.dimension, r.value, r.country, r.events,
           r.followers_sum, r.followers_min, r.followers_max
    FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS w (grain, lo, hi)
    CROSS JOIN LATERAL (  -- per part: an index range scan on (grain, bucket)
        SELECT * FROM rollup_audience x
        WHERE x.grain = w.grain::"char"
          AND x.bucket >= coalesce(w.lo, '-infinity') AND x.bucket < coalesce(w.hi, 'infinity')
        OFFSET 0  -- keeps the subquery apart, so it stays a per-part index scan
    ) r
    WHERE r.source = ANY($6::text[])
    UNION ALL
    SELECT e.source, a.dimension, a.value, a.city_country, 1,
           CASE WHEN a.dimension = 'followers' THEN e.followers END,
           CASE WHEN a.dimension = 'followers' THEN e.followers END,
           CASE WHEN a.dimension = 'followers' THEN e.followers END
    FROM unnest($4::timestamptz[], $5::timestamptz[]) AS w (lo, hi)
    CROSS JOIN LATERAL (  -- per edge: an index range scan on occurred_at
        SELECT * FROM events x WHERE x.occurred_at >= w.lo AND x.occurred_at < coalesce(w.hi, 'infinity')
        OFFSET 0
    ) e
    CROSS JOIN LATERAL sluice_audience(sluice_age_range(e.age), e.gender, e.country, e.city,
                                       sluice_followers_range(e.followers), e.device) a
    WHERE e.source = ANY($6::text[])
)
SELECT source, dimension, value, country, sum(events)::bigint AS events,
       sum(followers_sum) AS followers_sum, min(followers_min) AS followers_min,
       max(followers_max) AS followers_max
FROM parts
GROUP BY source, dimension, value, country
