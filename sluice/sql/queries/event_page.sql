-- A page of events in (occurred_at, event_id) order, strictly after the cursor key.
--   $1 cursor occurred_at, $2 cursor event_id (NULL, NULL: from the start)
--   $3, $4 [from, to) (NULL: open), $5 text[] sources, $6 event type or NULL, $7 limit
-- The key never changes once stored, so pages neither repeat nor skip an event that was
-- there when paging began, whatever is inserted meanwhile.
SELECT occurred_at, event_id,
       (data || jsonb_build_object('receivedAt',
        to_char(received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')))::text AS json
FROM events
WHERE (occurred_at, event_id) > (coalesce($1::timestamptz, '-infinity'), coalesce($2::text, ''))
  AND occurred_at >= coalesce($1::timestamptz, '-infinity')  -- an index bound for the row test
  AND occurred_at >= coalesce($3::timestamptz, '-infinity')
  AND occurred_at < coalesce($4::timestamptz, 'infinity')
  AND source = ANY($5::text[])
  AND ($6::text IS NULL OR event_type = $6::text)
ORDER BY occurred_at, event_id
LIMIT $7::integer
