"""Group commit: concurrent requests' events for one source share JetStream messages.

nats-server fsyncs every message (`sync_interval: always`), ~1,000-1,400 a second on
the disks sluice runs on, so one message per request caps single-event POSTs there.
Here a request that finds fewer than `inflight` publishes under way for its source
publishes at once, alone: the same message and Nats-Msg-Id as one envelope per
request. Requests arriving while those publishes run wait in the source's lane; when a
publish ends, its publisher hands its slot to the oldest waiting request, which
publishes everything then waiting as one envelope (split below max_payload). Each
request is answered after the ack of every message holding its events; a failed
publish fails every request in it (503), and nothing of it is counted accepted.

Arrays share too. Each message costs nats-server two fsynced writes (the work stream
and its history) and a delete once acked, and sluice a fetch, an ack and the keeper's
progress signals: under full load arrays of 100 (~19 KB of events per source) sharing
messages cost nats-server less than half the CPU per event that one message per
request does, and sluice about a quarter less, which brings arrays back to their
throughput before the history stream (bench/README.md, "what the work queue + history
cost nats-server"); the price is one more publish of latency at full load. Only a
request with SOLO_BYTES of events or more, a good part of a message by itself, is
published at once, alone, without waiting for a slot.

There is no task of its own: the requests are the publishers (leader/follower). A
publish runs shielded from its leader's cancellation, under its own deadline, so a
client gone away never strands the requests sharing its messages.

Ids of events JetStream has acked are remembered (bounded): a re-sent event is answered
as a duplicate without being published again. JetStream's msg-id window catches a lone
re-sent envelope the set has forgotten; the database's unique key stays the authority.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from sluice import envelope
from sluice.inflight import EVENTS_HEADER
from sluice.ports import LogUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from datetime import datetime

    from prometheus_client import Counter

    from sluice.metrics import Metrics
    from sluice.ports import EventLog, PublishAck
    from sluice.recent import RecentIds
    from sluice.sources import ValidEvent

__all__ = ["CORRELATION_HEADER", "GroupCommit", "Outcome", "ServiceUnavailable"]

log = logging.getLogger("sluice.webhook")

CORRELATION_HEADER = "X-Correlation-ID"
# Event bytes from which a request is published alone, at once: a quarter of the
# default max_payload (1 MiB): ~700 events of one source and more.
SOLO_BYTES = 256 * 1024


class ServiceUnavailable(Exception):
    """The events could not be made durable (answer 503 with Retry-After)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    accepted: int  # published in messages JetStream acked as new
    duplicates: int  # acked before (recent ids, or JetStream's msg-id window)


class _Entry:
    """One request's events for one source, from joining a lane until answered."""

    __slots__ = (
        "accepted",
        "bound",
        "correlation_id",
        "deadline",
        "done",
        "duplicates",
        "error",
        "events",
        "late",
        "leading",
        "received_at",
        "size",
        "wake",
    )

    def __init__(
        self,
        correlation_id: str,
        events: list[ValidEvent],
        received_at: datetime,
        deadline: float,
    ):
        self.correlation_id = correlation_id
        self.events = events
        self.received_at = received_at
        self.size = sum(len(e.raw) for e in events)
        self.accepted = self.duplicates = 0
        self.done = False
        self.error: Exception | None = None
        self.leading = False  # holds a publish slot: must publish or pass it on
        self.late = False  # answered at the end of its batch (it shares ids with another)
        self.deadline = deadline  # answered by then
        # Waits with no timer of its own: a publish under way ends by its deadline, and
        # any publish that takes it ends by then too (`GroupCommit._flush`).
        self.bound = False
        # Set when done, or when handed a slot; made only once the request must wait
        # (most requests publish their events themselves and never wait).
        self.wake: anyio.Event | None = None

    def finish(self, error: Exception | None = None) -> None:
        self.error = error
        self.done = True
        if self.wake is not None:
            self.wake.set()

    def waiting(self) -> anyio.Event:
        """An event to wait on; the caller has just seen `leading` and `done` false."""
        if self.wake is None or self.wake.is_set():
            self.wake = anyio.Event()
        return self.wake

    def nudge(self) -> None:
        if self.wake is not None:
            self.wake.set()


class _Lane:
    """One source: the requests waiting, and the publish slots in use."""

    __slots__ = ("ends_by", "pending", "pending_bytes", "slots", "space", "space_waiters")

    def __init__(self) -> None:
        self.pending: list[_Entry] = []
        self.pending_bytes = 0
        self.slots = 0  # publishes running, or handed to a waiting request
        self.ends_by: list[float] = []  # when each publish running ends at the latest
        self.space = anyio.Event()  # set when pending shrinks, if anyone waits for it
        self.space_waiters = 0

    def take(self) -> list[_Entry]:
        batch, self.pending, self.pending_bytes = self.pending, [], 0
        self._freed()
        return batch

    def remove(self, entry: _Entry) -> None:
        self.pending.remove(entry)
        self.pending_bytes -= entry.size
        self._freed()

    def _freed(self) -> None:
        if self.space_waiters:
            self.space.set()
            self.space = anyio.Event()


class GroupCommit:
    """Publishes requests' events per source, concurrent requests sharing messages.

    `inflight`: publishes at once per source. `max_bytes`: event bytes that may wait per
    source (a request alone may be larger). `recent`: ids acked here lately. Requests
    of `solo_bytes` or more skip the lanes: published at once, each alone. `clock`:
    anyio's (deadlines are on it); the asyncio edge passes the loop's own, which is the
    same clock read for a tenth of the cost.
    """

    def __init__(
        self,
        event_log: EventLog,
        metrics: Metrics,
        *,
        inflight: int,
        max_bytes: int,
        recent: RecentIds,
        publish_timeout: float,
        solo_bytes: int = SOLO_BYTES,
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        self._log = event_log
        self._metrics = metrics
        self._inflight = inflight
        self._max_bytes = max_bytes
        self._recent = recent
        self._solo_bytes = solo_bytes
        self._clock = clock
        self._wait_limit = publish_timeout
        self._deadline = publish_timeout + 1.0  # the backstop of a publish (`_publish`)
        self._lanes: dict[str, _Lane] = {}
        self._accepted: dict[str, Counter] = {}
        self.events_per_message: float | None = None
        """Events per message this process published, a moving average (None: none yet)."""

    async def submit(
        self,
        source: str,
        events: Sequence[ValidEvent],
        *,
        correlation_id: str,
        received_at: datetime,
        deadline: float | None = None,
    ) -> Outcome:
        """Publish `events` (all of `source`); return once every message holding them
        is acked by JetStream.

        `deadline` (on the anyio clock; default: the publish timeout from now) bounds
        the whole of it, waiting in the lane included: whether this request publishes
        or waits for another's publish, it is answered by then. Raises
        ServiceUnavailable when the events could not be made durable by then: none of
        them may be claimed (some may still be stored: a retry is a duplicate).
        """
        if deadline is None:
            deadline = self._clock() + self._wait_limit
        recent = self._recent
        if recent.any_of([e.event_id for e in events]):
            fresh = [e for e in events if e.event_id not in recent]
        else:
            fresh = list(events)
        known = len(events) - len(fresh)
        if not fresh:
            return Outcome(0, known)
        entry = _Entry(correlation_id, fresh, received_at, deadline)
        if entry.size >= self._solo_bytes:
            return await self._solo(source, entry, known, deadline)
        lane = self._lanes.get(source)
        if lane is None:
            lane = self._lanes[source] = _Lane()
        await self._join(lane, entry, deadline)
        try:
            while True:
                if entry.leading:
                    if not entry.done and self._clock() >= deadline:
                        break  # too late to publish: the slot goes on (_leave)
                    entry.leading = False
                    if entry.done:  # taken by another publish meanwhile: answer now
                        self._hand_on(lane)
                        break
                    await self._flush(source, lane, deadline)  # bounded by the deadline
                    continue  # handed a slot again meanwhile, or done
                if entry.done:
                    break
                # No await since the checks above: a slot or an answer comes after them.
                wake = entry.waiting()
                ends_by = lane.ends_by
                if ends_by and min(ends_by) <= deadline:
                    # A publish under way ends (and hands its slot on) by the deadline,
                    # and the one that takes this request, bound by it, too: no timer
                    # of its own needed (a cancel scope is ~3% of a request's CPU).
                    entry.bound = True
                    await wake.wait()
                    continue
                with anyio.move_on_at(deadline) as waiting:
                    await wake.wait()
                if waiting.cancelled_caught and not entry.leading:
                    break
        except BaseException:
            self._leave(lane, entry)
            raise
        if not entry.done:  # the deadline passed while another request published
            self._leave(lane, entry)
            raise ServiceUnavailable(f"no publish ack within {self._wait_limit:g} s")
        if entry.error is not None:
            raise entry.error
        return Outcome(entry.accepted, entry.duplicates + known)

    async def _solo(self, source: str, entry: _Entry, known: int, deadline: float) -> Outcome:
        """A request that fills a good part of a message by itself is published at
        once, alone (one message per request, as without group commit): waiting for a
        slot would add latency, and sharing would save little."""
        await self._publish(source, [entry], min(deadline, self._clock() + self._deadline))
        if entry.error is not None:
            raise entry.error
        return Outcome(entry.accepted, entry.duplicates + known)

    async def _join(self, lane: _Lane, entry: _Entry, deadline: float) -> None:
        def full() -> bool:
            return bool(lane.pending) and lane.pending_bytes + entry.size > self._max_bytes

        if full():
            lane.space_waiters += 1
            try:
                with anyio.move_on_at(deadline):
                    while full():
                        await lane.space.wait()
            finally:
                lane.space_waiters -= 1
            if full():
                raise ServiceUnavailable("too many events waiting to be published")
        lane.pending.append(entry)
        lane.pending_bytes += entry.size
        if lane.slots < self._inflight:
            lane.slots += 1
            entry.leading = True

    def _leave(self, lane: _Lane, entry: _Entry) -> None:
        """A request cancelled (or failed) while waiting: nothing of it is published
        unless already taken, and a slot it was handed goes on to the next."""
        if entry in lane.pending:
            lane.remove(entry)
        if entry.leading:
            entry.leading = False
            self._hand_on(lane)

    def _hand_on(self, lane: _Lane) -> None:
        """Pass the caller's slot to the oldest waiting request, or free it."""
        for waiting in lane.pending:
            if not waiting.leading:
                waiting.leading = True
                waiting.nudge()
                return
        lane.slots -= 1

    async def _flush(self, source: str, lane: _Lane, deadline: float) -> None:
        """Publish what waits in `lane`, by `deadline` (the leader's) and by the deadline
        of every request in it that waits with no timer of its own (`_Entry.bound`); at
        most the publish timeout and a second (the edge times a publish out itself; this
        is the backstop that keeps a shielded publish from hanging a drain)."""
        try:
            batch = lane.take()
            if batch:
                limit = min(deadline, self._clock() + self._deadline)
                for entry in batch:
                    if entry.bound and entry.deadline < limit:
                        limit = entry.deadline
                lane.ends_by.append(limit)
                try:
                    await self._publish(source, batch, limit)
                finally:
                    lane.ends_by.remove(limit)
        finally:
            self._hand_on(lane)

    async def _publish(self, source: str, batch: list[_Entry], limit: float) -> None:
        """Publish `batch` as few envelopes as fit, by `limit`; finish every entry,
        whatever happens.

        Shielded from the caller's cancellation (a client gone away must not strand the
        requests sharing its messages), under `limit` as its deadline.
        """
        failure: Exception | None = ServiceUnavailable("publish interrupted")
        try:
            pairs, parts, runs = self._pack(batch)
            chunks = envelope.encode(
                source,
                pairs,
                received_at=batch[0].received_at,
                max_bytes=self._log.max_payload,
                requests=runs,
            )
            owners = iter(parts)
            entry, left = next(owners, (batch[0], 0))
            first = entry.correlation_id
            with anyio.CancelScope(shield=True, deadline=limit) as scope:
                for chunk in chunks:
                    ack = await self._publish_one(source, chunk, first)
                    count = len(chunk.event_ids)
                    self._acked(source, chunk, ack.duplicate)
                    while count:
                        share = min(count, left)
                        if ack.duplicate:
                            entry.duplicates += share
                        else:
                            entry.accepted += share
                        count -= share
                        left -= share
                        if not left:
                            if not entry.late:
                                entry.finish()
                            entry, left = next(owners, (entry, 0))
                failure = None
            if scope.cancelled_caught:
                failure = ServiceUnavailable(f"no publish ack within {self._wait_limit:g} s")
        except LogUnavailable as exc:
            failure = ServiceUnavailable(str(exc))
        except Exception as exc:
            log.exception("publishing to %s failed", source)
            failure = RuntimeError(f"publish failed: {exc!r}")
        finally:
            for entry in batch:
                if not entry.done:
                    entry.finish(None if failure is None else _copy(failure))

    def _pack(
        self, batch: list[_Entry]
    ) -> tuple[list[tuple[str, bytes]], list[tuple[_Entry, int]], list[tuple[str, int]] | None]:
        """The batch's (id, raw) pairs, each entry's share of them in order, and the
        requests' runs (None for one request's events: the envelope it always had)."""
        recent = self._recent
        ids = [e.event_id for entry in batch for e in entry.events]
        if not recent.any_of(ids) and len(set(ids)) == len(ids):  # the usual case, in C
            pairs = [(e.event_id, e.raw) for entry in batch for e in entry.events]
            parts = [(entry, len(entry.events)) for entry in batch]
        else:
            pairs, parts = self._pack_checked(batch)
        if len(parts) < 2:
            return pairs, parts, None
        return pairs, parts, [(entry.correlation_id, count) for entry, count in parts]

    def _pack_checked(
        self, batch: list[_Entry]
    ) -> tuple[list[tuple[str, bytes]], list[tuple[_Entry, int]]]:
        """`_pack` when some ids were acked meanwhile or repeat across the batch."""
        recent = self._recent
        seen: set[str] = set()
        pairs: list[tuple[str, bytes]] = []
        parts: list[tuple[_Entry, int]] = []
        for entry in batch:
            count = 0
            for e in entry.events:
                if e.event_id in recent:  # acked while this request waited
                    entry.duplicates += 1
                elif e.event_id in seen:
                    # Another request in this batch carries it: a duplicate once the
                    # whole batch is acked.
                    entry.duplicates += 1
                    entry.late = True
                else:
                    seen.add(e.event_id)
                    pairs.append((e.event_id, e.raw))
                    count += 1
            if count:
                parts.append((entry, count))
        return pairs, parts

    async def _publish_one(self, source: str, chunk: envelope.Chunk, first: str) -> PublishAck:
        headers = {
            CORRELATION_HEADER: chunk.correlation_id or first,
            EVENTS_HEADER: str(len(chunk.event_ids)),
        }
        started = time.perf_counter()
        try:
            return await self._log.publish(
                source, chunk.payload, msg_id=chunk.msg_id, headers=headers
            )
        finally:
            # Failed and timed-out publishes too: a stall must show in the tail.
            self._metrics.publish_ack_seconds.observe(time.perf_counter() - started)

    def _acked(self, source: str, chunk: envelope.Chunk, duplicate: bool) -> None:
        # Durable now (new, or JetStream had it): safe to answer re-sends as duplicates.
        self._recent.add_all(chunk.event_ids)
        count = len(chunk.event_ids)
        mean = self.events_per_message
        self.events_per_message = count if mean is None else mean + (count - mean) / 32
        metrics = self._metrics
        metrics.envelope_events.observe(count)
        metrics.envelope_requests.observe(chunk.requests)
        if not duplicate:
            counter = self._accepted.get(source)
            if counter is None:
                counter = self._accepted[source] = metrics.events_accepted.labels(source)
            counter.inc(count)


def _copy(error: Exception) -> Exception:
    """One exception object per waiting request (each raises it with its own traceback)."""
    if isinstance(error, ServiceUnavailable):
        return ServiceUnavailable(str(error))
    return RuntimeError(str(error))
