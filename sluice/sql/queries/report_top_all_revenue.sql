-- The top users or videos over all time by revenue, among those with a transaction.
--   $1 entity ('user' | 'video'), $2 text[] sources, $3 limit
-- Ties: event count, then source, then key.
SELECT source, key, events, revenue, transactions FROM entity_totals
WHERE entity = $1::text AND source = ANY($2::text[]) AND transactions > 0
ORDER BY revenue DESC, events DESC, source, key
LIMIT $3::integer
