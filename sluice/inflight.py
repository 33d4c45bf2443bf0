"""Messages held: fetched by this process's consumers and not yet acked, naked or
terminated (in a channel, in the dedup guard, in a writer's batch).

JetStream redelivers a message once it has been held `ack_wait` without an ack or a
progress signal. `HeldMessages` lets the keeper (`sluice.actors.keeper`) tell JetStream
that messages held a while are still being worked on, and, when the pipeline has
stopped, give back at once (nak, no delay) whatever it still holds, so the next worker
does not wait out ack_wait. Consumers fetch through `HoldingSubscription`, which
registers each delivery and lets it go when it is acked, naked or terminated; nothing
on the hot path changes but one dict insert and delete per message.

With `max_bytes`, the bytes of the messages held are a budget: consumers wait for room
before they fetch (`wait_for_room`) and ask for no more than the room left (`room`), so
what this process holds between fetch and ack is bounded in bytes, not only by channel
capacities counted in messages (a message can be 1 MiB; decoded, its rows take about
three times that). Consumers of several sources fetching at once may each take the
room left: the budget can be passed by up to one such fetch per source.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from sluice.ports import Delivery, Subscription

__all__ = ["EVENTS_HEADER", "HeldDelivery", "HeldMessages", "HoldingSubscription"]

log = logging.getLogger("sluice.inflight")

EVENTS_HEADER = "Sluice-Events"


class HeldMessages:
    """The deliveries this process holds, each with when it was fetched or last
    signalled, and their bytes. Not thread-safe (one event loop).

    `max_bytes` (None: no budget) is what `room` and `wait_for_room` measure against.
    """

    def __init__(self, max_bytes: int | None = None) -> None:
        # delivery -> (when fetched, when fetched or last signalled)
        self._held: dict[HeldDelivery, tuple[float, float]] = {}
        self.max_bytes = max_bytes
        self.bytes = 0  # of the messages held
        self._room: anyio.Event | None = None  # set when bytes go down, if anyone waits

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, delivery: HeldDelivery) -> None:
        now = anyio.current_time()
        if delivery not in self._held:
            self.bytes += len(delivery.data)
        self._held[delivery] = (now, now)

    def let_go(self, delivery: HeldDelivery) -> None:
        if self._held.pop(delivery, None) is not None:
            self.bytes -= len(delivery.data)
            self._freed()

    def room(self) -> int | None:
        """Bytes the budget has left (0 when spent or over), None without a budget."""
        if self.max_bytes is None:
            return None
        return max(0, self.max_bytes - self.bytes)

    async def wait_for_room(self) -> None:
        """Block while the budget is spent (never without one)."""
        while self.room() == 0:
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()

    def _freed(self) -> None:
        if self._room is not None and self.room() != 0:
            self._room.set()
            self._room = None

    async def signal_progress(self, older_than: float, *, at_most: float) -> int:
        """Send `in_progress()` for every message held (or last signalled) more than
        `older_than` seconds ago, but fetched less than `at_most` seconds ago; returns
        how many. One held longer was lost by an actor that crashed with it: it is let
        go (JetStream has redelivered it), so it neither stays in memory nor keeps
        taking the budget. A failed signal is logged: the message is then redelivered
        after ack_wait, and the database key keeps a second write harmless."""
        now = anyio.current_time()
        lost = [d for d, (fetched, _) in self._held.items() if now - fetched >= at_most]
        for delivery in lost:
            self.let_go(delivery)
        if lost:
            log.warning("%d messages held over %.0f s taken for lost, let go", len(lost), at_most)
        due = [d for d, (_, last) in self._held.items() if now - last > older_than]
        for delivery in due:
            try:
                await delivery.in_progress()
            except Exception as exc:
                log.debug("in_progress failed: %r", exc)
                continue
            times = self._held.get(delivery)
            if times is not None:
                self._held[delivery] = (times[0], now)
        return len(due)

    async def give_back(self) -> int:
        """Nak, with no delay, every message still held (the pipeline has stopped);
        returns how many."""
        held = list(self._held)
        for delivery in held:
            try:
                await delivery.nak()
            except Exception as exc:  # ack_wait brings it back anyway
                log.debug("nak failed: %r", exc)
                self.let_go(delivery)
        return len(held)


class HoldingSubscription:
    """A `Subscription` whose deliveries count as held until acked, naked or terminated."""

    def __init__(self, inner: Subscription, held: HeldMessages) -> None:
        self._inner = inner
        self._held = held

    async def fetch(self, batch: int, timeout: float) -> Sequence[Delivery]:
        deliveries = await self._inner.fetch(batch, timeout)
        return [HeldDelivery(d, self._held) for d in deliveries]

    async def pending(self) -> tuple[int, int]:
        return await self._inner.pending()

    async def close(self) -> None:
        await self._inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class ForwardingDelivery:
    """A `Delivery` that forwards to the one it wraps; subclasses add what happens when
    it is finished (ack, nak, term)."""

    __slots__ = ("_inner",)

    def __init__(self, inner: Delivery) -> None:
        self._inner = inner

    @property
    def data(self) -> bytes:
        return self._inner.data

    @property
    def headers(self) -> Mapping[str, str]:
        return self._inner.headers

    @property
    def num_delivered(self) -> int:
        return self._inner.num_delivered

    async def in_progress(self) -> None:
        await self._inner.in_progress()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class HeldDelivery(ForwardingDelivery):
    """A `Delivery` registered in `HeldMessages` until it is finished."""

    __slots__ = ("_held",)

    def __init__(self, inner: Delivery, held: HeldMessages) -> None:
        super().__init__(inner)
        self._held = held
        held.hold(self)

    async def ack(self) -> None:
        try:
            await self._inner.ack()
        finally:
            self._held.let_go(self)

    async def nak(self, delay: float | None = None) -> None:
        try:
            await self._inner.nak(delay)
        finally:
            self._held.let_go(self)  # back in JetStream, to be fetched again

    async def term(self) -> None:
        try:
            await self._inner.term()
        finally:
            self._held.let_go(self)
