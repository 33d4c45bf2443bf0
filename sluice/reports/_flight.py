"""Single flight: concurrent calls for the same key share one run of their work.

The dashboard asks for distinct users and the top users and videos (by events and by
revenue) at once; over a partial range each of those reads the same raw events. The report
store runs one scan per (entity, scope) and lets every request that arrives while it runs
wait for that answer instead of starting its own. Nothing is kept once the run ends: a
later call runs the work again, so an answer is never older than the oldest request
still waiting for it.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Generic, TypeVar

import anyio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["SingleFlight"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Flight(Generic[V]):
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.result: tuple[V] | None = None  # (what the work returned,)
        self.error: Exception | None = None  # or what it raised


class SingleFlight(Generic[K, V]):
    """Runs `work` once for all the concurrent `run(key, work)` calls with an equal key.

    The first caller runs the work in its own task; the others wait for its outcome. If
    the work raises an Exception, every waiting caller gets that exception too. If the
    first caller is cancelled (or interrupted) before the work ends, the waiting callers
    are not: one of them runs the work again. Works on asyncio and trio (anyio).
    """

    def __init__(self) -> None:
        self._flights: dict[K, _Flight[V]] = {}

    def __len__(self) -> int:
        """How many keys have work running now."""
        return len(self._flights)

    async def run(self, key: K, work: Callable[[], Awaitable[V]]) -> V:
        """The result of `work()`, or of the run already under way for `key`.

        Blocks until that run ends; raises what it raised (an Exception).
        """
        while True:
            flight = self._flights.get(key)
            if flight is None:
                return await self._lead(key, work)
            await flight.done.wait()
            if flight.result is not None:
                return flight.result[0]
            if flight.error is not None:
                raise flight.error
            # The caller that ran it was cancelled: go round, one of us runs it again.

    async def _lead(self, key: K, work: Callable[[], Awaitable[V]]) -> V:
        flight: _Flight[V] = _Flight()
        self._flights[key] = flight
        try:
            value = await work()
        except Exception as exc:
            flight.error = exc
            raise
        else:
            flight.result = (value,)
            return value
        finally:
            del self._flights[key]
            flight.done.set()
