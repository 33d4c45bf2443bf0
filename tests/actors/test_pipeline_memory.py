"""Consumer, dedup guard and writer together, on fakes: what a message leaves behind."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
import trio.testing

from sluice.actors.consumer import Consumer
from sluice.actors.dedup import DedupGuard
from sluice.actors.work import Work
from sluice.actors.writer import BatchWriter
from sluice.engine import open_channel
from sluice.engine.testing import run_actor
from sluice.inflight import HeldMessages, HoldingSubscription
from sluice.metrics import Metrics
from tests.actors.test_consumer import envelope_of
from tests.factories import make_event
from tests.fakes import FakeDelivery, FakeStore, FakeSubscription


@pytest.mark.trio
async def test_every_message_written_is_freed_without_the_cyclic_collector(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """`sluice run` collects cyclic garbage seldom (`tune_gc` in sluice/cli.py): a
    message tied into a reference cycle stays in memory, decoded rows and all, until a
    full collection; with one per message the process grew by every message it wrote
    (bench/README.md, session 7). With the collector off, every message fetched,
    written and acked must be gone once the actors have ended."""
    store = FakeStore()
    subscription = FakeSubscription()
    deliveries = [
        FakeDelivery(envelope_of(make_event("facebook"), make_event("facebook")), store=store)
        for _ in range(20)
    ]
    subscription.put(*deliveries)
    freed = [weakref.ref(d) for d in deliveries]
    del deliveries
    held = HeldMessages(max_bytes=1 << 20)
    holding = HoldingSubscription(subscription, held)

    async def subscribe(source: str) -> Any:
        return holding

    metrics = Metrics()
    to_dedup_send, to_dedup = open_channel[Work](4)
    to_writer_send, to_writer = open_channel[Work](4)
    committed_send, committed = open_channel[list[str]](4)
    writer = BatchWriter(
        to_writer, store, committed_send, flush_rows=10, flush_interval=0.1, metrics=metrics
    )
    guard = DedupGuard(to_dedup, to_writer_send, committed, capacity=1000, metrics=metrics)
    consumer = Consumer(
        "facebook", subscribe, to_dedup_send, batch=4, fetch_timeout=1.0, budget=held
    )
    gc.disable()
    try:
        async with run_actor(writer), run_actor(guard), run_actor(consumer) as fetching:
            while subscription.queue:
                await trio.testing.wait_all_tasks_blocked()
            fetching.stop()  # the rest follows by end of stream
        # All written and acked (a delivery leaves `held` when acked).
        assert len(store.stored) == 40 and len(held) == 0 and held.bytes == 0
        assert [ref() for ref in freed] == [None] * 20
    finally:
        gc.enable()
