-- 002: what the reports read: hot columns on events, and rollups kept by the writer.
--
-- The writer updates every rollup in the same statement (and transaction) as its insert,
-- from the rows that were actually new (sluice/edges/store.py), so a duplicate never
-- counts twice. Needs PostgreSQL 15+ (UNIQUE NULLS NOT DISTINCT).

-- Hot fields the reports filter or group by, as columns (NULL where a source has none).
ALTER TABLE events
    ADD COLUMN revenue    numeric,  -- purchase_amount of a revenue event type, else NULL
    ADD COLUMN account_id text,     -- generic
    ADD COLUMN age        integer,  -- facebook user
    ADD COLUMN gender     text,     -- facebook user
    ADD COLUMN city       text,     -- facebook user
    ADD COLUMN followers  bigint,   -- tiktok user
    ADD COLUMN device     text,     -- tiktok top, facebook bottom
    ADD COLUMN video_id   text;     -- tiktok top, facebook top when set

-- The per-account summary reads one account's recent events (generic only: the partial
-- index costs nothing on the other sources' inserts).
CREATE INDEX events_account_idx ON events (account_id, occurred_at)
    WHERE account_id IS NOT NULL;

-- The bins of the demographics report; shared by the writer and the report queries.
CREATE FUNCTION sluice_age_range(age integer) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN age IS NULL THEN NULL
        WHEN age < 18 THEN '<18'
        WHEN age < 25 THEN '18-24'
        WHEN age < 35 THEN '25-34'
        WHEN age < 45 THEN '35-44'
        WHEN age < 55 THEN '45-54'
        WHEN age < 65 THEN '55-64'
        ELSE '65+'
    END
$$;

CREATE FUNCTION sluice_followers_range(followers bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN followers IS NULL THEN NULL
        WHEN followers < 1000 THEN '0-999'
        WHEN followers < 10000 THEN '1k-10k'
        WHEN followers < 100000 THEN '10k-100k'
        WHEN followers < 1000000 THEN '100k-1M'
        ELSE '1M+'
    END
$$;

-- Counts and revenue per time bucket and dimension. `grain` is the bucket width: 'm'
-- minute, 'h' hour, 'd' day (UTC); every event is counted once in each grain, and a report
-- reads each part of its range from the widest grain that fits (plus raw events for the
-- sub-minute edges), so it reads a few thousand rows at most whatever the table size.
-- Keys are kept narrow (campaigns apart, demographics unpivoted): the writer upserts one
-- row per key it touches, and fewer keys per batch is what keeps inserts fast. Each grain
-- is a partition of its own, so a scan of one grain reads pages holding only that grain;
-- fillfactor 80 leaves room for HOT updates (no indexed column is ever updated).
CREATE TABLE rollup_events (
    grain        "char"      NOT NULL,
    bucket       timestamptz NOT NULL,
    source       text        NOT NULL,
    funnel_stage text,
    event_type   text        NOT NULL,
    country      text,
    events       bigint      NOT NULL,
    revenue      numeric     NOT NULL,  -- sum of events.revenue
    transactions bigint      NOT NULL,  -- events with a revenue amount
    CONSTRAINT rollup_events_key UNIQUE NULLS NOT DISTINCT
        (grain, bucket, source, funnel_stage, event_type, country)
) PARTITION BY LIST (grain);
CREATE TABLE rollup_events_m PARTITION OF rollup_events FOR VALUES IN ('m') WITH (fillfactor = 80);
CREATE TABLE rollup_events_h PARTITION OF rollup_events FOR VALUES IN ('h') WITH (fillfactor = 80);
CREATE TABLE rollup_events_d PARTITION OF rollup_events FOR VALUES IN ('d') WITH (fillfactor = 80);

-- The same per campaign (events that have one).
CREATE TABLE rollup_campaigns (
    grain        "char"      NOT NULL,
    bucket       timestamptz NOT NULL,
    source       text        NOT NULL,
    campaign_id  text        NOT NULL,
    events       bigint      NOT NULL,
    revenue      numeric     NOT NULL,
    transactions bigint      NOT NULL,
    PRIMARY KEY (grain, bucket, source, campaign_id)
) PARTITION BY LIST (grain);
CREATE TABLE rollup_campaigns_m PARTITION OF rollup_campaigns FOR VALUES IN ('m')
    WITH (fillfactor = 80);
CREATE TABLE rollup_campaigns_h PARTITION OF rollup_campaigns FOR VALUES IN ('h')
    WITH (fillfactor = 80);
CREATE TABLE rollup_campaigns_d PARTITION OF rollup_campaigns FOR VALUES IN ('d')
    WITH (fillfactor = 80);

-- Demographics: event counts per bucket by one attribute of the acting user at a time
-- (dimension 'age' | 'gender' | 'country' | 'city' | 'followers' | 'device'; an event
-- without that attribute is not counted in it). `country` is the city's, for 'city'.
-- Follower statistics ride on the 'followers' rows. Hour and day grains only: the
-- sub-hour edges of a range are read from raw events.
CREATE TABLE rollup_audience (
    grain         "char"      NOT NULL,
    bucket        timestamptz NOT NULL,
    source        text        NOT NULL,
    dimension     text        NOT NULL,
    value         text        NOT NULL,
    country       text,
    events        bigint      NOT NULL,
    followers_sum numeric,
    followers_min bigint,
    followers_max bigint,
    CONSTRAINT rollup_audience_key UNIQUE NULLS NOT DISTINCT
        (grain, bucket, source, dimension, value, country)
) PARTITION BY LIST (grain);
CREATE TABLE rollup_audience_h PARTITION OF rollup_audience FOR VALUES IN ('h')
    WITH (fillfactor = 80);
CREATE TABLE rollup_audience_d PARTITION OF rollup_audience FOR VALUES IN ('d')
    WITH (fillfactor = 80);

-- All-time totals per user and per video: the top-N and distinct-user answers over the
-- whole range (a narrower range reads raw events).
CREATE TABLE entity_totals (
    entity       text    NOT NULL,  -- 'user' | 'video'
    source       text    NOT NULL,
    key          text    NOT NULL,
    events       bigint  NOT NULL,
    revenue      numeric NOT NULL,
    transactions bigint  NOT NULL,
    PRIMARY KEY (entity, source, key)
) WITH (fillfactor = 80);

-- The unpivot both the writer and the reports use: one row per (event, attribute it has).
CREATE FUNCTION sluice_audience(
    age_range text, gender text, country text, city text, followers_range text, device text,
    OUT dimension text, OUT value text, OUT city_country text
) RETURNS SETOF record
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT d.dimension, d.value, d.city_country
    FROM (VALUES
        ('age', age_range, NULL),
        ('gender', gender, NULL),
        ('country', country, NULL),
        ('city', city, country),
        ('followers', followers_range, NULL),
        ('device', device, NULL)
    ) d (dimension, value, city_country)
    WHERE d.value IS NOT NULL
$$;

-- Backfill: rows stored before this migration (none on a new database).
UPDATE events SET
    revenue = CASE
        WHEN (source, event_type) IN (('facebook', 'checkout.complete'), ('tiktok', 'purchase'))
        THEN purchase_amount
    END,
    account_id = CASE WHEN source = 'generic' THEN data ->> 'account_id' END,
    age = CASE WHEN source = 'facebook' THEN (data #>> '{data,user,age}')::integer END,
    gender = CASE WHEN source = 'facebook' THEN data #>> '{data,user,gender}' END,
    city = CASE WHEN source = 'facebook' THEN data #>> '{data,user,location,city}' END,
    followers = CASE WHEN source = 'tiktok' THEN (data #>> '{data,user,followers}')::bigint END,
    device = CASE WHEN source = 'tiktok' THEN data #>> '{data,engagement,device}' END,
    video_id = data #>> '{data,engagement,videoId}';

INSERT INTO rollup_events
SELECT g.grain, date_trunc(g.unit, e.occurred_at, 'UTC'), e.source, e.funnel_stage,
       e.event_type, e.country, count(*), coalesce(sum(e.revenue), 0), count(e.revenue)
FROM events e
CROSS JOIN (VALUES ('m'::"char", 'minute'), ('h', 'hour'), ('d', 'day')) g (grain, unit)
GROUP BY 1, 2, 3, 4, 5, 6;

INSERT INTO rollup_campaigns
SELECT g.grain, date_trunc(g.unit, e.occurred_at, 'UTC'), e.source, e.campaign_id,
       count(*), coalesce(sum(e.revenue), 0), count(e.revenue)
FROM events e
CROSS JOIN (VALUES ('m'::"char", 'minute'), ('h', 'hour'), ('d', 'day')) g (grain, unit)
WHERE e.campaign_id IS NOT NULL
GROUP BY 1, 2, 3, 4;

INSERT INTO rollup_audience
SELECT g.grain, date_trunc(g.unit, e.occurred_at, 'UTC'), e.source, a.dimension, a.value,
       a.city_country, count(*),
       sum(e.followers) FILTER (WHERE a.dimension = 'followers'),
       min(e.followers) FILTER (WHERE a.dimension = 'followers'),
       max(e.followers) FILTER (WHERE a.dimension = 'followers')
FROM events e
CROSS JOIN LATERAL sluice_audience(sluice_age_range(e.age), e.gender, e.country, e.city,
                                   sluice_followers_range(e.followers), e.device) a
CROSS JOIN (VALUES ('h'::"char", 'hour'), ('d', 'day')) g (grain, unit)
GROUP BY 1, 2, 3, 4, 5, 6;

INSERT INTO entity_totals
SELECT x.entity, x.source, x.key, count(*), coalesce(sum(x.revenue), 0), count(x.revenue)
FROM (
    SELECT 'user' AS entity, source, user_id AS key, revenue FROM events
    WHERE user_id IS NOT NULL
    UNION ALL
    SELECT 'video', source, video_id, revenue FROM events WHERE video_id IS NOT NULL
) x
GROUP BY 1, 2, 3;
