"""Every report, through the real pipeline, against a plain-Python computation.

Hypothesis draws a set of events (small pools of users, countries, campaigns, videos, so
groups collide; timestamps across day and hour boundaries), re-sends some of them, shuffles
the arrival order, posts everything to the running engine, waits until the distinct events
are stored, then compares each report (for a drawn range and source) with
`report_oracle` over the distinct events. One engine serves every example; the tables are
emptied between examples and each example's event ids are new (the JetStream duplicate
window would otherwise drop a re-posted envelope).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.app import Engine, open_engine
from sluice.config import Settings
from tests.factories import make_event
from tests.integration import report_oracle as oracle

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

BASE = datetime(2025, 3, 10, tzinfo=UTC)
USERS = {"facebook": ["fb_1", "fb_2", "fb_3", "fb_4"], "tiktok": ["tt_1", "tt_2", "tt_3"]}
COUNTRIES = {"US": ["Austin", "Seattle"], "DE": ["Berlin"], "BR": ["Recife", "Rio"]}
AGES = [15, 18, 24, 25, 40, 64, 65, 80]
FOLLOWERS = [0, 999, 1000, 9999, 10_000, 150_000, 1_000_000, 5_000_000]
AMOUNTS = ["0.10", "19.99", "100.00", "0.01", "624844.19", "3.33", "9999999999999999.99", None]


@pytest.fixture
async def engine(nats_url: str, fresh_database_url: str, nats_prefix: str) -> AsyncIterator[Engine]:
    config = Settings(
        nats_url=nats_url,
        database_url=fresh_database_url,
        http_port=0,
        stream=f"{nats_prefix}_EVENTS",
        subject_prefix=nats_prefix,
        flush_interval=0.01,
        fetch_timeout=0.2,
        metrics_interval=1.0,
        drain_timeout=15,
    )
    async with open_engine(config) as running:
        yield running


def build_event(rng: random.Random, event_id: str) -> dict[str, Any]:
    source = rng.choice(["facebook", "tiktok"])
    stage = rng.choice(["top", "bottom"])
    purchase = {"facebook": "checkout.complete", "tiktok": "purchase"}[source]
    if stage == "bottom" and rng.random() < 0.5:  # revenue events are common here
        event = make_event(source, stage, event_id, rng=rng, eventType=purchase)
    else:
        event = make_event(source, stage, event_id, rng=rng)
    moment = BASE + timedelta(seconds=rng.uniform(-30 * 3600, 30 * 3600))
    event["timestamp"] = moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
    user = event["data"]["user"]
    engagement = event["data"]["engagement"]
    user["userId"] = rng.choice(USERS[source])
    country = rng.choice(list(COUNTRIES))
    if source == "facebook":
        user["age"] = rng.choice(AGES)
        user["location"] = {"country": country, "city": rng.choice(COUNTRIES[country])}
        if stage == "bottom":
            engagement["campaignId"] = rng.choice(["cmp_a", "cmp_b", "cmp_c"])
            engagement["purchaseAmount"] = rng.choice(AMOUNTS)
        elif engagement.get("videoId") is not None:
            engagement["videoId"] = rng.choice(["vid_1", "vid_2"])
    else:
        user["followers"] = rng.choice(FOLLOWERS)
        if stage == "top":
            engagement["country"] = country
            engagement["videoId"] = rng.choice(["vid_1", "v_2", "v_3"])
        else:
            engagement["purchaseAmount"] = rng.choice(AMOUNTS)
    return event


def build_generic(rng: random.Random, event_id: str) -> dict[str, Any]:
    moment = datetime.now(UTC) - timedelta(hours=rng.uniform(0, 30))
    return {
        "event_id": event_id,
        "account_id": rng.choice(["acc_1", "acc_2"]),
        "user_id": rng.choice(["u1", "u2", "u3"]),
        "type": rng.choice(["login", "page.view", "signup"]),
        "timestamp": moment.isoformat(),
        "metadata": {"n": rng.randrange(5)},
    }


bounds = st.one_of(
    st.none(),
    st.integers(-32, 32).map(lambda h: BASE + timedelta(hours=h)),  # hour-aligned
    st.integers(-2, 2).map(lambda d: BASE + timedelta(days=d)),  # day-aligned
    st.integers(-32 * 3600, 32 * 3600).map(lambda s: BASE + timedelta(seconds=s, microseconds=7)),
)


async def post_all(client: httpx.AsyncClient, bodies: list[tuple[str, list[Any]]]) -> None:
    for path, body in bodies:
        response = await client.post(path, json=body)
        assert response.status_code == 202, response.text


async def wait_stored(database_url: str, expected: int) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        with anyio.fail_after(60):
            while await conn.fetchval("select count(*) from events") < expected:
                await anyio.sleep(0.02)
    finally:
        await conn.close()


async def truncate(database_url: str) -> None:
    """Empty the events and every rollup (any table but the migrations' own)."""
    conn = await asyncpg.connect(database_url)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            " AND tablename <> 'schema_migrations'"
        )
        await conn.execute("TRUNCATE " + ", ".join(f'"{t["tablename"]}"' for t in tables))
    finally:
        await conn.close()


def q(**params: Any) -> dict[str, str]:
    out = {}
    for k, v in params.items():
        if v is not None:
            out[k] = v.isoformat() if isinstance(v, datetime) else str(v)
    return out


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**32),
    size=st.integers(1, 60),
    resent=st.floats(0, 0.5),
    lo=bounds,
    hi=bounds,
    source=st.sampled_from([None, "facebook", "tiktok"]),
    interval=st.sampled_from([None, "minute", "hour", "day"]),
)
async def test_every_report_matches_a_plain_computation_over_the_distinct_events(
    engine: Engine,
    seed: int,
    size: int,
    resent: float,
    lo: datetime | None,
    hi: datetime | None,
    source: str | None,
    interval: str | None,
) -> None:
    if lo is not None and hi is not None and hi < lo:
        lo, hi = hi, lo
    url = engine.settings.database_url or ""
    await truncate(url)
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:8]
    events = [build_event(rng, f"{run}-{i}") for i in range(size)]
    generic = [build_generic(rng, f"{run}-g{i}") for i in range(rng.randrange(6))]
    copies = events + [dict(e) for e in rng.sample(events, int(size * resent))]
    copies += generic + rng.sample(generic, len(generic) // 2)
    rng.shuffle(copies)
    bodies: list[tuple[str, list[Any]]] = []
    while copies:
        take = rng.choice([1, 3, 10, 40])
        chunk, copies = copies[:take], copies[take:]
        ads = [e for e in chunk if "source" in e]
        products = [e for e in chunk if "source" not in e]
        bodies += [("/webhook", ads)] if ads else []
        bodies += [("/webhook/generic", products)] if products else []

    async with httpx.AsyncClient(base_url=engine.http_url, timeout=30) as client:
        await post_all(client, bodies)
        await wait_stored(url, len(events) + len(generic))

        chosen = oracle.select(events, lo, hi, source)
        common = q(**{"from": lo, "to": hi, "source": source})

        async def get(path: str, **params: Any) -> Any:
            response = await client.get(path, params={**common, **q(**params)})
            assert response.status_code == 200, (path, response.text)
            return response.json()

        group_by = rng.sample(["source", "funnelStage", "eventType", "country"], rng.randint(1, 4))
        canonical = [k for k in ["source", "funnelStage", "eventType", "country"] if k in group_by]
        got = await get("/reports/events", groupBy=",".join(group_by), interval=interval)
        assert got == oracle.events_report(chosen, canonical, interval)
        stage = rng.choice(["top", "bottom"])
        got = await get("/reports/events", funnelStage=stage, interval=interval)
        assert got == oracle.events_report(
            chosen, ["source", "funnelStage", "eventType"], interval, funnel_stage=stage
        )

        assert await get("/reports/revenue", interval=interval) == oracle.revenue_report(
            chosen, interval
        )
        got = await get("/reports/revenue", campaignId="cmp_b", interval=interval)
        assert got == oracle.revenue_report(chosen, interval, campaign_id="cmp_b")
        assert await get("/reports/demographics") == oracle.demographics_report(chosen, source)
        assert await get("/reports/funnel") == oracle.funnel_report(chosen)
        assert await get("/reports/countries") == oracle.countries_report(chosen, None)
        assert await get("/reports/countries", limit=2) == oracle.countries_report(chosen, 2)
        for entity in ("campaigns", "users", "videos"):
            for by in ("events", "revenue"):
                got = await get("/reports/top", entity=entity, by=by, limit=3)
                assert got == oracle.top_report(chosen, entity, by, 3), (entity, by)

        listed: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            page = await client.get("/events", params={"limit": 7, **q(cursor=cursor)})
            assert page.status_code == 200, page.text
            listed += page.json()["events"]
            cursor = page.json()["nextCursor"]
            if cursor is None:
                break
        by_id = {e["eventId"]: e for e in events} | {e["event_id"]: e for e in generic}
        assert sorted(e.get("eventId", e.get("event_id")) for e in listed) == sorted(by_id)
        for stored in listed[:3]:
            assert stored.pop("receivedAt")
            assert stored == by_id[stored.get("eventId", stored.get("event_id"))]
        one = (await client.get(f"/events/{events[0]['eventId']}")).json()
        assert one.pop("receivedAt") and one == events[0]

        now = datetime.now(UTC)
        for account in ("acc_1", "acc_2"):
            response = await client.get(f"/reports/accounts/{account}/summary")
            summary = response.json()
            window = (
                datetime.fromisoformat(summary.pop("from")),
                datetime.fromisoformat(summary.pop("to")),
            )
            assert window[1] - window[0] == timedelta(hours=24)
            assert abs(window[1] - now) < timedelta(minutes=1)
            assert summary == oracle.account_report(generic, account, *window)
