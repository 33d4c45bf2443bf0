-- One source's users or videos in [$3, $4) (NULL: open), from raw events, in one scan:
-- how many distinct, and the top $5 by events and by revenue. No rollup can answer these
-- over an arbitrary range; the reports that need them (demographics' users, the top
-- users and videos) share this answer (`PgReportStore`). The range is an index-only scan
-- of events_source_occurred_at_covering_idx (migration 007).
--   $1 entity ('user' | 'video'), $2 source
--   $5 how many of each list (the API's largest limit: every top-N is a prefix of it)
-- Rows: list 'distinct' (events = the count); lists 'events' and 'revenue' in `rank`
-- order (by events, ties by revenue, then key; by revenue among those with a
-- transaction, ties by events, then key).
WITH totals AS MATERIALIZED (
    SELECT key, count(*) AS events,
           -- FILTER: no sum state for the many keys without revenue (half the time)
           coalesce(sum(revenue) FILTER (WHERE revenue IS NOT NULL), 0) AS revenue,
           count(revenue) AS transactions
    FROM (
        SELECT CASE WHEN $1::text = 'user' THEN user_id ELSE video_id END AS key, revenue
        FROM events
        WHERE source = $2::text
          AND occurred_at >= coalesce($3::timestamptz, '-infinity')
          AND occurred_at < coalesce($4::timestamptz, 'infinity')
    ) x
    WHERE key IS NOT NULL
    GROUP BY key
)
SELECT 'distinct' AS list, 0::bigint AS rank, NULL::text AS key, count(*) AS events,
       NULL::numeric AS revenue, NULL::bigint AS transactions
FROM totals
UNION ALL
SELECT 'events', row_number() OVER (ORDER BY events DESC, revenue DESC, key), *
FROM (SELECT * FROM totals ORDER BY events DESC, revenue DESC, key LIMIT $5::integer) t
UNION ALL
SELECT 'revenue', row_number() OVER (ORDER BY revenue DESC, events DESC, key), *
FROM (SELECT * FROM totals WHERE transactions > 0
      ORDER BY revenue DESC, events DESC, key LIMIT $5::integer) t
