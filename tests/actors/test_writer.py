"""The batch writer alone: fake store, fake deliveries, in-memory channels."""

from __future__ import annotations

import anyio
import pytest
import trio.testing

from sluice.actors.work import Work
from sluice.actors.writer import BatchWriter
from sluice.engine import DrainDeadline, open_channel
from sluice.engine.testing import run_actor
from sluice.metrics import Metrics
from sluice.ports import StoreUnavailable
from tests.fakes import FakeDelivery, FakeStore, row


def make_writer(store: FakeStore, *, flush_rows: int = 3, flush_interval: float = 0.5):
    send, inbox = open_channel[Work](16)
    committed_send, committed = open_channel[list[str]](16)
    metrics = Metrics()
    writer = BatchWriter(
        inbox,
        store,
        committed_send,
        flush_rows=flush_rows,
        flush_interval=flush_interval,
        metrics=metrics,
    )
    writer.feedback = committed_send  # so a test of a crash can close it
    return writer, send, inbox, committed, metrics


def work(store: FakeStore, *ids: str) -> Work:
    return Work("facebook", FakeDelivery(store=store), [row(i) for i in ids])


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.mark.anyio
async def test_acks_each_message_only_after_its_rows_are_committed() -> None:
    store = FakeStore()
    writer, send, inbox, committed, metrics = make_writer(store, flush_rows=3)
    items = [work(store, "a"), work(store, "b", "c"), work(store, "d")]
    async with inbox, committed, run_actor(writer):
        async with send:
            for item in items:
                await send.send(item)
        feedback = [ids async for ids in committed]
    assert store.batches == [["a", "b", "c"], ["d"]]
    for item in items:
        assert item.delivery.acked
        assert {r.event_id for r in item.rows} <= item.delivery.committed_when_acked
    assert sorted(i for ids in feedback for i in ids) == ["a", "b", "c", "d"]
    assert sample(metrics, "events_processed_total", source="facebook") == 4


@pytest.mark.trio
async def test_a_partial_batch_is_flushed_after_the_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = FakeStore()
    writer, send, inbox, committed, _ = make_writer(store, flush_rows=100, flush_interval=0.5)
    async with inbox, committed, run_actor(writer), send:
        item = work(store, "a")
        start = trio.current_time()
        await send.send(item)
        await committed.receive()
        assert trio.current_time() - start == pytest.approx(0.5)
        assert item.delivery.acked


@pytest.mark.anyio
async def test_duplicates_are_acked_and_counted_not_stored_twice() -> None:
    store = FakeStore()
    writer, send, inbox, committed, metrics = make_writer(store, flush_rows=2)
    first, again = work(store, "a", "b"), work(store, "b", "c")
    async with inbox, committed, run_actor(writer):
        async with send:
            await send.send(first)
            await send.send(again)
    assert sorted(store.stored) == ["a", "b", "c"]
    assert first.delivery.acked and again.delivery.acked
    assert sample(metrics, "events_processed_total", source="facebook") == 3
    assert sample(metrics, "events_duplicate_total", source="facebook") == 1


@pytest.mark.anyio
async def test_store_outage_naks_the_batch_acks_nothing_and_crashes() -> None:
    store = FakeStore(fail_next=[StoreUnavailable("connection refused")])
    writer, send, inbox, committed, metrics = make_writer(store, flush_rows=1)
    item = work(store, "a")
    with pytest.raises(StoreUnavailable):
        async with inbox, committed, run_actor(writer), send:
            await send.send(item)
    await writer.feedback.aclose()  # a crashed writer keeps its ends for its successor
    assert not item.delivery.acked
    assert item.delivery.naks == [1.0]
    assert store.stored == {}
    assert (
        sample(metrics, "events_failed_total", source="facebook", reason="store_unavailable") == 1
    )


@pytest.mark.anyio
async def test_rows_the_database_refuses_are_dead_lettered_and_the_rest_stored() -> None:
    store = FakeStore(poison={"bad"})
    writer, send, inbox, committed, metrics = make_writer(store, flush_rows=4)
    mixed, clean = work(store, "a", "bad", "b"), work(store, "c")
    async with inbox, committed, run_actor(writer):
        async with send:
            await send.send(mixed)
            await send.send(clean)
        feedback = [i for ids in [ids async for ids in committed] for i in ids]
    assert sorted(store.stored) == ["a", "b", "c"]
    assert [letter.payload for letter in store.dead] == [row("bad").data.encode()]
    assert store.dead[0].reason == "invalid input syntax"
    assert mixed.delivery.acked and clean.delivery.acked
    assert "bad" not in feedback
    assert sample(metrics, "events_dead_lettered_total", source="facebook") == 1


@pytest.mark.anyio
async def test_dead_letters_from_decoding_are_stored_before_the_ack() -> None:
    from sluice.ports import DeadLetter

    store = FakeStore()
    writer, send, inbox, committed, _ = make_writer(store, flush_rows=1)
    letter = DeadLetter("facebook", "undecodable envelope", b"junk", 1)
    item = Work("facebook", FakeDelivery(store=store), [], [letter])
    async with inbox, committed, run_actor(writer):
        async with send:
            await send.send(item)
    assert store.dead == [letter]
    assert item.delivery.acked


@pytest.mark.anyio
async def test_last_batch_is_flushed_when_the_inbox_ends() -> None:
    store = FakeStore()
    writer, send, inbox, committed, _ = make_writer(store, flush_rows=1000, flush_interval=3600)
    item = work(store, "a")
    async with inbox, committed, run_actor(writer) as handle:
        await send.send(item)
        await send.aclose()
        await handle.wait()
        assert item.delivery.acked
        with pytest.raises(anyio.EndOfStream):
            await committed.receive() and await committed.receive()


class HangingStore(FakeStore):
    """A database that never answers the commit."""

    async def write_batch(self, rows):  # type: ignore[no-untyped-def]
        await anyio.sleep_forever()


def hanging_writer():  # type: ignore[no-untyped-def]
    store = HangingStore()
    send, inbox = open_channel[Work](4)
    deadline = DrainDeadline()
    writer = BatchWriter(
        inbox, store, None, flush_rows=1, flush_interval=0.1, metrics=Metrics(), deadline=deadline
    )
    return store, send, inbox, deadline, writer


@pytest.mark.trio
async def test_the_shielded_flush_ends_at_a_forced_stop_not_60_s_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store, send, inbox, deadline, writer = hanging_writer()
    item = work(store, "a")
    async with send, inbox, trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await send.send(item)
        await trio.sleep(1.0)  # the commit hangs, shielded
        start = trio.current_time()
        deadline.force()  # the second signal
        nursery.cancel_scope.cancel()
    assert trio.current_time() - start < 0.01
    assert not item.delivery.acked  # JetStream redelivers it


@pytest.mark.trio
async def test_the_shielded_flush_ends_at_the_drain_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store, send, inbox, deadline, writer = hanging_writer()
    async with send, inbox, trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await send.send(work(store, "a"))
        await trio.sleep(1.0)
        start = trio.current_time()
        deadline.begin(5.0)
        nursery.cancel_scope.cancel()
    assert trio.current_time() - start == pytest.approx(5.0)
