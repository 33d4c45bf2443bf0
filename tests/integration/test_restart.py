"""A restart picks up at once: what a stopped or dead worker held comes back within
seconds, on a real nats-server."""

from __future__ import annotations

import anyio
import pytest

from sluice.actors.keeper import Keeper
from sluice.config import Settings
from sluice.edges.bus import JetStreamBus
from sluice.engine.testing import run_actor
from sluice.inflight import HeldMessages, HoldingSubscription
from sluice.ports import Delivery, Subscription

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


def settings_for(nats_url: str, nats_prefix: str, ack_wait: float) -> Settings:
    return Settings(
        nats_url=nats_url,
        stream=f"{nats_prefix}_EVENTS",
        subject_prefix=nats_prefix,
        ack_wait=ack_wait,
        fetch_timeout=0.5,
    )


async def fetch_all(subscription: Subscription, count: int, within: float) -> list[Delivery]:
    got: list[Delivery] = []
    with anyio.fail_after(within):
        while len(got) < count:
            got.extend(await subscription.fetch(count - len(got), 0.5))
    return got


async def test_what_a_dead_worker_held_comes_back_within_ack_wait(
    nats_url: str, nats_prefix: str
) -> None:
    """The worker dies without a word (its connection drops, nothing naked)."""
    settings = settings_for(nats_url, nats_prefix, ack_wait=2.0)
    async with JetStreamBus.connect(settings) as first:
        for i in range(3):
            await first.publish("facebook", b"m%d" % i, msg_id=f"m{i}", headers={})
        held = await fetch_all(await first.subscribe("facebook"), 3, within=5)
        assert [d.num_delivered for d in held] == [1, 1, 1]
    async with JetStreamBus.connect(settings) as second:
        subscription = await second.subscribe("facebook")
        started = anyio.current_time()
        again = await fetch_all(subscription, 3, within=10)
        assert anyio.current_time() - started < settings.ack_wait + 1.0
        assert sorted(d.data for d in again) == [b"m0", b"m1", b"m2"]
        assert [d.num_delivered for d in again] == [2, 2, 2]
        for delivery in again:
            await delivery.ack()
        await subscription.close()


async def test_a_clean_stop_gives_back_at_once_and_progress_keeps_what_is_held(
    nats_url: str, nats_prefix: str
) -> None:
    """While the first worker holds its messages (three ack_waits: a slow flush), the
    keeper's progress signals keep them from the second; when it stops, the keeper
    naks them and the second gets them at once, not after ack_wait."""
    settings = settings_for(nats_url, nats_prefix, ack_wait=1.5)
    async with (
        JetStreamBus.connect(settings) as first,
        JetStreamBus.connect(settings) as second,
    ):
        for i in range(3):
            await first.publish("facebook", b"m%d" % i, msg_id=f"m{i}", headers={})
        held = HeldMessages()
        mine = HoldingSubscription(await first.subscribe("facebook"), held)
        theirs = await second.subscribe("facebook")
        async with run_actor(Keeper(held, ack_wait=settings.ack_wait)) as keeper:
            await fetch_all(mine, 3, within=5)
            with anyio.move_on_after(3 * settings.ack_wait):
                stolen = await fetch_all(theirs, 1, within=60)
                pytest.fail(f"redelivered while held: {stolen}")
            await mine.close()
            keeper.stop()
        stopped = anyio.current_time()
        again = await fetch_all(theirs, 3, within=10)
        assert anyio.current_time() - stopped < 1.0
        assert [d.num_delivered for d in again] == [2, 2, 2]
        for delivery in again:
            await delivery.ack()
        await theirs.close()
