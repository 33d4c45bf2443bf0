-- Distinct users per source over all time (entity_totals has one row per user).
--   $1 text[] sources
SELECT source, count(*) AS users FROM entity_totals
WHERE entity = 'user' AND source = ANY($1::text[])
GROUP BY source
