"""consumer[source] alone: a fake subscription feeding envelopes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
import trio.testing

from sluice import envelope
from sluice.actors.consumer import Consumer
from sluice.actors.work import Work
from sluice.engine import open_channel
from sluice.engine.testing import run_actor
from sluice.inflight import HeldMessages, HoldingSubscription
from sluice.ports import LogClosed, LogUnavailable
from tests.factories import make_event
from tests.fakes import FakeDelivery, FakeSubscription

RECEIVED = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def envelope_of(*events: dict) -> bytes:
    pairs = [(e["eventId"], msgspec.json.encode(e)) for e in events]
    [chunk] = envelope.encode("facebook", pairs, received_at=RECEIVED, max_bytes=1 << 20)
    return chunk.payload


def consumer_for(subscription: FakeSubscription, outbox) -> Consumer:
    async def subscribe(source: str) -> FakeSubscription:
        assert source == "facebook"
        return subscription

    return Consumer("facebook", subscribe, outbox, batch=10, fetch_timeout=1.0, retry_delay=0.5)


@pytest.mark.trio
async def test_decodes_envelopes_into_rows_and_stops_on_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = [make_event("facebook", "bottom"), make_event("facebook", "top")]
    delivery = FakeDelivery(envelope_of(*events), headers={"X-Correlation-ID": "c-1"})
    subscription = FakeSubscription()
    subscription.put(delivery)
    send, out = open_channel[Work](4)
    async with out, run_actor(consumer_for(subscription, send)) as handle:
        work = await out.receive()
        handle.stop()
        await handle.wait()
        assert [item async for item in out] == []  # outbox closed: end of stream
    assert work.delivery is delivery
    assert [r.event_id for r in work.rows] == [e["eventId"] for e in events]
    assert all(r.correlation_id == "c-1" and r.received_at == RECEIVED for r in work.rows)
    assert work.dead == []


@pytest.mark.trio
async def test_undecodable_messages_and_invalid_events_become_dead_letters(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bad_event = make_event("facebook", "top", data__user__age="old")
    good_event = make_event("facebook", "top")
    junk = FakeDelivery(b"not json at all")
    mixed = FakeDelivery(envelope_of(good_event, bad_event))
    subscription = FakeSubscription()
    subscription.put(junk, mixed)
    send, out = open_channel[Work](4)
    async with out, run_actor(consumer_for(subscription, send)) as handle:
        first, second = await out.receive(), await out.receive()
        handle.stop()
    assert first.rows == [] and first.dead[0].payload == b"not json at all"
    assert "undecodable" in first.dead[0].reason
    assert [r.event_id for r in second.rows] == [good_event["eventId"]]
    assert second.dead[0].reason.startswith("data.user.age")


@pytest.mark.trio
async def test_keeps_fetching_after_nats_hiccups(autojump_clock: trio.testing.MockClock) -> None:
    subscription = FakeSubscription(fail_next=[LogUnavailable("disconnected")] * 2)
    subscription.put(FakeDelivery(envelope_of(make_event())))
    send, out = open_channel[Work](4)
    async with out, run_actor(consumer_for(subscription, send)) as handle:
        work = await out.receive()
        handle.stop()
    assert len(work.rows) == 1
    assert subscription.fetches >= 3


@pytest.mark.trio
async def test_a_connection_closed_for_good_crashes_the_consumer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    subscription = FakeSubscription(fail_next=[LogClosed("closed for good")])
    send, out = open_channel[Work](4)
    async with out, send:
        with pytest.raises(LogClosed):
            await consumer_for(subscription, send).run()  # not retried: the supervisor decides
    assert subscription.fetches == 1
    assert subscription.closed  # a restarted consumer leaves no inbox behind


@pytest.mark.trio
async def test_the_subscription_is_closed_when_run_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    subscription = FakeSubscription()
    send, out = open_channel[Work](4)
    async with out, run_actor(consumer_for(subscription, send)) as handle:
        assert not subscription.closed
        handle.stop()
    assert subscription.closed


@pytest.mark.trio
async def test_the_subscription_is_closed_when_the_consumer_is_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    subscription = FakeSubscription()
    send, out = open_channel[Work](4)
    async with out, send:
        with trio.move_on_after(5):
            await consumer_for(subscription, send).run()
    assert subscription.fetches > 0 and subscription.closed


def test_rows_of_a_combined_envelope_carry_their_own_requests_correlation_ids() -> None:
    events = [make_event("facebook") for _ in range(5)]
    pairs = [(e["eventId"], msgspec.json.encode(e)) for e in events]
    runs = [("c-a", 2), ("c-b", 1), ("c-c", 2)]
    [chunk] = envelope.encode(
        "facebook", pairs, received_at=RECEIVED, max_bytes=1 << 20, requests=runs
    )
    delivery = FakeDelivery(chunk.payload, headers={"X-Correlation-ID": chunk.correlation_id})
    work = consumer_for(FakeSubscription(), None).decode(delivery)
    assert [r.event_id for r in work.rows] == [e["eventId"] for e in events]
    assert [r.correlation_id for r in work.rows] == ["c-a", "c-a", "c-b", "c-c", "c-c"]
    assert work.correlation_id == "c-a"  # the header: the first request's
    assert work.correlation_ids == ("c-a", "c-b", "c-c")  # what the log lines name


def test_an_envelope_without_request_runs_uses_the_header_for_every_row() -> None:
    events = [make_event("facebook") for _ in range(3)]
    delivery = FakeDelivery(envelope_of(*events), headers={"X-Correlation-ID": "c-1"})
    work = consumer_for(FakeSubscription(), None).decode(delivery)
    assert [r.correlation_id for r in work.rows] == ["c-1"] * 3
    assert work.correlation_ids == ("c-1",)


def batch_of_10_consumer(subscription: FakeSubscription, outbox, **options: Any) -> Consumer:
    async def subscribe(source: str) -> FakeSubscription:
        return subscription

    return Consumer("facebook", subscribe, outbox, batch=10, fetch_timeout=1.0, **options)


def lingering_consumer(subscription: FakeSubscription, outbox, linger: float) -> Consumer:
    return batch_of_10_consumer(subscription, outbox, linger=linger)


def deliveries(n: int) -> list[FakeDelivery]:
    return [FakeDelivery(envelope_of(make_event("facebook"))) for _ in range(n)]


@pytest.mark.trio
async def test_a_thin_fetch_is_followed_by_a_pause_so_messages_gather(
    autojump_clock: trio.testing.MockClock,
) -> None:
    subscription = FakeSubscription()
    subscription.put(*deliveries(1))
    send, out = open_channel[Work](16)
    async with out, run_actor(lingering_consumer(subscription, send, 0.5)) as handle:
        await out.receive()
        paused_at = trio.current_time()
        subscription.put(*deliveries(3))  # arrive during the pause: one fetch takes them all
        for _ in range(3):
            await out.receive()
        assert trio.current_time() - paused_at == pytest.approx(0.5)
        assert subscription.fetches == 2
        stopping_at = trio.current_time()
        handle.stop()  # ends the pause that follows this thin fetch too
        await handle.wait()
        assert trio.current_time() == stopping_at


@pytest.mark.trio
async def test_a_fetch_of_half_a_batch_or_more_is_not_followed_by_a_pause(
    autojump_clock: trio.testing.MockClock,
) -> None:
    subscription = FakeSubscription()
    subscription.put(*deliveries(5))  # batch 10: half of it
    send, out = open_channel[Work](16)
    async with out, run_actor(lingering_consumer(subscription, send, 0.5)) as handle:
        for _ in range(5):
            await out.receive()
        started = trio.current_time()
        subscription.put(*deliveries(1))
        await out.receive()
        assert trio.current_time() == started  # fetched at once, no pause
        handle.stop()
        await handle.wait()


@dataclass
class RecordingSubscription(FakeSubscription):
    """Records each fetch's (batch, timeout)."""

    asked: list[tuple[int, float]] = field(default_factory=list)

    async def fetch(self, batch: int, timeout: float) -> Sequence[FakeDelivery]:
        self.asked.append((batch, timeout))
        return await super().fetch(batch, timeout)


def bounded_consumer(
    subscription: FakeSubscription, outbox, max_bytes: int, **options: float
) -> Consumer:
    return batch_of_10_consumer(subscription, outbox, max_bytes=max_bytes, **options)


def size_of(deliveries: list[FakeDelivery]) -> int:
    [size] = {len(d.data) for d in deliveries}
    return size


def alike(n: int, events: int = 1) -> list[FakeDelivery]:
    """`n` messages of the same size: copies of one envelope of `events` events."""
    payload = envelope_of(*(make_event("facebook") for _ in range(events)))
    return [FakeDelivery(payload) for _ in range(n)]


async def take(out, n: int) -> list[Work]:
    return [await out.receive() for _ in range(n)]


@pytest.mark.trio
async def test_large_messages_make_smaller_fetches(autojump_clock: trio.testing.MockClock) -> None:
    messages = alike(7)
    subscription = RecordingSubscription()
    subscription.put(*messages)
    send, out = open_channel[Work](16)
    consumer = bounded_consumer(subscription, send, max_bytes=3 * size_of(messages) + 1)
    async with out, run_actor(consumer) as handle:
        got = await take(out, 7)
        handle.stop()
    assert [w.delivery for w in got] == messages
    # One first (the size is unknown yet), then as many as fit in the budget.
    assert [batch for batch, _ in subscription.asked[:4]] == [1, 3, 3, 3]


@pytest.mark.trio
async def test_small_messages_keep_the_full_batch_after_the_first_fetch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    subscription = RecordingSubscription()
    subscription.put(*alike(21))
    send, out = open_channel[Work](32)
    async with out, run_actor(bounded_consumer(subscription, send, 8 << 20)) as handle:
        await take(out, 21)
        handle.stop()
    assert [batch for batch, _ in subscription.asked[:4]] == [1, 10, 10, 10]


@pytest.mark.trio
async def test_after_large_messages_small_ones_regain_the_full_batch_within_a_few_fetches(
    autojump_clock: trio.testing.MockClock,
) -> None:
    big = alike(2, events=20)
    subscription = RecordingSubscription()
    subscription.put(*big, *alike(30))
    assert size_of(big) > 16 * size_of(subscription.queue[-1:])
    send, out = open_channel[Work](64)
    consumer = bounded_consumer(subscription, send, max_bytes=2 * size_of(big))
    async with out, run_actor(consumer) as handle:
        await take(out, 32)
        handle.stop()
    # 1 (size unknown), 2 (by the big one), 2 again (the other big one came with the
    # first small one), then the estimate halves with each fetch of small ones.
    assert [batch for batch, _ in subscription.asked[:6]] == [1, 2, 2, 4, 8, 10]


@pytest.mark.trio
async def test_a_message_larger_than_the_whole_budget_still_flows(
    autojump_clock: trio.testing.MockClock,
) -> None:
    messages = alike(3, events=20)
    subscription = RecordingSubscription()
    subscription.put(*messages)
    send, out = open_channel[Work](16)
    async with out, run_actor(bounded_consumer(subscription, send, max_bytes=100)) as handle:
        got = await take(out, 3)
        handle.stop()
    assert [w.delivery for w in got] == messages
    assert all(len(w.rows) == 20 for w in got)
    assert {batch for batch, _ in subscription.asked} == {1}


@pytest.mark.trio
async def test_catch_up_fetches_are_bounded_by_bytes_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    messages = alike(6)
    subscription = RecordingSubscription()
    send, out = open_channel[Work](16)
    consumer = bounded_consumer(subscription, send, 2 * size_of(messages), catch_up=5.0)
    async with out, run_actor(consumer) as handle:
        subscription.put(messages[0])
        await out.receive()  # the size is known now; the next fetch waits for messages
        subscription.put(*messages[1:])
        handle.stop()  # with catch-up the fetch under way completes, then catch-up
        await handle.wait()
        assert [w.delivery async for w in out] == messages[1:]
    assert subscription.asked[0] == (1, 1.0)
    assert {asked for asked in subscription.asked[1:] if asked[1] == 1.0} == {(2, 1.0)}
    # Catch-up fetches (timeout 0.5) ask for 2 too, not min(batch, pending) = 3.
    assert [asked for asked in subscription.asked if asked[1] == 0.5] == [(2, 0.5), (1, 0.5)]


@pytest.mark.trio
async def test_a_full_fetch_bounded_by_bytes_is_not_followed_by_a_pause(
    autojump_clock: trio.testing.MockClock,
) -> None:
    messages = alike(9)
    subscription = RecordingSubscription()
    subscription.put(*messages)
    send, out = open_channel[Work](16)
    consumer = bounded_consumer(subscription, send, 4 * size_of(messages), linger=0.5)
    async with out, run_actor(consumer) as handle:
        await take(out, 9)
        # Fetches of 4 (full, though under half the batch of 10): no pause.
        assert trio.current_time() == 0
        assert [batch for batch, _ in subscription.asked[:4]] == [1, 4, 4, 4]
        subscription.put(*alike(1))  # a thin fetch (1 of 4 asked) still pauses
        await out.receive()
        paused_at = trio.current_time()
        subscription.put(*alike(1))
        await out.receive()
        assert trio.current_time() - paused_at == pytest.approx(0.5)
        handle.stop()


def budgeted_consumer(
    subscription: FakeSubscription, outbox, held: HeldMessages, **options: Any
) -> Consumer:
    """A consumer fetching through `held`, as the engine wires it."""
    holding = HoldingSubscription(subscription, held)

    async def subscribe(source: str) -> Any:
        return holding

    return Consumer(
        "facebook", subscribe, outbox, batch=10, fetch_timeout=1.0, budget=held, **options
    )


@pytest.mark.trio
async def test_fetching_waits_while_the_held_bytes_fill_the_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    messages = alike(7)
    size = size_of(messages)
    held = HeldMessages(max_bytes=3 * size)
    subscription = RecordingSubscription()
    subscription.put(*messages)
    send, out = open_channel[Work](16)
    async with out, run_actor(budgeted_consumer(subscription, send, held)) as handle:
        got = await take(out, 3)
        await trio.testing.wait_all_tasks_blocked()
        # One first (the size is unknown yet), then the room left; then nothing more
        # is fetched while those three are held.
        assert [batch for batch, _ in subscription.asked] == [1, 2]
        assert held.bytes == 3 * size and held.room() == 0 and len(subscription.queue) == 4
        await got[0].delivery.ack()  # the writer committed one: room for one more
        [fourth] = await take(out, 1)
        await trio.testing.wait_all_tasks_blocked()
        assert [batch for batch, _ in subscription.asked] == [1, 2, 1]
        for work in [*got[1:], fourth]:
            await work.delivery.ack()
        rest = await take(out, 3)
        handle.stop()
    assert [w.delivery.data for w in [*got, fourth, *rest]] == [m.data for m in messages]


@pytest.mark.trio
async def test_a_stop_ends_a_consumer_waiting_for_room_without_another_fetch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    messages = alike(3)
    held = HeldMessages(max_bytes=size_of(messages))
    subscription = RecordingSubscription()
    subscription.put(*messages)
    send, out = open_channel[Work](16)
    async with out, run_actor(budgeted_consumer(subscription, send, held)) as handle:
        [work] = await take(out, 1)
        await trio.testing.wait_all_tasks_blocked()
        handle.stop()
        await handle.wait()
        assert [item async for item in out] == []  # outbox closed: end of stream
    assert len(subscription.asked) == 1 and len(held) == 1
    await work.delivery.ack()
    assert held.bytes == 0
