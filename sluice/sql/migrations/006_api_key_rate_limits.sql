-- 006: a key's own rate limits (issue 13), per second: NULL takes the profile's
-- (SLUICE_RATE_LIMIT_REQUESTS, SLUICE_RATE_LIMIT_EVENTS), 0 is no limit.

ALTER TABLE api_keys
    ADD COLUMN rate_requests integer CONSTRAINT api_keys_rate_requests_sane CHECK (rate_requests >= 0),
    ADD COLUMN rate_events   integer CONSTRAINT api_keys_rate_events_sane CHECK (rate_events >= 0);
