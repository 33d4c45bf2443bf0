"""The max-deliveries backstop against real nats-server and PostgreSQL."""

from __future__ import annotations

import dataclasses
import json

import anyio
import asyncpg
import pytest

from sluice.actors.backstop import MaxDeliveriesBackstop
from sluice.config import Settings
from sluice.edges.bus import JetStreamBus
from sluice.edges.store import PgEventStore
from sluice.engine.testing import run_actor
from sluice.metrics import Metrics
from tests.integration.test_store import row

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.faults]


def message(*ids: str) -> bytes:
    events = [{"eventId": i, "source": "facebook"} for i in ids]
    body = {"v": 1, "source": "facebook", "receivedAt": "2026-01-01T00:00:00Z", "events": events}
    return json.dumps(body).encode()


async def test_a_message_that_reached_max_deliveries_unstored_is_lettered_and_removed(
    nats_url: str, nats_prefix: str, fresh_database_url: str
) -> None:
    settings = dataclasses.replace(
        Settings(nats_url=nats_url, database_url=fresh_database_url),
        stream=f"{nats_prefix}_EVENTS",
        subject_prefix=nats_prefix,
        ack_wait=0.5,
        max_deliver=2,
    )
    async with (
        JetStreamBus.connect(settings) as bus,
        PgEventStore.open(fresh_database_url, migrate=True) as store,
    ):
        await store.write_batch([row("stored-1"), row("stored-2")])
        stuck = await bus.publish(
            "facebook", message("lost-1", "lost-2"), msg_id="m1", headers={"X-Correlation-ID": "r1"}
        )
        done = await bus.publish(
            "facebook", message("stored-1", "stored-2"), msg_id="m2", headers={}
        )
        subscription = await bus.subscribe("facebook")
        backstop = MaxDeliveriesBackstop(
            bus.watch_max_deliveries, store, max_deliver=2, metrics=Metrics(), poll=0.2
        )
        peek = await bus.watch_max_deliveries()
        conn = await asyncpg.connect(fresh_database_url)
        try:
            async with run_actor(backstop, timeout=10) as handle:
                # A writer that takes the messages and never acks them (it died each time).
                with anyio.fail_after(60):
                    while await peek.message(stuck.seq) or await peek.message(done.seq):
                        await subscription.fetch(10, 0.5)
                handle.stop()
            letters = await conn.fetch(
                "SELECT source, reason, payload, correlation_id FROM dead_letters"
            )
        finally:
            await conn.close()
            await peek.close()
            await subscription.close()
    assert [dict(r) for r in letters] == [
        {
            "source": "facebook",
            "reason": "reached max deliveries (2) without being stored",
            "payload": message("lost-1", "lost-2"),
            "correlation_id": "r1",
        }
    ]
