-- Distinct users per source in [$2, $3) (NULL: open), from raw events: no rollup can
-- answer a distinct count over an arbitrary range. (DISTINCT in a subquery hashes;
-- count(DISTINCT ...) would sort.)
--   $1 text[] sources
SELECT source, count(*) AS users
FROM (
    SELECT DISTINCT source, user_id FROM events
    WHERE source = ANY($1::text[])
      AND occurred_at >= coalesce($2::timestamptz, '-infinity')
      AND occurred_at < coalesce($3::timestamptz, 'infinity')
      AND user_id IS NOT NULL
) u
GROUP BY source
