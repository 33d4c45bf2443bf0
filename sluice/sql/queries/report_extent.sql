-- The timestamps of the first and last stored event (two index probes).
SELECT min(occurred_at) AS first, max(occurred_at) AS last FROM events
