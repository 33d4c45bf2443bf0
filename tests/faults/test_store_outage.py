"""A PostgreSQL outage under load holds, it does not crash (a private server per test).

The embedded PostgreSQL child is paused (SIGSTOP) and then killed (SIGKILL) and started
again by PID while events keep arriving: the webhook keeps answering 202 from JetStream,
readiness says postgres is failing meanwhile, and once the database is back every event
that got a 202 is stored exactly once within seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg
import httpx
import psutil
import pytest

from sluice.app import Engine, open_engine
from sluice.config import Settings
from sluice.edges.embedded import EmbeddedPostgres
from tests.asyncpg_leaks import tolerating_orphaned_copy_waiters
from tests.factories import engine_settings, make_events
from tests.pause import pause

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.faults]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # nats-py and asyncpg are asyncio-only


@pytest.fixture
def private_postgres() -> Iterator[EmbeddedPostgres]:
    # Not under pytest's tmp_path: pytest resets /tmp/pytest-of-<user> to mode 0700 when
    # any session starts, and PostgreSQL runs as another user when the tests run as root.
    with tempfile.TemporaryDirectory(prefix="sluice-outage-") as data_dir:
        server = EmbeddedPostgres(Path(data_dir), port=0, database="postgres")
        server.start()
        try:
            yield server
        finally:
            server.stop()


class Load:
    """Posts arrays of 10 events until stopped; remembers every id answered 202."""

    def __init__(self, engine: Engine) -> None:
        self.events = iter(make_events(20_000, seed=41))
        self.accepted: set[str] = set()
        self.statuses: list[int] = []
        self.stop = anyio.Event()
        self.url = engine.http_url

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                body = [next(self.events) for _ in range(10)]
                response = await client.post("/webhook", json=body)
                self.statuses.append(response.status_code)
                if response.status_code == 202:
                    self.accepted |= {e["eventId"] for e in body}
                await anyio.sleep(0.02)

    async def answered(self, more: int) -> None:
        """Wait until `more` further requests were answered."""
        goal = len(self.statuses) + more
        with anyio.fail_after(30):
            while len(self.statuses) < goal:
                await anyio.sleep(0.02)


async def stored(url: str) -> list[str]:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        return [r[0] for r in await conn.fetch("SELECT event_id FROM events")]
    finally:
        await conn.close()


async def postgres_ready(engine: Engine) -> bool:
    async with httpx.AsyncClient(base_url=engine.http_url, timeout=30) as client:
        checks: dict[str, Any] = (await client.get("/health/ready")).json()["checks"]
    return bool(checks["postgres"]["ok"])


async def test_postgres_paused_then_killed_under_load_loses_nothing_and_ingress_answers(
    nats_url: str, nats_prefix: str, private_postgres: EmbeddedPostgres
) -> None:
    url = private_postgres.url
    settings = engine_settings(nats_url, url, nats_prefix)
    settings = dataclasses.replace(settings, ack_wait=6.0)  # held well past ack_wait
    async with (
        tolerating_orphaned_copy_waiters(),
        open_engine(settings) as engine,
        anyio.create_task_group() as tg,
    ):
        load = Load(engine)
        tg.start_soon(load.run)
        await load.answered(20)

        pid = private_postgres.pid
        assert pid is not None
        # Paused: the postmaster and every backend, so statements under way and new
        # connections all hang; nothing is refused.
        paused = [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
        for each in paused:
            pause(each)
        before = len(load.statuses)
        try:
            await anyio.sleep(10)  # the length of the fault, not a wait for something
        finally:
            for each in paused:
                os.kill(each, signal.SIGCONT)
        assert len(load.statuses) - before >= 50, "ingress kept answering while paused"
        await load.answered(20)

        port = int(url.rsplit(":", 1)[1].split("/")[0])
        os.kill(pid, signal.SIGKILL)  # killed: connections lost, connects refused
        with anyio.fail_after(30):
            while await postgres_ready(engine):
                await anyio.sleep(0.1)
        await anyio.sleep(5)  # down for a while, under load
        await load.answered(20)
        private_postgres.stop()  # the child is gone: this releases its directory
        # Started from a worker thread, so not tied to that thread's life (PDEATHSIG).
        restarted = EmbeddedPostgres(
            private_postgres.data_dir, port=port, database="postgres", die_with_parent=False
        )
        await anyio.to_thread.run_sync(restarted.start)
        try:
            await load.answered(20)
            load.stop.set()
            ids: list[str] = []
            with anyio.fail_after(30):  # "within seconds" of the database being back
                while len(set(ids := await stored(url))) < len(load.accepted):
                    await anyio.sleep(0.2)
            assert await postgres_ready(engine)
            restarts = engine.metrics.registry.get_sample_value(
                "actor_restarts_total", {"actor": "writer[0]"}
            )
        finally:
            with contextlib.suppress(Exception):
                await engine.drain()
            await anyio.to_thread.run_sync(restarted.stop)
    assert set(load.statuses) == {202}, "ingress must answer 202 from JetStream throughout"
    assert len(ids) == len(set(ids)), "stored twice"
    assert set(ids) == load.accepted
    assert not restarts, "the writer held its batch rather than crash"


async def test_a_slow_postgres_is_waited_for_without_redeliveries(
    nats_url: str, nats_prefix: str, fresh_database_url: str
) -> None:
    """Locks held three times ack_wait: the writers wait, signalling progress, and
    JetStream redelivers nothing (a redelivery would be counted as a duplicate)."""
    settings = Settings(
        nats_url=nats_url,
        database_url=fresh_database_url,
        http_port=0,
        stream=f"{nats_prefix}_EVENTS",
        subject_prefix=nats_prefix,
        flush_interval=0.02,
        fetch_timeout=0.2,
        metrics_interval=0.2,
        drain_timeout=15,
        ack_wait=2.0,
    )
    events = make_events(50, seed=43)
    async with open_engine(settings) as engine:
        blocker = await asyncpg.connect(fresh_database_url)
        try:
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
            async with httpx.AsyncClient(base_url=engine.http_url, timeout=30) as client:
                for i in range(0, 50, 10):
                    response = await client.post("/webhook", json=events[i : i + 10])
                    assert response.status_code == 202
            with anyio.fail_after(30):
                while not await blocker.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database()"
                ):
                    await anyio.sleep(0.05)
            await anyio.sleep(3 * settings.ack_wait)  # the length of the fault
            await tx.rollback()
        finally:
            await blocker.close()
        ids: list[str] = []
        with anyio.fail_after(30):
            while len(ids := await stored(fresh_database_url)) < 50:
                await anyio.sleep(0.1)
        sample = engine.metrics.registry.get_sample_value
        duplicates = sum(
            sample("events_duplicate_total", {"source": s}) or 0 for s in settings.sources
        )
        restarts = sum(
            sample("actor_restarts_total", {"actor": f"writer[{i}]"}) or 0
            for i in range(settings.writers)
        )
    assert sorted(ids) == sorted(e["eventId"] for e in events)
    assert duplicates == 0, "held messages were redelivered"
    assert restarts == 0
