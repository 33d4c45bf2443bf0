-- Users or videos in [$3, $4) (NULL: open), from raw events, in one scan: the distinct
-- count per source, and the top $5 by events and by revenue. No rollup can answer these
-- over an arbitrary range; the reports that need them (demographics' users, the four
-- top-N lists) share this one answer (`PgReportStore`). The range is an index-only
-- scan of events_source_occurred_at_covering_idx (migration 007).
--   $1 entity ('user' | 'video'), $2 text[] sources
-- Rows: list 'distinct' (source, events = the count); lists 'events' and 'revenue' in
-- `rank` order (by events, ties by revenue, then source and key; by revenue among those
-- with a transaction, ties by events, then source and key).
--   $5 how many of each list (the API's largest limit: every top-N is a prefix of it)
WITH totals AS MATERIALIZED (
    SELECT source, key, count(*) AS events, coalesce(sum(revenue), 0) AS revenue,
           count(revenue) AS transactions
    FROM (
        SELECT source, CASE WHEN $1::text = 'user' THEN user_id ELSE video_id END AS key,
               revenue
        FROM events
        WHERE source = ANY($2::text[])
          AND occurred_at >= coalesce($3::timestamptz, '-infinity')
          AND occurred_at < coalesce($4::timestamptz, 'infinity')
    ) x
    WHERE key IS NOT NULL
    GROUP BY source, key
)
SELECT 'distinct' AS list, 0::bigint AS rank, source, NULL::text AS key, count(*) AS events,
       NULL::numeric AS revenue, NULL::bigint AS transactions
FROM totals GROUP BY source
UNION ALL
SELECT 'events', row_number() OVER (ORDER BY events DESC, revenue DESC, source, key), *
FROM (SELECT * FROM totals ORDER BY events DESC, revenue DESC, source, key LIMIT $5::integer) t
UNION ALL
SELECT 'revenue', row_number() OVER (ORDER BY revenue DESC, events DESC, source, key), *
FROM (SELECT * FROM totals WHERE transactions > 0
      ORDER BY revenue DESC, events DESC, source, key LIMIT $5::integer) t
