"""keeper: keeps the messages this process holds from being redelivered while it
works on them, and gives them back at once when it stops.

Every `ack_wait / 3` seconds it sends `in_progress()` for each message held longer than
that (a slow flush, a database outage, a long queue), so a held message never outlives
ack_wait: JetStream redelivers only what a dead process held, and that within ack_wait.
It is started before the writers, so it stops after them: on `request_stop()` (the
writers have ended) or a cancel, it naks with no delay whatever is still held, so the
next worker gets it at once instead of after ack_wait.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from sluice.engine import Actor

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from sluice.inflight import HeldMessages
    from sluice.metrics import Metrics

log = logging.getLogger("sluice.keeper")

GIVE_BACK_TIMEOUT = 5.0
# Progress is signalled for at most this long after a fetch: a message held longer was
# lost by an actor that crashed with it, and JetStream must redeliver it. (A writer that
# waits out a database outage signals progress for its batch itself.)
MAX_HOLD = 120.0


class Keeper(Actor):
    name = "keeper"

    def __init__(
        self,
        held: HeldMessages,
        *,
        ack_wait: float,
        metrics: Metrics | None = None,
        max_hold: float = MAX_HOLD,
    ) -> None:
        self._held = held
        self._max_hold = max_hold
        self._period = ack_wait / 3
        self._metrics = metrics
        self._stop = anyio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while not self._stop.is_set():
                with anyio.move_on_after(self._period):
                    await self._stop.wait()
                signalled = await self._held.signal_progress(
                    older_than=self._period, at_most=self._max_hold
                )
                if signalled:
                    log.info("%d held messages signalled in progress", signalled)
                if self._metrics is not None:
                    self._metrics.messages_held.set(len(self._held))
                    self._metrics.messages_held_bytes.set(self._held.bytes)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(GIVE_BACK_TIMEOUT):
                given = await self._held.give_back()
                if given:
                    log.info("%d messages not written given back to JetStream", given)
