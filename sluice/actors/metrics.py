"""metrics reporter: samples what no request path sees.

Every `interval` seconds: the depth of each in-process channel; for each source, its
durable consumer's pending and ack-pending counts (consumer lag), whose delivered stream
sequence also settles this process's in-flight ledger (see `sluice.inflight`); and the
dead-letter queue size where this process has the database.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio

from sluice.engine import Actor

if TYPE_CHECKING:
    from anyio.abc import TaskStatus
    from anyio.streams.memory import MemoryObjectReceiveStream

    from sluice.metrics import Metrics

log = logging.getLogger("sluice.metrics")

ConsumerProbe = Callable[[], Awaitable[tuple[int, int, int]]]
"""(pending, ack pending, last delivered stream sequence) of one source's consumer."""

CountProbe = Callable[[], Awaitable[int]]


class MetricsReporter(Actor):
    name = "metrics"

    def __init__(
        self,
        metrics: Metrics,
        *,
        channels: Mapping[str, MemoryObjectReceiveStream[Any]],
        consumers: Mapping[str, ConsumerProbe],
        interval: float,
        dead_letters: CountProbe | None = None,
    ) -> None:
        self._metrics = metrics
        self._channels = channels
        self._consumers = consumers
        self._dead_letters = dead_letters
        self._interval = interval
        self._stop = anyio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while not self._stop.is_set():
            await self.sample()
            with anyio.move_on_after(self._interval):
                await self._stop.wait()

    async def sample(self) -> None:
        """Take one sample of everything; a probe that fails or hangs is skipped."""
        m = self._metrics
        for name, stream in self._channels.items():
            m.channel_depth.labels(name).set(stream.statistics().current_buffer_used)
        for source, probe in self._consumers.items():
            state = await self._ask(f"consumer {source}", probe)
            if state is not None:
                pending, ack_pending, delivered = state
                m.consumer_pending.labels(source).set(pending)
                m.consumer_ack_pending.labels(source).set(ack_pending)
                m.in_flight.delivered_up_to(source, delivered)
        if self._dead_letters is not None:
            size = await self._ask("dead letters", self._dead_letters)
            if size is not None:
                m.dead_letter_queue_size.set(size)

    async def _ask(self, what: str, probe: Callable[[], Awaitable[Any]]) -> Any:
        try:
            with anyio.fail_after(self._interval):
                return await probe()
        except Exception as exc:  # a missed sample is not worth a restart
            log.debug("cannot sample %s: %r", what, exc)
            return None
