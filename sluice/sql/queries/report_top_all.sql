-- The top users or videos over all time, from entity_totals.
--   $1 entity ('user' | 'video'), $2 text[] sources, $3 'events' | 'revenue', $4 limit
-- By revenue: only those with a transaction. Ties: the other measure, source, key.
SELECT source, key, events, revenue, transactions FROM entity_totals
WHERE entity = $1::text AND source = ANY($2::text[])
  AND ($3::text = 'events' OR transactions > 0)
ORDER BY CASE WHEN $3::text = 'revenue' THEN revenue END DESC NULLS LAST,
         events DESC, revenue DESC, source, key
LIMIT $4::integer
