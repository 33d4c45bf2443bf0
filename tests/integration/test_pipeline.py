"""The first path end to end: real nats-server, real PostgreSQL, real HTTP."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import asyncpg
import httpx
import pytest

from sluice.app import Engine, open_engine
from sluice.config import Settings
from tests.factories import engine_settings, make_events

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@pytest.fixture
def settings(nats_url: str, fresh_database_url: str, nats_prefix: str) -> Settings:
    return engine_settings(nats_url, fresh_database_url, nats_prefix)


def spoil(event: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """An invalid copy of `event`, broken in one of several ways."""
    bad = dict(event, data=dict(event["data"], user=dict(event["data"]["user"])))
    kind = rng.randrange(4)
    if kind == 0:
        bad["data"]["user"]["userId"] = 12345
    elif kind == 1:
        bad["funnelStage"] = "middle"
    elif kind == 2:
        bad["timestamp"] = "yesterday"
    else:
        del bad["eventType"]
    return bad


def traffic(seed: int = 7) -> tuple[list[Any], set[str]]:
    """1,000 events in singles and arrays: 10% exact re-sends, 5% invalid.

    Returns the request bodies and the ids that must end up stored.
    """
    rng = random.Random(seed)
    events = make_events(1000, seed=seed)
    invalid = set(rng.sample(range(1000), 50))
    stream = [spoil(e, rng) if i in invalid else e for i, e in enumerate(events)]
    valid = [e for i, e in enumerate(events) if i not in invalid]
    stream += [dict(e) for e in rng.sample(valid, 100)]
    rng.shuffle(stream)
    bodies: list[Any] = []
    i = 0
    while i < len(stream):
        size = rng.choice([1, 1, 1, 5, 20, 100])
        chunk = stream[i : i + size]
        bodies.append(chunk[0] if size == 1 else chunk)
        i += size
    return bodies, {e["eventId"] for e in valid}


async def send_all(engine: Engine, bodies: Sequence[Any]) -> tuple[int, int, int]:
    accepted = duplicates = rejected = 0
    async with httpx.AsyncClient(base_url=engine.http_url, timeout=30) as client:
        for body in bodies:
            response = await client.post("/webhook", json=body)
            assert response.status_code in (202, 422), response.text
            result = response.json()
            accepted += result["accepted"]
            duplicates += result["duplicates"]
            rejected += len(result["rejected"])
    return accepted, duplicates, rejected


async def stored_ids(database_url: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        return [r["event_id"] for r in await conn.fetch("select event_id from events")]
    finally:
        await conn.close()


async def wait_for_count(database_url: str, expected: int, timeout: float = 60) -> list[str]:
    """Poll until `expected` rows are stored (the pipeline is asynchronous by design)."""
    ids: list[str] = []
    with anyio.move_on_after(timeout):
        while len(ids := await stored_ids(database_url)) < expected:
            await anyio.sleep(0.05)
    return ids


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[Engine]:
    async with open_engine(settings) as engine:
        yield engine


async def test_distinct_valid_events_are_stored_exactly_once_across_a_restart(
    settings: Settings,
) -> None:
    bodies, expected = traffic()
    half = len(bodies) // 2
    async with open_engine(settings) as engine:
        first = await send_all(engine, bodies[:half])
    # The engine drained on leaving the block; whatever it had not written is in JetStream.
    async with open_engine(settings) as engine:
        second = await send_all(engine, bodies[half:])
        ids = await wait_for_count(settings.database_url or "", len(expected))
        await anyio.sleep(0.3)  # give any (wrong) extra writes a chance to show up
        ids = await stored_ids(settings.database_url or "")
    assert len(ids) == len(set(ids)), "an event was stored twice"
    assert set(ids) == expected
    accepted = first[0] + second[0]
    rejected = first[2] + second[2]
    assert rejected == 50
    # Every valid copy is accounted for: accepted (durable) or recognised as a duplicate
    # at the door; re-sends in other requests are accepted and deduplicated downstream.
    assert accepted + first[1] + second[1] == 950 + 100
    assert accepted >= len(expected)


async def test_the_stored_row_carries_the_event_as_sent(engine: Engine, settings: Settings) -> None:
    [event] = make_events(1, seed=3)
    event["extraField"] = {"kept": True}
    async with httpx.AsyncClient(base_url=engine.http_url) as client:
        response = await client.post(
            "/webhook", json=event, headers={"X-Correlation-ID": "corr-123"}
        )
    assert response.status_code == 202
    assert response.headers["X-Correlation-ID"] == "corr-123"
    await wait_for_count(settings.database_url or "", 1)
    conn = await asyncpg.connect(settings.database_url)
    try:
        row = await conn.fetchrow("select * from events")
    finally:
        await conn.close()
    assert row["event_id"] == event["eventId"]
    assert row["source"] == event["source"]
    assert row["event_type"] == event["eventType"]
    assert row["correlation_id"] == "corr-123"
    assert '"extraField"' in row["data"] and '"kept"' in row["data"]


async def test_ready_once_everything_is_up(engine: Engine) -> None:
    async with httpx.AsyncClient(base_url=engine.http_url) as client:
        ready = await client.get("/health/ready")
        live = await client.get("/health/live")
    assert ready.status_code == 200, ready.text
    checks = ready.json()["checks"]
    assert all(checks[name]["ok"] for name in ("nats", "postgres", "migrations", "draining"))
    assert live.status_code == 200


async def test_dashboard_series_exist_at_zero_before_anything_happens(engine: Engine) -> None:
    sample = engine.metrics.registry.get_sample_value
    for source in engine.settings.sources:
        assert sample("events_failed_total", {"source": source, "reason": "store_unavailable"}) == 0
        assert sample("events_dead_lettered_total", {"source": source}) == 0
        assert sample("events_processed_total", {"source": source}) == 0
    assert sample("actor_restarts_total", {"actor": "writer[0]"}) == 0
    assert sample("actor_restarts_total", {"actor": "ingress"}) == 0


async def test_a_writer_that_loses_its_database_connection_holds_its_batch_and_loses_nothing(
    settings: Settings,
) -> None:
    settings = dataclasses.replace(settings, writers=1)
    bodies, expected = traffic(seed=11)
    admin = await asyncpg.connect(settings.database_url)
    try:
        async with open_engine(settings) as engine:
            # Hold the table so the writer's next transaction blocks, then cut it off.
            blocker = await asyncpg.connect(settings.database_url)
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute("lock table events in access exclusive mode")
            await send_all(engine, bodies[:20])
            with anyio.fail_after(30):
                while not await admin.fetchval(
                    "select count(*) from pg_stat_activity where wait_event_type = 'Lock'"
                    " and datname = current_database()"
                ):
                    await anyio.sleep(0.05)
            await admin.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity"
                " where wait_event_type = 'Lock' and datname = current_database()"
            )
            await tx.rollback()
            await blocker.close()
            await send_all(engine, bodies[20:])
            ids = await wait_for_count(settings.database_url or "", len(expected))
            restarts = engine.metrics.registry.get_sample_value(
                "actor_restarts_total", {"actor": "writer[0]"}
            )
    finally:
        await admin.close()
    assert restarts == 0  # held and retried in place, not crashed
    assert len(ids) == len(set(ids))
    assert set(ids) == expected
