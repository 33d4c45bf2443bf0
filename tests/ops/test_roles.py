"""Roles in one event loop against real NATS and PostgreSQL: ingress and worker apart,
reports alone; one correlation id from HTTP to the database row."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import anyio
import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sluice.app import Engine, open_engine
from sluice.config import Settings
from sluice.engine import FatalError
from tests.factories import engine_settings, make_events

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings(nats_url: str, fresh_database_url: str, nats_prefix: str) -> Settings:
    return engine_settings(
        nats_url,
        fresh_database_url,
        nats_prefix,
        sources=("facebook", "tiktok"),
        metrics_interval=0.1,
    )


async def rows(database_url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch("select event_id, correlation_id from events"))
    finally:
        await conn.close()


async def eventually(condition: Any, timeout: float = 30) -> None:
    """Integration only: the pipeline is asynchronous across real servers."""
    with anyio.fail_after(timeout):
        while not await condition():
            await anyio.sleep(0.05)


async def get(engine: Engine, path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=engine.http_url, timeout=10) as client:
        return await client.get(path)


def gauge(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def labelled(text: str, name: str, labels: dict[str, str] | None = None) -> list[float]:
    """The values of `name`'s samples (with `labels` among theirs, when given)."""
    values = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and (labels or {}).items() <= sample.labels.items():
                values.append(sample.value)
    return values


async def test_ingress_and_worker_apart_with_one_correlation_id_to_the_row(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    events = make_events(40, seed=11)
    async with (
        open_engine(settings, role="worker") as worker,
        open_engine(settings, role="ingress") as ingress,
    ):
        assert ingress.store is None  # ingress never needs PostgreSQL
        ready = (await get(ingress, "/health/ready")).json()
        assert set(ready["checks"]) == {"nats", "draining"}
        ready = (await get(worker, "/health/ready")).json()
        assert set(ready["checks"]) == {"nats", "postgres", "migrations", "draining"}
        assert ready["status"] == "ready"
        live = (await get(worker, "/health/live")).json()
        assert live["supervisor"] == "running" and live["actors"]["http"] is True

        async with httpx.AsyncClient(base_url=worker.http_url) as client:
            assert (await client.post("/webhook", json=events)).status_code in (404, 405)
        async with httpx.AsyncClient(base_url=ingress.http_url) as client:
            response = await client.post(
                "/webhook", json=events, headers={"X-Correlation-ID": "trace-4711"}
            )
        assert response.status_code == 202 and response.json()["accepted"] == 40
        assert response.headers["X-Correlation-ID"] == "trace-4711"

        async def stored() -> bool:
            return len(await rows(settings.database_url or "")) == 40

        await eventually(stored)

        async def reconciled() -> bool:
            """The figures from PostgreSQL and JetStream: every event accepted is a
            row, nothing left in the work stream or held."""
            accepted = sum(labelled((await get(ingress, "/metrics")).text, "events_accepted_total"))
            text = (await get(worker, "/metrics")).text
            return (
                sum(labelled(text, "events_stored_rows")) == accepted == 40
                and labelled(text, "stream_messages", {"stream": settings.stream}) == [0.0]
                and gauge(text, "messages_held") == 0
            )

        await eventually(reconciled)
        worker_metrics = (await get(worker, "/metrics")).text
        assert 'consumer_pending_messages{source="facebook"} 0.0' in worker_metrics
        assert "dead_letter_queue_size 0.0" in worker_metrics
    assert {r["correlation_id"] for r in await rows(settings.database_url or "")} == {"trace-4711"}

    def carried(logger: str) -> list[logging.LogRecord]:
        return [
            r
            for r in caplog.records
            if r.name == logger
            and (
                getattr(r, "correlation_id", None) == "trace-4711"
                or "trace-4711" in getattr(r, "correlation_ids", ())
            )
        ]

    assert carried("sluice.webhook"), "the webhook logs the request"
    assert carried("sluice.consumer"), "the consumer logs the batch"
    assert carried("sluice.writer"), "the writer logs the commit"


async def test_reports_role_needs_only_postgres(settings: Settings) -> None:
    alone = dataclasses.replace(settings, nats_url=None)
    async with open_engine(alone, role="reports") as reports:
        assert reports.bus is None
        response = await get(reports, "/health/ready")
        assert response.status_code == 200
        assert set(response.json()["checks"]) == {"postgres", "migrations", "draining"}
        async with httpx.AsyncClient(base_url=reports.http_url) as client:
            assert (await client.post("/webhook", json=[])).status_code in (404, 405)
        assert "# TYPE events_stored_rows gauge" in (await get(reports, "/metrics")).text


async def test_an_unknown_role_is_refused(settings: Settings) -> None:
    with pytest.raises(ValueError, match="unknown role 'boss'"):
        async with open_engine(settings, role="boss"):
            pass


async def test_ingress_processes_share_one_port_with_reuse_port(settings: Settings) -> None:
    shared = dataclasses.replace(settings, http_reuse_port=True)
    async with open_engine(shared, role="ingress") as first:
        assert first.ingress is not None and first.ingress.bound is not None
        port = first.ingress.bound[1]
        same_port = dataclasses.replace(shared, http_port=port)
        async with open_engine(same_port, role="ingress") as second:
            assert second.http_url == first.http_url
            async with httpx.AsyncClient(base_url=first.http_url) as client:
                response = await client.post("/webhook", json=make_events(3, seed=5))
            assert response.status_code == 202 and response.json()["accepted"] == 3


async def test_without_reuse_port_a_second_bind_fails(settings: Settings) -> None:
    async with open_engine(settings, role="ingress") as first:
        assert first.ingress is not None and first.ingress.bound is not None
        taken = dataclasses.replace(settings, http_port=first.ingress.bound[1])
        with pytest.raises(ExceptionGroup) as caught:
            async with open_engine(taken, role="ingress"):
                pass
        fatal = caught.value.subgroup(FatalError)  # not restarted: fatal at once
        assert fatal is not None and "address already in use" in repr(fatal)
