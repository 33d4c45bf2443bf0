-- Distinct users per source over all time (entity_counts, kept by the writer).
--   $1 text[] sources
SELECT source, n AS users FROM entity_counts
WHERE entity = 'user' AND source = ANY($1::text[])
