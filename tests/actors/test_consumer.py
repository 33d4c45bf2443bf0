"""consumer[source] alone: a fake subscription feeding envelopes."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
import trio.testing

from sluice import envelope
from sluice.actors.consumer import Consumer
from sluice.actors.work import Work
from sluice.engine import open_channel
from sluice.engine.testing import run_actor
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


def lingering_consumer(subscription: FakeSubscription, outbox, linger: float) -> Consumer:
    async def subscribe(source: str) -> FakeSubscription:
        return subscription

    return Consumer("facebook", subscribe, outbox, batch=10, fetch_timeout=1.0, linger=linger)


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
