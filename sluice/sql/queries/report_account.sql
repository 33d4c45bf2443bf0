-- One account's events in [$2, $3): counts by type (event_type set) and, on the row with
-- event_type NULL, the total and the distinct users.
SELECT GROUPING(event_type) = 1 AS overall, event_type, count(*) AS events,
       count(DISTINCT user_id) AS users
FROM events
WHERE account_id = $1::text AND occurred_at >= $2::timestamptz AND occurred_at < $3::timestamptz
GROUP BY GROUPING SETS ((event_type), ())
