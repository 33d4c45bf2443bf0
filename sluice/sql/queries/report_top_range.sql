-- The top users or videos in [$3, $4) (NULL: open), from raw events.
--   $1 entity ('user' | 'video'), $2 text[] sources, $5 'events' | 'revenue', $6 limit
SELECT source, key, count(*) AS events, coalesce(sum(revenue), 0) AS revenue,
       count(revenue) AS transactions
FROM (
    SELECT source, CASE WHEN $1::text = 'user' THEN user_id ELSE video_id END AS key, revenue
    FROM events
    WHERE source = ANY($2::text[])
      AND occurred_at >= coalesce($3::timestamptz, '-infinity')
      AND occurred_at < coalesce($4::timestamptz, 'infinity')
) x
WHERE key IS NOT NULL
GROUP BY source, key
HAVING $5::text = 'events' OR count(revenue) > 0
ORDER BY CASE WHEN $5::text = 'revenue' THEN coalesce(sum(revenue), 0) END DESC NULLS LAST,
         count(*) DESC, coalesce(sum(revenue), 0) DESC, source, key
LIMIT $6::integer
