"""consumer[source]: fetches envelopes from a durable pull consumer and decodes them."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from sluice import envelope
from sluice.actors.work import Work
from sluice.engine import Actor
from sluice.ports import DeadLetter, Delivery, LogUnavailable, Subscription
from sluice.sources import InvalidEvent, parse_event

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from anyio.abc import TaskStatus
    from anyio.streams.memory import MemoryObjectSendStream

log = logging.getLogger("sluice.consumer")

CORRELATION_HEADER = "X-Correlation-ID"


class Consumer(Actor):
    """Pulls batches for one source and hands decoded work to the dedup guard.

    `request_stop()` ends fetching; messages already fetched are passed on, then the
    outbox is closed. Messages never acked are redelivered by JetStream.
    """

    def __init__(
        self,
        source: str,
        subscribe: Callable[[str], Awaitable[Subscription]],
        outbox: MemoryObjectSendStream[Work],
        *,
        batch: int,
        fetch_timeout: float,
        retry_delay: float = 1.0,
    ) -> None:
        self.name = f"consumer[{source}]"
        self.source = source
        self._subscribe = subscribe
        self._outbox = outbox
        self._batch = batch
        self._fetch_timeout = fetch_timeout
        self._retry_delay = retry_delay
        self._stopping = False
        self._fetch_scope: anyio.CancelScope | None = None

    def request_stop(self) -> None:
        self._stopping = True
        if self._fetch_scope is not None:
            self._fetch_scope.cancel()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        subscription = await self._subscribe(self.source)
        task_status.started()
        while not self._stopping:
            deliveries = await self._fetch(subscription)
            for delivery in deliveries:
                await self._outbox.send(self.decode(delivery))
        await self._outbox.aclose()

    async def _fetch(self, subscription: Subscription) -> list[Delivery]:
        with anyio.CancelScope() as scope:
            self._fetch_scope = scope
            try:
                if self._stopping:
                    return []
                return list(await subscription.fetch(self._batch, self._fetch_timeout))
            except LogUnavailable as exc:
                log.warning("%s: %s; retrying", self.name, exc)
                await anyio.sleep(self._retry_delay)
            finally:
                self._fetch_scope = None
        return []

    def decode(self, delivery: Delivery) -> Work:
        """Turn one message into rows; what can never be stored becomes dead letters."""
        correlation_id = delivery.headers.get(CORRELATION_HEADER)
        try:
            env = envelope.decode(delivery.data)
        except envelope.BadEnvelope as exc:
            letter = DeadLetter(self.source, str(exc), delivery.data, delivery.num_delivered)
            return Work(self.source, delivery, [], [letter], correlation_id=correlation_id)
        rows = []
        dead = []
        for raw in env.events:
            try:
                rows.append(
                    parse_event(
                        env.source,
                        bytes(raw),
                        received_at=env.receivedAt,
                        correlation_id=correlation_id,
                    )
                )
            except InvalidEvent as exc:
                dead.append(DeadLetter(env.source, exc.error, bytes(raw), delivery.num_delivered))
        if rows or dead:
            log.debug(
                "%s: %d rows, %d dead",
                self.name,
                len(rows),
                len(dead),
                extra={"correlation_id": correlation_id},
            )
        return Work(self.source, delivery, rows, dead, correlation_id=correlation_id)
