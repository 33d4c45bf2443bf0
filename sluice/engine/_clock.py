"""The engine's notion of time, so restart backoff and drain deadlines can be faked."""

from __future__ import annotations

from typing import Protocol

import anyio

__all__ = ["AnyioClock", "Clock"]


class Clock(Protocol):
    """Where the supervisor reads the time and sleeps (backoff, drain deadline)."""

    def current_time(self) -> float:
        """Seconds on a monotonic clock; only differences are meaningful."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Block for `seconds`; a cancellation point like `anyio.sleep`."""
        ...


class AnyioClock:
    """The event loop's clock: `anyio.current_time` and `anyio.sleep`.

    On trio this is the run's clock, so pytest-trio's `autojump_clock` (a `MockClock`)
    drives it: the fake time jumps ahead whenever every task is blocked.
    """

    def current_time(self) -> float:
        return anyio.current_time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)
