"""metrics reporter: samples what no request path sees.

Every `interval` seconds: the depth of each in-process channel; for each source, its
durable consumer's position (pending, ack pending, ack floor, last delivered); each
stream's messages, bytes and last sequence; where this process has the database, the
rows stored per source and the dead letters not yet replayed. These figures come from
JetStream and PostgreSQL themselves, so they agree across processes and restarts: a
message that left the work stream unwritten shows as stored rows that never catch up.
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
    from sluice.ports import ConsumerFigures, StreamFigures

log = logging.getLogger("sluice.metrics")

ConsumerProbe = Callable[[], Awaitable["ConsumerFigures"]]
StreamProbe = Callable[[], Awaitable["StreamFigures"]]
CountProbe = Callable[[], Awaitable[int]]
RowsProbe = Callable[[], Awaitable[Mapping[str, int]]]


class MetricsReporter(Actor):
    name = "metrics"

    def __init__(
        self,
        metrics: Metrics,
        *,
        channels: Mapping[str, MemoryObjectReceiveStream[Any]],
        consumers: Mapping[str, ConsumerProbe],
        interval: float,
        streams: Mapping[str, StreamProbe] | None = None,
        stored_rows: RowsProbe | None = None,
        dead_letters: CountProbe | None = None,
    ) -> None:
        self._metrics = metrics
        self._channels = channels
        self._consumers = consumers
        self._streams = streams or {}
        self._stored_rows = stored_rows
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
            consumer: ConsumerFigures | None = await self._ask(f"consumer {source}", probe)
            if consumer is not None:
                m.consumer_pending.labels(source).set(consumer.pending)
                m.consumer_ack_pending.labels(source).set(consumer.ack_pending)
                m.consumer_ack_floor.labels(source).set(consumer.ack_floor)
                m.consumer_delivered.labels(source).set(consumer.delivered)
        for name, stream_probe in self._streams.items():
            figures: StreamFigures | None = await self._ask(f"stream {name}", stream_probe)
            if figures is not None:
                m.stream_messages.labels(name).set(figures.messages)
                m.stream_bytes.labels(name).set(figures.bytes)
                m.stream_last_seq.labels(name).set(figures.last_seq)
        if self._stored_rows is not None:
            rows = await self._ask("stored rows", self._stored_rows)
            if rows is not None:
                for source, count in rows.items():
                    m.events_stored_rows.labels(source).set(count)
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
