"""The dedup guard alone."""

from __future__ import annotations

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
    partial = Work("tiktok", FakeDelivery(), [row("b", "tiktok"), row("c", "tiktok")])
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
    assert passed[0].duplicates == 1 and not passed[0].delivery.acked
    assert metrics.registry.get_sample_value("events_duplicate_total", {"source": "tiktok"}) == 3


@pytest.mark.anyio
async def test_ids_not_yet_committed_are_passed_on_even_if_seen() -> None:
    in_send, inbox = open_channel[Work](8)
    outbox, out = open_channel[Work](8)
    committed_send, committed = open_channel[list[str]](8)
    guard = DedupGuard(inbox, outbox, committed, capacity=100, metrics=Metrics())
    first = Work("facebook", FakeDelivery(), [row("a")])
    redelivered = Work("facebook", FakeDelivery(num_delivered=2), [row("a")])
    async with out, run_actor(guard):
        await committed_send.aclose()
        async with in_send:
            await in_send.send(first)
            await in_send.send(redelivered)
        passed = [item async for item in out]
    assert [item.delivery for item in passed] == [first.delivery, redelivered.delivery]


async def anyio_checkpoint() -> None:
    import anyio.lowlevel

    await anyio.lowlevel.checkpoint()
