"""consumer[source]: fetches envelopes from a durable pull consumer and decodes them."""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING

import anyio

from sluice import envelope
from sluice.actors.work import Work
from sluice.engine import Actor
from sluice.ports import DeadLetter, Delivery, LogClosed, LogUnavailable, Subscription
from sluice.sources import InvalidEvent, parse_event

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence

    from anyio.abc import TaskStatus
    from anyio.streams.memory import MemoryObjectSendStream

    from sluice.inflight import HeldMessages

log = logging.getLogger("sluice.consumer")

CORRELATION_HEADER = "X-Correlation-ID"
CLOSE_TIMEOUT = 2.0


class Consumer(Actor):
    """Pulls batches for one source and hands decoded work to the dedup guard.

    `request_stop()` ends fetching; messages already fetched are passed on, then the
    outbox is closed. Messages never acked are redelivered by JetStream. With
    `catch_up` (set where this process's own intake stopped first), it first takes what
    JetStream holds for the source at that moment, for up to `catch_up` seconds (a
    number, or a function asked at that moment: the drain budget left for it).
    Each fetched batch is logged with its correlation ids.

    With `linger` > 0, a fetch that brought less than half a batch is followed by a
    pause of `linger` seconds before the next: at a trickle, every fetch is a JetStream
    API round trip for one or two messages, which costs the worker and nats-server more
    than the messages do; the pause lets messages gather (adding at most `linger` to
    their latency). Under load fetches come back full and never pause.

    With `max_bytes`, each fetch asks for at most `max_bytes` worth of messages at the
    size recently seen (and at least one), so a run of large envelopes is not fetched
    `batch` at a time; before any message is seen, it asks for one. It is an estimate,
    not a cap: the first fetch after small messages turn large can bring up to `batch`
    of them (nats-py's fetch cannot pass JetStream's own byte limit). A fetch is "thin"
    (for `linger`) against the count it asked for. None: every fetch asks `batch`.

    With `budget` (the messages this process holds, `sluice.inflight.HeldMessages`,
    with its byte budget), it fetches only while the budget has room, and asks for no
    more than that room at the size recently seen (at least one message). Nothing is
    reserved while a fetch waits for messages: an idle source's fetch, waiting out its
    timeout, would take room the busy ones need.
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
        catch_up: float | Callable[[], float] = 0.0,
        linger: float = 0.0,
        max_bytes: int | None = None,
        budget: HeldMessages | None = None,
    ) -> None:
        self.name = f"consumer[{source}]"
        self.source = source
        self._subscribe = subscribe
        self._outbox = outbox
        self._batch = batch
        self._fetch_timeout = fetch_timeout
        self._retry_delay = retry_delay
        self._catch_up = catch_up
        self._linger = linger
        self._max_bytes = max_bytes
        self._budget = budget
        self._message_bytes: int | None = None  # None until a message is seen
        self._stopping = False
        self._fetch_scope: anyio.CancelScope | None = None
        self._room_scope: anyio.CancelScope | None = None

    def request_stop(self) -> None:
        self._stopping = True
        # With catch-up, a fetch under way ends by itself: cancelling it could strand
        # messages the server already sent for it until their ack_wait runs out.
        if self._fetch_scope is not None and not self._catch_up:
            self._fetch_scope.cancel()
        if self._room_scope is not None:  # nothing fetched yet: safe to cut
            self._room_scope.cancel()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        subscription = await self._subscribe(self.source)
        try:
            task_status.started()
            while not self._stopping:
                await self._wait_for_room()
                wanted = self._wanted()
                deliveries = await self._fetch(subscription, wanted)
                await self._pass_on(deliveries)
                if self._linger > 0 and 0 < len(deliveries) < wanted // 2:
                    await self._pause(self._linger)
            if self._catch_up:
                await self._take_what_is_left(subscription)
            await self._outbox.aclose()
        finally:
            # No inbox left behind for a restarted consumer; what was fetched is held
            # (and acked later) all the same.
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
                await subscription.close()

    def _wanted(self) -> int:
        """How many messages the next fetch asks for."""
        room = self._budget.room() if self._budget is not None else None
        if self._max_bytes is None and room is None:
            return self._batch
        if self._message_bytes is None:
            return 1
        wanted = self._batch
        for limit in (self._max_bytes, room):
            if limit is not None:
                wanted = min(wanted, limit // self._message_bytes)
        return max(1, wanted)

    async def _wait_for_room(self) -> None:
        """Until the budget has room, or a stop is requested."""
        if self._budget is None:
            return
        with anyio.CancelScope() as scope:
            self._room_scope = scope
            try:
                if not self._stopping:
                    await self._budget.wait_for_room()
            finally:
                self._room_scope = None

    def _observe(self, deliveries: Sequence[Delivery]) -> None:
        if (self._max_bytes is None and self._budget is None) or not deliveries:
            return
        largest = max(len(d.data) for d in deliveries)
        # A decaying maximum, not an average: a larger message counts at once (mixed
        # sizes are budgeted at the largest), a smaller one takes over within a few
        # fetches (halving: 1 MB to 1 KB in ten).
        previous = largest if self._message_bytes is None else self._message_bytes // 2
        self._message_bytes = max(1, largest, previous)

    async def _pass_on(self, deliveries: Sequence[Delivery]) -> None:
        """Decode and send one message at a time (a fetch of large envelopes is not
        held decoded all at once), then log the fetch."""
        if not deliveries:
            return
        self._observe(deliveries)
        events = 0
        correlation_ids: list[str] = []
        for delivery in deliveries:
            work = self.decode(delivery)
            events += len(work.rows) + len(work.dead)
            correlation_ids.extend(work.correlation_ids)
            await self._outbox.send(work)
        log.info(
            "%s: fetched %d messages, %d events",
            self.name,
            len(deliveries),
            events,
            extra={"correlation_ids": _distinct(correlation_ids)},
        )

    async def _take_what_is_left(self, subscription: Subscription) -> None:
        """On drain, when this process's own ingress has stopped: fetch what JetStream
        holds for this source right now, so the events accepted here are written before
        exit. Bounded by that count and by `catch_up` seconds; anything left stays in
        JetStream for the next worker."""
        budget = self._catch_up() if callable(self._catch_up) else self._catch_up
        with anyio.move_on_after(budget) as scope:
            try:
                left, _ = await subscription.pending()
                while left > 0:
                    if self._budget is not None:
                        await self._budget.wait_for_room()
                    deliveries = await subscription.fetch(
                        min(self._wanted(), left), min(self._fetch_timeout, 0.5)
                    )
                    if not deliveries:
                        break
                    left -= len(deliveries)
                    await self._pass_on(deliveries)
            except LogUnavailable as exc:
                log.warning("%s: cannot catch up: %s", self.name, exc)
        if scope.cancelled_caught:
            log.warning("%s: catch-up cut short after %.1f s", self.name, budget)

    async def _pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less when asked to stop meanwhile."""
        with anyio.CancelScope() as scope:
            self._fetch_scope = scope
            try:
                if not self._stopping:
                    await anyio.sleep(seconds)
            finally:
                self._fetch_scope = None

    async def _fetch(self, subscription: Subscription, wanted: int) -> list[Delivery]:
        with anyio.CancelScope() as scope:
            self._fetch_scope = scope
            try:
                if self._stopping:
                    return []
                return list(await subscription.fetch(wanted, self._fetch_timeout))
            except LogClosed:
                raise  # no retry can help: crash, and let the supervisor decide
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
        owners = _owners(env.requests, correlation_id)
        for raw, owner in zip(env.events, owners, strict=False):
            try:
                rows.append(
                    parse_event(
                        env.source,
                        bytes(raw),
                        received_at=env.receivedAt,
                        correlation_id=owner,
                    )
                )
            except InvalidEvent as exc:
                dead.append(DeadLetter(env.source, exc.error, bytes(raw), delivery.num_delivered))
        request_ids = tuple(dict.fromkeys(cid for cid, _ in env.requests or ()))
        return Work(
            self.source,
            delivery,
            rows,
            dead,
            correlation_id=correlation_id,
            request_ids=request_ids,
        )


def _owners(requests: list[tuple[str, int]] | None, header: str | None) -> Iterator[str | None]:
    """Each event's correlation id: from the envelope's request runs when it has them
    (group commit), else (and for any events past the runs) the message header's."""
    if not requests:
        return itertools.repeat(header)
    runs = (itertools.repeat(cid, count) for cid, count in requests)
    return itertools.chain(itertools.chain.from_iterable(runs), itertools.repeat(header))


def _distinct(ids: Iterable[str | None]) -> list[str]:
    """The correlation ids of a batch, each once, in order (for its log line)."""
    return list(dict.fromkeys(i for i in ids if i))
