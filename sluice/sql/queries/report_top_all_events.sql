-- The top users or videos over all time by event count (an index walk on entity_totals).
--   $1 entity ('user' | 'video'), $2 text[] sources, $3 limit
-- Ties: revenue, then source, then key.
SELECT source, key, events, revenue, transactions FROM entity_totals
WHERE entity = $1::text AND source = ANY($2::text[])
ORDER BY events DESC, revenue DESC, source, key
LIMIT $3::integer
