"""max-deliveries backstop: a message JetStream gave up on is dead-lettered, never dropped.

The writer dead-letters a message whole on its last allowed delivery when it still
cannot store it; a message whose last delivery never reached a writer (the process died
holding it, or it expired in a full channel) is reported by JetStream's max-deliveries
advisory instead. This actor reads those advisories, fetches the message from the
stream by sequence, and unless all its events are stored, records it whole as a dead
letter (the letter's key makes a repeat harmless); then it removes the message from the
stream, which would otherwise hold it for good.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio
import msgspec

from sluice import envelope
from sluice.actors.consumer import CORRELATION_HEADER
from sluice.engine import Actor
from sluice.ports import DeadLetter, LogUnavailable, StoreUnavailable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from anyio.abc import TaskStatus

    from sluice.metrics import Metrics
    from sluice.ports import EventStore, MaxDeliveries

log = logging.getLogger("sluice.backstop")


class _EventId(msgspec.Struct):
    eventId: str | None = None


_event_id = msgspec.json.Decoder(_EventId)


class MaxDeliveriesBackstop(Actor):
    def __init__(
        self,
        watch: Callable[[], Awaitable[MaxDeliveries]],
        store: EventStore,
        *,
        max_deliver: int,
        metrics: Metrics,
        poll: float = 1.0,
        retry_delay: float = 1.0,
        name: str = "backstop",
    ) -> None:
        self.name = name
        self._watch = watch
        self._store = store
        self._max_deliver = max_deliver
        self._metrics = metrics
        self._poll = poll
        self._retry_delay = retry_delay
        self._stopping = False

    def request_stop(self) -> None:
        self._stopping = True

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        advisories = await self._watch()
        try:
            task_status.started()
            while not self._stopping:
                seq = await advisories.next_stuck(self._poll)
                if seq is not None:
                    await self._settle(advisories, seq)
        finally:
            with anyio.CancelScope(shield=True):
                await advisories.close()

    async def _settle(self, advisories: MaxDeliveries, seq: int) -> None:
        """Letter (unless stored) and remove message `seq`, retrying while a server is away."""
        while True:
            try:
                await self._letter(advisories, seq)
                return
            except (LogUnavailable, StoreUnavailable) as exc:
                if self._stopping:  # the advisory is lost; the message stays in the stream
                    log.error("message %d reached max deliveries, not lettered: %s", seq, exc)
                    return
                log.warning("message %d reached max deliveries; retrying: %s", seq, exc)
                await anyio.sleep(self._retry_delay)

    async def _letter(self, advisories: MaxDeliveries, seq: int) -> None:
        found = await advisories.message(seq)
        if found is None:
            return  # acked or removed meanwhile
        data, headers = found
        source, ids = _contents(data)
        if ids and await self._store.stored_ids(ids) == set(ids):
            log.info("message %d reached max deliveries, but its events are stored", seq)
        else:
            letter = DeadLetter(
                source,
                f"reached max deliveries ({self._max_deliver}) without being stored",
                data,
                self._max_deliver,
                correlation_id=headers.get(CORRELATION_HEADER),
            )
            await self._store.write_batch((), [letter])
            self._metrics.events_dead_lettered.labels(source).inc(max(len(ids), 1))
            log.error(
                "message %d reached max deliveries without being stored: dead-lettered whole",
                seq,
                extra={"correlation_id": letter.correlation_id},
            )
        await advisories.remove(seq)


def _contents(data: bytes) -> tuple[str, list[str]]:
    """(source, event ids) of an envelope; ("unknown", []) when it is not one."""
    try:
        message = envelope.decode(data)
    except envelope.BadEnvelope:
        return "unknown", []
    ids: list[str] = []
    for raw in message.events:
        try:
            event_id = _event_id.decode(raw).eventId
        except msgspec.DecodeError:
            event_id = None
        if event_id is None:
            return message.source, []  # an event without an id: only a letter is safe
        ids.append(event_id)
    return message.source, ids
