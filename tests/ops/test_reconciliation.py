"""The in-flight ledger and the reconciliation gauge, with the real actors on fakes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

import anyio
import pytest

from sluice import envelope
from sluice.actors.consumer import Consumer
from sluice.actors.dedup import DedupGuard
from sluice.actors.metrics import MetricsReporter
from sluice.actors.work import Work
from sluice.actors.writer import BatchWriter
from sluice.engine import ChildSpec, Supervisor, open_channel
from sluice.inflight import EVENTS_HEADER, CountingEventLog, CountingSubscription, InFlight
from sluice.metrics import Metrics
from tests.factories import make_event
from tests.fakes import FakeDelivery, FakeEventLog, FakeStore, FakeSubscription

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def chunk_of(events: list[dict[str, Any]], source: str = "facebook") -> envelope.Chunk:
    (chunk,) = envelope.encode(
        source,
        [(e["eventId"], json.dumps(e).encode()) for e in events],
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
        max_bytes=1 << 20,
    )
    return chunk


def facebook(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [make_event("facebook", "top", eventId=f"fb-{i}") for i in range(start, start + n)]


class Ingress:
    """What the webhook does, reduced: publish through the counting log, then count."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.log = FakeEventLog()
        self.counting = CountingEventLog(self.log, metrics.in_flight)

    async def accept(self, events: list[dict[str, Any]], *, header: bool = True) -> int:
        chunk = chunk_of(events)
        headers = {EVENTS_HEADER: str(len(events))} if header else {}
        ack = await self.counting.publish(
            "facebook", chunk.payload, msg_id=chunk.msg_id, headers=headers
        )
        if not ack.duplicate:
            self.metrics.events_accepted.labels("facebook").inc(len(events))
        return ack.seq

    def deliveries(self) -> list[FakeDelivery]:
        return [
            FakeDelivery(data=payload, headers=headers)
            for _, payload, _, headers in self.log.published
        ]


async def test_the_ledger_counts_waiting_then_held_then_nothing() -> None:
    metrics = Metrics()
    ingress = Ingress(metrics)
    seq = await ingress.accept(facebook(3))
    assert await ingress.accept(facebook(3)) == seq  # a JetStream duplicate: not counted
    assert metrics.in_flight.waiting == 3 and metrics.reconciliation() == 0

    inner = FakeSubscription()
    inner.put(*ingress.deliveries())
    subscription = CountingSubscription(inner, metrics.in_flight)
    (delivery,) = await subscription.fetch(10, 1)
    metrics.in_flight.delivered_up_to("facebook", seq)
    assert (metrics.in_flight.waiting, metrics.in_flight.held) == (0, 3)
    assert metrics.reconciliation() == 0

    await delivery.ack()
    metrics.events_processed.labels("facebook").inc(3)
    assert metrics.in_flight.total == 0 and metrics.reconciliation() == 0
    text = metrics.exposition().decode()
    assert "events_reconciliation 0.0" in text and "events_in_flight 0.0" in text


async def test_a_message_delivered_to_nobody_shows_as_missing() -> None:
    metrics = Metrics()
    ingress = Ingress(metrics)
    seq = await ingress.accept(facebook(4), header=False)  # counted from the envelope
    assert metrics.in_flight.waiting == 4
    metrics.in_flight.delivered_up_to("facebook", seq)  # JetStream went past it (lost)
    assert metrics.reconciliation() == 4


async def test_nak_and_term_let_go_once() -> None:
    in_flight = InFlight()
    inner = FakeSubscription()
    inner.put(FakeDelivery(data=chunk_of(facebook(2)).payload), FakeDelivery(data=b"junk"))
    a, b = await CountingSubscription(inner, in_flight).fetch(10, 1)
    assert in_flight.held == 3  # an undecodable message counts as one (dead) event
    await a.nak(0.5)
    await a.ack()
    assert in_flight.held == 1
    await b.term()
    assert in_flight.held == 0 and b.termed  # type: ignore[attr-defined]


def test_the_ledger_stays_bounded_and_conservative() -> None:
    in_flight = InFlight(max_entries=4)
    for seq in range(1, 11):
        in_flight.published("facebook", seq, 1)
    assert in_flight.waiting == 10
    in_flight.delivered_up_to("facebook", 5)
    assert 5 <= in_flight.waiting <= 10  # folded entries wait for their later sequence
    in_flight.delivered_up_to("facebook", 10)
    assert in_flight.waiting == 0
    in_flight.published("tiktok", 12, 2)
    in_flight.published("tiktok", 11, 3)  # acks complete slightly out of order
    in_flight.delivered_up_to("tiktok", 11)
    assert in_flight.waiting == 2


async def test_a_drain_right_after_accepting_writes_everything_and_reconciles() -> None:
    """The consumer's catch-up takes what JetStream holds; dedup and writer follow by
    end of stream; every event is then accounted for."""
    metrics = Metrics()
    ingress = Ingress(metrics)
    first = await ingress.accept(facebook(5))
    await ingress.accept(facebook(3, start=3))  # two events the publisher sent again
    last = await ingress.accept(facebook(2, start=10))
    inner = FakeSubscription()
    inner.put(*ingress.deliveries())
    store = FakeStore()

    async def subscribe(source: str) -> CountingSubscription:
        return CountingSubscription(inner, metrics.in_flight)

    to_dedup_send, to_dedup = open_channel[Work](8)
    to_writer_send, to_writer = open_channel[Work](8)
    committed_send, committed = open_channel[list[str]](8)
    consumer = Consumer(
        "facebook", subscribe, to_dedup_send, batch=2, fetch_timeout=0.05, catch_up=5.0
    )
    sup = Supervisor(
        [
            ChildSpec(
                "writer",
                lambda: BatchWriter(
                    to_writer,
                    store,
                    committed_send,
                    flush_rows=4,
                    flush_interval=0.01,
                    metrics=metrics,
                ),
                wait_on_drain=True,
            ),
            ChildSpec(
                "dedup",
                lambda: DedupGuard(
                    to_dedup, to_writer_send, committed, capacity=100, metrics=metrics
                ),
            ),
            ChildSpec("consumer", lambda: consumer),
        ]
    )
    ends = (to_dedup_send, to_dedup, to_writer_send, to_writer, committed_send, committed)
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        assert await sup.drain(10) is True
    for end in ends:
        end.close()
    assert len(store.stored) == 8 and not inner.queue
    assert metrics.in_flight.held == 0
    assert first < last
    metrics.in_flight.delivered_up_to("facebook", last)
    assert metrics.reconciliation() == 0
    value = metrics.registry.get_sample_value
    assert value("events_duplicate_total", {"source": "facebook"}) == 2
    assert value("events_processed_total", {"source": "facebook"}) == 8


async def test_the_reporter_samples_consumers_channels_and_dead_letters() -> None:
    metrics = Metrics()
    metrics.in_flight.published("facebook", 7, 5)
    metrics.in_flight.published("facebook", 9, 1)
    send, receive = open_channel[int](4)
    calls: list[str] = []

    async def facebook_state() -> tuple[int, int, int]:
        calls.append("facebook")
        return 1, 2, 8

    async def broken() -> tuple[int, int, int]:
        raise RuntimeError("consumer not found")

    async def dead_letters() -> int:
        return 12

    async with send, receive:
        await send.send(1)
        reporter = MetricsReporter(
            metrics,
            channels={"writer": receive},
            consumers={"facebook": facebook_state, "tiktok": broken},
            interval=1.0,
            dead_letters=dead_letters,
        )
        await reporter.sample()
    value = metrics.registry.get_sample_value
    assert value("consumer_pending_messages", {"source": "facebook"}) == 1
    assert value("consumer_ack_pending", {"source": "facebook"}) == 2
    assert value("consumer_pending_messages", {"source": "tiktok"}) is None
    assert value("channel_depth", {"channel": "writer"}) == 1
    assert value("dead_letter_queue_size") == 12
    assert metrics.in_flight.waiting == 1  # seq 7 was delivered, 9 not yet
    assert value("events_in_flight") == 1


@runtime_checkable
class HasBacklog(Protocol):
    async def backlog(self) -> int: ...


class LogWithBacklog(FakeEventLog):
    async def backlog(self) -> int:
        return 5


async def test_the_counting_log_keeps_an_optional_backlog_probe_visible() -> None:
    with_probe = CountingEventLog.around(LogWithBacklog(), InFlight())
    assert isinstance(with_probe, HasBacklog)
    assert await with_probe.backlog() == 5  # type: ignore[attr-defined]
    assert not isinstance(CountingEventLog.around(FakeEventLog(), InFlight()), HasBacklog)
