"""dedup guard: drops events already known to be stored, before they cost a write.

Only ids whose commit the writers reported are remembered, so a message whose first
copy failed is never mistaken for a duplicate of itself. Anything not remembered goes
on to the database, whose unique key stays the authority.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from sluice.engine import Actor
from sluice.recent import RecentIds

if TYPE_CHECKING:
    from anyio.abc import TaskStatus
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from sluice.actors.work import Work
    from sluice.metrics import Metrics

__all__ = ["DedupGuard", "RecentIds"]

log = logging.getLogger("sluice.dedup")


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
        recent = self.recent
        fresh = [row for row in work.rows if row.event_id not in recent]
        dropped = len(work.rows) - len(fresh)
        if dropped:
            self._metrics.events_duplicate.labels(work.source).inc(dropped)
            work.rows = fresh
            work.duplicates += dropped
        if not fresh and not work.dead:
            # Every event in it is already committed: nothing to wait for.
            await work.delivery.ack()
            return
        await self._outbox.send(work)
