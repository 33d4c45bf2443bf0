"""metrics reporter: samples what no request path sees (consumer lag, channel depths)."""

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

PendingProbe = Callable[[], Awaitable[tuple[int, int]]]


class MetricsReporter(Actor):
    name = "metrics"

    def __init__(
        self,
        metrics: Metrics,
        *,
        channels: Mapping[str, MemoryObjectReceiveStream[Any]],
        consumers: Mapping[str, PendingProbe],
        interval: float,
    ) -> None:
        self._metrics = metrics
        self._channels = channels
        self._consumers = consumers
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
        for name, stream in self._channels.items():
            depth = stream.statistics().current_buffer_used
            self._metrics.channel_depth.labels(name).set(depth)
        for source, probe in self._consumers.items():
            try:
                with anyio.fail_after(self._interval):
                    pending, ack_pending = await probe()
            except Exception as exc:  # a missed sample is not worth a restart
                log.debug("cannot sample consumer %s: %r", source, exc)
                continue
            self._metrics.consumer_pending.labels(source).set(pending)
            self._metrics.consumer_ack_pending.labels(source).set(ack_pending)
