"""The batch writer alone: fake store, fake deliveries, in-memory channels."""

from __future__ import annotations

import anyio
import asyncpg
import pytest
import trio.testing

from sluice.actors.work import Work
from sluice.actors.writer import BatchWriter
from sluice.engine import DrainDeadline, open_channel
from sluice.engine.testing import run_actor
from sluice.metrics import Metrics
from sluice.ports import DeadLetter
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


@pytest.mark.trio
async def test_a_store_outage_holds_the_batch_signals_progress_and_takes_nothing_more(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lost = [asyncpg.ConnectionDoesNotExistError("connection was closed")] * 6
    store = FakeStore(fail_next=list(lost))
    send, inbox = open_channel[Work](1)
    metrics = Metrics()
    writer = BatchWriter(
        inbox,
        store,
        None,
        flush_rows=1,
        flush_interval=0.1,
        metrics=metrics,
        retry_delay=0.5,
        retry_max=4.0,
        progress_interval=5.0,
    )
    held, waiting, queued = work(store, "a"), work(store, "b"), work(store, "c")
    async with inbox, run_actor(writer), send:
        start = trio.current_time()
        await send.send(held)
        await send.send(waiting)  # taken only once `held` is stored
        with pytest.raises(anyio.WouldBlock):
            send.send_nowait(queued)  # the inbox is full: the backpressure
        await trio.sleep(5.1)
        assert not held.delivery.acked and held.delivery.naks == []
        assert held.delivery.progress_signals == 1
        while not held.delivery.acked:
            await trio.sleep(0.1)
        # retries after 0.5, 1, 2, 4, 4, 4 s: stored on the 7th try, 15.5 s in
        assert trio.current_time() - start == pytest.approx(15.5, abs=0.2)
        assert held.delivery.progress_signals == 3
        assert held.delivery.naks == []
        await send.send(queued)
    assert sorted(store.stored) == ["a", "b", "c"]
    assert waiting.delivery.acked and queued.delivery.acked
    failed = sample(metrics, "events_failed_total", source="facebook", reason="store_unavailable")
    assert failed == 1  # counted once per held batch, not per try


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.SerializationError("could not serialize access"),
        asyncpg.DeadlockDetectedError("deadlock detected"),
        asyncpg.LockNotAvailableError("could not obtain lock"),
        asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        ConnectionRefusedError(111, "Connect call failed"),
        asyncpg.InternalClientError("cannot switch to state 15; another operation in progress"),
        # What a writer meets when its backend dies between two statements (postmaster
        # killed): the COPY cannot start, the rollback and the pool's reset cannot either.
        asyncpg.InternalClientError(
            "cannot switch to state 21; another operation (2) is in progress"
        ),
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
        asyncpg.InterfaceError(
            "cannot call Transaction.__aexit__(): the underlying connection is closed"
        ),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    ],
)
@pytest.mark.trio
async def test_each_kind_of_unavailable_store_is_waited_out_never_dead_lettered(
    autojump_clock: trio.testing.MockClock, error: Exception
) -> None:
    store = FakeStore(fail_next=[error])
    writer, send, inbox, committed, _ = make_writer(store, flush_rows=1)
    item = work(store, "a")
    async with inbox, committed, run_actor(writer):
        async with send:
            await send.send(item)
        _ = [ids async for ids in committed]
    assert item.delivery.acked and list(store.stored) == ["a"]
    assert store.dead == []


@pytest.mark.anyio
async def test_dead_letters_from_decoding_are_stored_before_the_ack() -> None:
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

    async def write_batch(self, rows, letters=()):  # type: ignore[no-untyped-def]
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


REFUSALS = {
    "big": OverflowError("value out of int32 range"),
    "nul": asyncpg.CharacterNotInRepertoireError("invalid byte sequence for encoding"),
    "range": asyncpg.NumericValueOutOfRangeError("numeric field overflow"),
    "enc": UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
}


@pytest.mark.anyio
async def test_bad_rows_are_found_by_halving_and_lettered_with_the_good_ones_in_one_go() -> None:
    store = FakeStore(poison=dict(REFUSALS))
    writer, send, inbox, committed, _ = make_writer(store, flush_rows=64)
    ids = [f"ok{i:02}" for i in range(60)]
    for n, bad in enumerate(REFUSALS):
        ids.insert(15 * n + 7, bad)
    items = [
        Work("facebook", FakeDelivery(store=store), [row(i, correlation_id="req-1") for i in ids])
    ]
    async with inbox, committed, run_actor(writer):
        async with send:
            await send.send(items[0])
    assert sorted(store.stored) == sorted(i for i in ids if i.startswith("ok"))
    assert {d.event_id: d.reason.split(":")[0] for d in store.dead} == {
        "big": "OverflowError",
        "nul": "CharacterNotInRepertoireError (22021)",
        "range": "NumericValueOutOfRangeError (22003)",
        "enc": "UnicodeEncodeError",
    }
    assert all(d.correlation_id == "req-1" and d.source == "facebook" for d in store.dead)
    assert items[0].delivery.acked
    # one try of the whole, then one transaction that halves: far fewer tries than rows
    assert store.transactions == 2
    assert store.inserts <= 1 + 2 * len(REFUSALS) * 6


@pytest.mark.anyio
async def test_a_redelivered_batch_writes_no_letter_twice() -> None:
    store = FakeStore(poison={"bad": OverflowError("value out of int64 range")})
    for delivered in (1, 2):
        writer, send, inbox, committed, _ = make_writer(store, flush_rows=3)
        item = Work(
            "facebook", FakeDelivery(store=store, num_delivered=delivered), [row("a"), row("bad")]
        )
        async with inbox, committed, run_actor(writer):
            async with send:
                await send.send(item)
        assert item.delivery.acked
    assert [(d.event_id, d.attempts) for d in store.dead] == [("bad", 2)]


class BrokenStore(FakeStore):
    """Fails with a bug, not a database error."""

    async def write_batch(self, rows, letters=()):  # type: ignore[no-untyped-def]
        if rows:
            raise RuntimeError("a bug")
        return await super().write_batch(rows, letters)


@pytest.mark.anyio
async def test_a_message_on_its_last_delivery_that_still_fails_is_lettered_whole_and_termed() -> (
    None
):
    store = BrokenStore()
    send, inbox = open_channel[Work](4)
    writer = BatchWriter(
        inbox, store, None, flush_rows=2, flush_interval=0.1, metrics=Metrics(), max_deliver=5
    )
    last = Work("facebook", FakeDelivery(b"envelope-1", num_delivered=5), [row("a")])
    earlier = Work("facebook", FakeDelivery(b"envelope-2", num_delivered=4), [row("b")])
    with pytest.RaisesGroup(RuntimeError, allow_unwrapped=True, flatten_subgroups=True):
        async with send, inbox, run_actor(writer):
            await send.send(last)
            await send.send(earlier)
    assert last.delivery.termed and not last.delivery.acked
    assert not earlier.delivery.termed  # it has deliveries left
    assert [(d.payload, d.attempts) for d in store.dead] == [(b"envelope-1", 5)]
    assert "last delivery (5) failed" in store.dead[0].reason
