"""dedup guard: drops events already known to be stored, or already on their way to
the database, before they cost a write.

Only ids whose commit the writers reported are remembered as stored, so a message whose
first copy failed is never mistaken for a duplicate of itself. Ids passed on and not
yet finished are "in flight": a copy arriving meanwhile (a redelivery during a slow
flush, a publisher's re-send) is dropped too, and a message left with nothing to write
is acked only once every first copy it waits for is acked (naked, with no delay, if one
of them is given back instead). Anything else goes on to the database, whose unique key
stays the authority. Dropped events are counted as duplicates when their message is
acked, so a message redelivered is not counted twice.
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Any

import anyio

from sluice.engine import Actor
from sluice.inflight import ForwardingDelivery
from sluice.recent import RecentIds

if TYPE_CHECKING:
    from anyio.abc import TaskStatus
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from sluice.actors.work import Work
    from sluice.metrics import Metrics
    from sluice.ports import Delivery

__all__ = ["DedupGuard", "RecentIds"]

log = logging.getLogger("sluice.dedup")

# A first copy in flight longer than this is taken for lost (its writer crashed with it
# in hand): a later copy is written, not parked behind it.
STALE_AFTER = 120.0


class DedupGuard(Actor):
    name = "dedup"

    def __init__(
        self,
        inbox: MemoryObjectReceiveStream[Work],
        outbox: MemoryObjectSendStream[Work],
        committed: MemoryObjectReceiveStream[list[str]],
        *,
        capacity: int,
        metrics: Metrics,
        recent: RecentIds | None = None,
    ) -> None:
        self._inbox = inbox
        self._outbox = outbox
        self._committed = committed
        self._metrics = metrics
        self.recent = recent if recent is not None else RecentIds(capacity)
        self._in_flight: dict[str, _Watched] = {}

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._remember_commits)
            task_status.started()
            async for work in self._inbox:
                await self._filter(work)
            await self._inbox.aclose()
            await self._outbox.aclose()

    async def _remember_commits(self) -> None:
        async for event_ids in self._committed:
            self.recent.add_all(event_ids)
        await self._committed.aclose()

    async def _filter(self, work: Work) -> None:
        ids = [row.event_id for row in work.rows]
        in_flight = self._in_flight
        if not self.recent.any_of(ids) and in_flight.keys().isdisjoint(ids):
            fresh = work.rows  # the usual case, checked in C
            waits_for: set[_Watched] = set()
        else:
            fresh, waits_for = self._split(work)
            dropped = len(work.rows) - len(fresh)
            work.rows = fresh
            work.duplicates += dropped
            ids = [row.event_id for row in fresh]
        if not fresh and not work.dead:
            if waits_for:
                _Parked(work, self._metrics, waits_for)  # acked when they are
            else:  # every event in it is already committed: nothing to wait for
                await work.delivery.ack()
                self.count_duplicates(work.source, work.duplicates)
            return
        watched = _Watched(work.delivery, self, work.source, work.duplicates, ids)
        work.delivery = watched
        in_flight.update(zip(ids, itertools.repeat(watched)))
        await self._outbox.send(work)

    def _split(self, work: Work) -> tuple[list[Any], set[_Watched]]:
        """The rows to write, and the messages in flight carrying the others' ids."""
        recent = self.recent
        in_flight = self._in_flight
        fresh = []
        waits_for: set[_Watched] = set()
        stale = anyio.current_time() - STALE_AFTER
        for row in work.rows:
            if row.event_id in recent:
                continue
            first = in_flight.get(row.event_id)
            if first is None or first.since < stale:
                fresh.append(row)
            else:
                waits_for.add(first)
        return fresh, waits_for

    def count_duplicates(self, source: str, duplicates: int) -> None:
        if duplicates:
            self._metrics.events_duplicate.labels(source).inc(duplicates)

    def forget(self, watched: _Watched) -> None:
        for event_id in watched.ids:
            if self._in_flight.get(event_id) is watched:
                del self._in_flight[event_id]


class _Watched(ForwardingDelivery):
    """A delivery passed on by the guard: when it is finished, its ids leave the
    in-flight map, its dropped duplicates are counted (on ack), and the messages
    parked behind it are told.

    It becomes its Work's delivery, so it must not refer to that Work: the cycle would
    keep the message and its decoded rows alive after the ack, until a full collection
    of the cyclic garbage (which `sluice run`'s GC tuning makes rare), and the process
    grew by every message it wrote (bench/README.md, session 7)."""

    __slots__ = ("_duplicates", "_guard", "_source", "ids", "parked", "since")

    def __init__(
        self, inner: Delivery, guard: DedupGuard, source: str, duplicates: int, ids: list[str]
    ) -> None:
        super().__init__(inner)
        self.since = anyio.current_time()
        self._guard = guard
        self._source = source
        self._duplicates = duplicates
        self.ids = ids
        self.parked: list[_Parked] = []

    async def ack(self) -> None:
        await self._inner.ack()
        self._guard.forget(self)
        self._guard.count_duplicates(self._source, self._duplicates)
        for parked in self.parked:
            await parked.one_acked(self)

    async def nak(self, delay: float | None = None) -> None:
        try:
            await self._inner.nak(delay)
        finally:
            await self._given_back()

    async def term(self) -> None:
        try:
            await self._inner.term()
        finally:
            await self._given_back()

    async def _given_back(self) -> None:
        self._guard.forget(self)
        for parked in self.parked:
            await parked.one_given_back()


class _Parked:
    """A message whose every event is in flight in other messages: acked once they all
    are, naked (no delay) as soon as one is given back instead."""

    def __init__(self, work: Work, metrics: Metrics, waits_for: set[_Watched]) -> None:
        self._work = work
        self._metrics = metrics
        self._waits_for = waits_for
        self._done = False
        for first in waits_for:
            first.parked.append(self)

    async def one_acked(self, first: _Watched) -> None:
        self._waits_for.discard(first)
        if not self._waits_for and not self._done:
            self._done = True
            await self._work.delivery.ack()
            if self._work.duplicates:
                self._metrics.events_duplicate.labels(self._work.source).inc(self._work.duplicates)

    async def one_given_back(self) -> None:
        if not self._done:
            self._done = True
            try:
                await self._work.delivery.nak()
            except Exception:  # ack_wait brings it back anyway
                log.debug("nak failed", exc_info=True)
