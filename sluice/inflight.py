"""Events in flight: accepted by this process and not yet finished, as far as it can see.

Feeds the `events_in_flight` and `events_reconciliation` gauges (see `sluice.metrics`).
Two parts, both counted in events:

- waiting: events this process published (JetStream acked, not a duplicate) that the
  source's durable consumer has not yet delivered to any worker. A ledger of
  (stream sequence, events) per source, pruned when the metrics reporter samples the
  consumer's delivered stream sequence.
- held: events inside messages this process's consumers fetched and have not yet
  acked, naked or terminated (in channels, in the dedup guard, in a writer's batch).

The wrappers below count without touching the hot path's code: ingress publishes
through `CountingEventLog`, consumers fetch through `CountingSubscription`. The event
count of a message comes from its `Sluice-Events` header (set by the webhook), else
from scanning the envelope.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from sluice.ports import Delivery, EventLog, PublishAck, Subscription

__all__ = [
    "EVENTS_HEADER",
    "CountingEventLog",
    "CountingSubscription",
    "InFlight",
    "events_in",
]

EVENTS_HEADER = "Sluice-Events"


class _EventsOnly(msgspec.Struct):
    events: list[msgspec.Raw]


_count_decoder = msgspec.json.Decoder(_EventsOnly)


def events_in(payload: bytes, headers: Mapping[str, str] | None = None) -> int:
    """How many events a message holds: its header, else its envelope; 1 if neither."""
    declared = (headers or {}).get(EVENTS_HEADER)
    if declared is not None and declared.isdigit():
        return int(declared)
    try:
        return len(_count_decoder.decode(payload).events)
    except msgspec.DecodeError:
        return 1  # not an envelope: it will be one dead letter


class InFlight:
    """The in-flight ledger of one process. Not thread-safe (one event loop)."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._waiting: dict[str, deque[tuple[int, int]]] = {}
        self._waiting_events = 0
        self._held_events = 0
        self._max_entries = max_entries

    @property
    def waiting(self) -> int:
        """Events published here that no consumer has been handed yet."""
        return self._waiting_events

    @property
    def held(self) -> int:
        """Events in messages fetched here and not yet acked, naked or terminated."""
        return self._held_events

    @property
    def total(self) -> int:
        return self._waiting_events + self._held_events

    def published(self, source: str, seq: int, events: int) -> None:
        ledger = self._waiting.setdefault(source, deque())
        ledger.append((seq, events))
        self._waiting_events += events
        if len(ledger) > self._max_entries:
            # Bounded memory while no worker consumes: fold the two oldest entries into
            # one at the later sequence (it then counts as waiting a little longer).
            _, first = ledger.popleft()
            later, second = ledger.popleft()
            ledger.appendleft((later, first + second))

    def delivered_up_to(self, source: str, stream_seq: int) -> None:
        """The source's consumer has delivered every message up to `stream_seq`."""
        ledger = self._waiting.get(source)
        if not ledger:
            return
        # Publishes complete nearly, not exactly, in sequence order: look at them all.
        done = sum(events for seq, events in ledger if seq <= stream_seq)
        if done:
            kept = [entry for entry in ledger if entry[0] > stream_seq]
            ledger.clear()
            ledger.extend(kept)
            self._waiting_events -= done

    def hold(self, events: int) -> None:
        self._held_events += events

    def release(self, events: int) -> None:
        self._held_events -= events


class CountingEventLog:
    """An `EventLog` that records what it published in an `InFlight` ledger."""

    def __init__(self, inner: EventLog, in_flight: InFlight) -> None:
        self._inner = inner
        self._in_flight = in_flight

    async def publish(
        self, source: str, payload: bytes, *, msg_id: str, headers: Mapping[str, str]
    ) -> PublishAck:
        ack = await self._inner.publish(source, payload, msg_id=msg_id, headers=headers)
        if not ack.duplicate:
            self._in_flight.published(source, ack.seq, events_in(payload, headers))
        return ack

    @property
    def max_payload(self) -> int:
        return self._inner.max_payload

    def is_connected(self) -> bool:
        return self._inner.is_connected()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)  # anything else the edge offers

    @classmethod
    def around(cls, inner: EventLog, in_flight: InFlight) -> CountingEventLog:
        """The wrapper for `inner`, keeping its optional `backlog()` visible to
        isinstance checks against runtime protocols (which ignore __getattr__ on 3.12+)."""
        if callable(getattr(inner, "backlog", None)):
            return _CountingLogWithBacklog(inner, in_flight)
        return cls(inner, in_flight)


class _CountingLogWithBacklog(CountingEventLog):
    async def backlog(self) -> int:
        result: int = await self._inner.backlog()  # type: ignore[attr-defined]
        return result


class CountingSubscription:
    """A `Subscription` whose deliveries count as held until acked, naked or terminated."""

    def __init__(self, inner: Subscription, in_flight: InFlight) -> None:
        self._inner = inner
        self._in_flight = in_flight

    async def fetch(self, batch: int, timeout: float) -> Sequence[Delivery]:
        deliveries = await self._inner.fetch(batch, timeout)
        return [_HeldDelivery(d, self._in_flight) for d in deliveries]

    async def pending(self) -> tuple[int, int]:
        return await self._inner.pending()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _HeldDelivery:
    __slots__ = ("_events", "_in_flight", "_inner")

    def __init__(self, inner: Delivery, in_flight: InFlight) -> None:
        self._inner = inner
        self._in_flight = in_flight
        self._events = events_in(inner.data, inner.headers)
        in_flight.hold(self._events)

    @property
    def data(self) -> bytes:
        return self._inner.data

    @property
    def headers(self) -> Mapping[str, str]:
        return self._inner.headers

    @property
    def num_delivered(self) -> int:
        return self._inner.num_delivered

    def _let_go(self) -> None:
        if self._events:
            self._in_flight.release(self._events)
            self._events = 0

    async def ack(self) -> None:
        try:
            await self._inner.ack()
        finally:
            self._let_go()

    async def nak(self, delay: float | None = None) -> None:
        try:
            await self._inner.nak(delay)
        finally:
            self._let_go()  # back in JetStream, to be fetched again

    async def term(self) -> None:
        try:
            await self._inner.term()
        finally:
            self._let_go()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
