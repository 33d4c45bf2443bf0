"""The dedup guard alone."""

from __future__ import annotations

import gc
import weakref

import pytest

from sluice.actors.dedup import DedupGuard, RecentIds
from sluice.actors.work import Work
from sluice.engine import open_channel
from sluice.engine.testing import run_actor
from sluice.metrics import Metrics
from tests.fakes import FakeDelivery, row


def test_recent_ids_stay_bounded_and_forget_the_oldest_first() -> None:
    recent = RecentIds(capacity=4)
    recent.add_all(["a", "b", "c", "d", "e", "f"])
    assert len(recent) <= 4
    assert "f" in recent and "e" in recent
    assert "a" not in recent


def test_recent_ids_any_of_looks_in_both_generations() -> None:
    recent = RecentIds(capacity=4)
    recent.add_all(["a", "b", "c"])  # "a", "b" rotate into the older generation
    assert recent.any_of(["x", "a"]) and recent.any_of(["c"])
    assert not recent.any_of(["x", "y"]) and not recent.any_of([])


@pytest.mark.anyio
async def test_drops_committed_ids_and_acks_messages_left_empty() -> None:
    in_send, inbox = open_channel[Work](8)
    outbox, out = open_channel[Work](8)
    committed_send, committed = open_channel[list[str]](8)
    metrics = Metrics()
    guard = DedupGuard(inbox, outbox, committed, capacity=100, metrics=metrics)
    all_dupes = Work("tiktok", FakeDelivery(), [row("a", "tiktok"), row("b", "tiktok")])
    partial_delivery = FakeDelivery()
    partial = Work("tiktok", partial_delivery, [row("b", "tiktok"), row("c", "tiktok")])
    fresh = Work("tiktok", FakeDelivery(), [row("d", "tiktok")])
    async with out, run_actor(guard):
        async with committed_send:
            await committed_send.send(["a", "b"])
        async with in_send:
            # The feedback is consumed by a task of the guard; wait for it to land.
            while "b" not in guard.recent:
                await anyio_checkpoint()
            for item in (all_dupes, partial, fresh):
                await in_send.send(item)
        passed = [item async for item in out]
    assert all_dupes.delivery.acked
    assert [[r.event_id for r in item.rows] for item in passed] == [["c"], ["d"]]
    assert passed[0].duplicates == 1 and not partial_delivery.acked
    # A dropped duplicate counts when its message is acked, not before.
    assert duplicates(metrics, "tiktok") == 2
    await passed[0].delivery.ack()  # what the writer does after the commit
    assert partial_delivery.acked and duplicates(metrics, "tiktok") == 3


def duplicates(metrics: Metrics, source: str = "facebook") -> float | None:
    return metrics.registry.get_sample_value("events_duplicate_total", {"source": source})


class Guard:
    """A guard running on channels the test drives."""

    def __init__(self) -> None:
        self.in_send, inbox = open_channel[Work](8)
        outbox, self.out = open_channel[Work](8)
        self.committed_send, committed = open_channel[list[str]](8)
        self.metrics = Metrics()
        self.actor = DedupGuard(inbox, outbox, committed, capacity=100, metrics=self.metrics)


@pytest.mark.anyio
async def test_a_copy_of_ids_in_flight_is_dropped_and_acked_once_the_first_commits() -> None:
    """A redelivery during a slow flush: the first copy is still in a writer's batch."""
    g = Guard()
    first = Work("facebook", FakeDelivery(), [row("a"), row("b")])
    redelivered_delivery = FakeDelivery(num_delivered=2)
    redelivered = Work("facebook", redelivered_delivery, [row("a"), row("b")])
    async with run_actor(g.actor), g.out, g.committed_send, g.in_send:
        await g.in_send.send(first)
        passed = await g.out.receive()
        await g.in_send.send(redelivered)
        await g.in_send.send(Work("facebook", FakeDelivery(), [row("c")]))
        after = await g.out.receive()  # the redelivery did not come through
        assert [r.event_id for r in after.rows] == ["c"]
        assert not redelivered_delivery.acked
        await passed.delivery.ack()  # the writer committed the first copy
        assert redelivered_delivery.acked
        assert duplicates(g.metrics) == 2


@pytest.mark.anyio
async def test_a_copy_parked_behind_a_first_that_is_given_back_is_given_back_too() -> None:
    g = Guard()
    first = Work("facebook", FakeDelivery(), [row("a")])
    copy_delivery = FakeDelivery(num_delivered=2)
    async with run_actor(g.actor), g.out, g.committed_send, g.in_send:
        await g.in_send.send(first)
        passed = await g.out.receive()
        await g.in_send.send(Work("facebook", copy_delivery, [row("a")]))
        await g.in_send.send(Work("facebook", FakeDelivery(), [row("z")]))
        await g.out.receive()
        await passed.delivery.nak(1.0)  # the store was away
        assert copy_delivery.naks == [None] and not copy_delivery.acked
        assert not duplicates(g.metrics)
        # Once given back, "a" is no longer in flight: the next copy is written.
        await g.in_send.send(Work("facebook", FakeDelivery(num_delivered=3), [row("a")]))
        again = await g.out.receive()
        assert [r.event_id for r in again.rows] == ["a"]


@pytest.mark.anyio
async def test_a_message_written_and_acked_is_freed_without_the_cyclic_collector() -> None:
    """Nothing the guard adds may tie a Work to itself: `sluice run` collects cyclic
    garbage seldom (GC tuning), and every message written stayed in memory with its
    rows until then (bench/README.md, session 7)."""
    g = Guard()
    delivery = FakeDelivery()
    freed = weakref.ref(delivery)
    gc.disable()
    try:
        async with run_actor(g.actor), g.out, g.committed_send, g.in_send:
            await g.in_send.send(Work("facebook", delivery, [row("a")]))
            del delivery
            passed = await g.out.receive()
            await passed.delivery.ack()  # what the writer does after the commit
            del passed
            # The next message moves the guard past the first one.
            await g.in_send.send(Work("facebook", FakeDelivery(), [row("b")]))
            await g.out.receive()
            assert freed() is None
    finally:
        gc.enable()


async def anyio_checkpoint() -> None:
    import anyio.lowlevel

    await anyio.lowlevel.checkpoint()
