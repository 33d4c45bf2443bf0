"""Events accepted before any worker has started are written once one does.

A work-queue message that no consumer's filter covers leaves the work stream as soon as
the history stream has copied it: so every role (ingress too) makes the durable
consumers of its sources when it connects, before it accepts anything.
"""

from __future__ import annotations

from typing import Any

import anyio
import nats
import pytest

from sluice.config import Settings
from sluice.edges.bus import JetStreamBus

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # nats-py


async def history_acked(js: Any, stream: str, seq: int) -> bool:
    """True once the history's source consumer (the one that is not sluice's) on
    `stream` has acked up to `seq`."""
    sourcing = [c for c in await js.consumers_info(stream) if not c.name.startswith("sluice-")]
    return bool(sourcing) and all(
        c.ack_floor is not None and (c.ack_floor.stream_seq or 0) >= seq for c in sourcing
    )


async def test_what_ingress_accepts_before_the_first_worker_waits_for_it(
    nats_url: str, nats_prefix: str
) -> None:
    settings = Settings(
        nats_url=nats_url,
        stream=f"{nats_prefix}_EVENTS",
        subject_prefix=nats_prefix,
        sources=("facebook", "tiktok"),
    )
    async with JetStreamBus.connect(settings) as ingress:  # no worker anywhere yet
        for i in range(3):
            await ingress.publish("facebook", b"early-%d" % i, msg_id=f"early-{i}", headers={})
    nc = await nats.connect(nats_url)
    try:
        js: Any = nc.jetstream()
        with anyio.fail_after(30):  # the history has copied them and acked its copies
            while not await history_acked(js, settings.stream, 3):
                await anyio.sleep(0.05)
        assert (await js.stream_info(settings.stream)).state.messages == 3  # still to write
    finally:
        await nc.close()
    async with JetStreamBus.connect(settings) as worker:
        sub = await worker.subscribe("facebook")
        taken: list[bytes] = []
        try:
            with anyio.fail_after(30):
                while len(taken) < 3:
                    for delivery in await sub.fetch(3, 1.0):
                        taken.append(delivery.data)
                        await delivery.ack()
        finally:
            await sub.close()
    assert sorted(taken) == [b"early-0", b"early-1", b"early-2"]
