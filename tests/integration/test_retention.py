"""Retention that cannot wall up, end to end: the real engine, nats-server and
PostgreSQL, more events than the stream's max_bytes pushed through it."""

from __future__ import annotations

import anyio
import asyncpg
import httpx
import pytest

from sluice.app import Engine, open_engine
from sluice.config import Settings
from tests.factories import make_events

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

MiB = 1024 * 1024


async def stored(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM events")
        return count
    finally:
        await conn.close()


def sample(engine: Engine, name: str, labels: dict[str, str]) -> float | None:
    return engine.metrics.registry.get_sample_value(name, labels)


async def test_more_than_max_bytes_of_events_go_through_a_small_stream(
    nats_url: str, fresh_database_url: str, nats_prefix: str
) -> None:
    """Before: limits retention kept every message, so once 2 MiB had been written the
    webhook answered 503 "maximum bytes exceeded" for good, every event long stored.
    Now each round is stored and leaves the work stream, and the next is taken."""
    settings = Settings(
        nats_url=nats_url,
        database_url=fresh_database_url,
        http_port=0,
        stream=f"{nats_prefix}_EVENTS",
        subject_prefix=nats_prefix,
        stream_max_bytes=2 * MiB,
        flush_interval=0.02,
        fetch_timeout=0.2,
        metrics_interval=0.2,
        drain_timeout=15,
    )
    events = make_events(12_000, seed=11)  # ~5 MiB of JSON: past max_bytes twice over
    rounds = [events[i : i + 3000] for i in range(0, len(events), 3000)]
    sent_bytes = 0
    async with (
        open_engine(settings) as engine,
        httpx.AsyncClient(base_url=engine.http_url, timeout=30) as client,
    ):
        for number, round_ in enumerate(rounds, 1):
            for i in range(0, len(round_), 500):
                response = await client.post("/webhook", json=round_[i : i + 500])
                assert response.status_code == 202, (number, response.text)
                sent_bytes += len(response.request.content)
            with anyio.fail_after(60):  # stored, and out of the work stream
                while await stored(fresh_database_url) < 3000 * number:
                    await anyio.sleep(0.1)
                while sample(engine, "stream_messages", {"stream": settings.stream}) != 0:
                    await anyio.sleep(0.1)
        assert sent_bytes > 2 * settings.stream_max_bytes
        with anyio.fail_after(30):  # the figures from JetStream and PostgreSQL
            while (
                sum(
                    sample(engine, "events_stored_rows", {"source": s}) or 0
                    for s in settings.sources
                )
                < len(events)
                or (
                    sample(engine, "stream_last_seq", {"stream": settings.history_stream_name}) or 0
                )
                < 24
            ):
                await anyio.sleep(0.1)
    assert await stored(fresh_database_url) == len(events)
