"""Messages held: fetched by this process's consumers and not yet acked, naked or
terminated (in a channel, in the dedup guard, in a writer's batch).

JetStream redelivers a message once it has been held `ack_wait` without an ack or a
progress signal. `HeldMessages` lets the keeper (`sluice.actors.keeper`) tell JetStream
that messages held a while are still being worked on, and, when the pipeline has
stopped, give back at once (nak, no delay) whatever it still holds, so the next worker
does not wait out ack_wait. Consumers fetch through `HoldingSubscription`, which
registers each delivery and lets it go when it is acked, naked or terminated; nothing
on the hot path changes but one dict insert and delete per message.
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
    signalled. Not thread-safe (one event loop)."""

    def __init__(self) -> None:
        # delivery -> (when fetched, when fetched or last signalled)
        self._held: dict[HeldDelivery, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, delivery: HeldDelivery) -> None:
        now = anyio.current_time()
        self._held[delivery] = (now, now)

    def let_go(self, delivery: HeldDelivery) -> None:
        self._held.pop(delivery, None)

    async def signal_progress(self, older_than: float, *, at_most: float) -> int:
        """Send `in_progress()` for every message held (or last signalled) more than
        `older_than` seconds ago, but fetched less than `at_most` seconds ago (one
        held longer was lost by an actor that crashed with it: JetStream shall
        redeliver it); returns how many. A failed signal is logged: the message is then
        redelivered after ack_wait, and the database key keeps a second write harmless."""
        now = anyio.current_time()
        due = [
            d
            for d, (fetched, last) in self._held.items()
            if now - last > older_than and now - fetched < at_most
        ]
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
