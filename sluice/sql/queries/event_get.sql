-- One stored event as JSON text, with "receivedAt" (UTC, microseconds) added.
SELECT (data || jsonb_build_object('receivedAt',
        to_char(received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')))::text
FROM events WHERE event_id = $1::text
