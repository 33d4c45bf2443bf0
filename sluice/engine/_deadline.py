"""The drain deadline: one budget that every step of a graceful stop fits into.

`Supervisor.drain(timeout)` starts it and `Supervisor.force()` ends it. Actors that
take part in a drain get the same `DrainDeadline` and bound their steps by it: the
ingress waits for in-flight requests for at most its share, the consumers catch up for
at most what is left less the writers' reserve, and every shielded step (a commit and
its acks) runs in `shield()`, so neither the deadline nor a second signal is ever
outlived by a shield.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["DrainDeadline"]


class DrainDeadline:
    """When the drain must be over, on the event loop's clock (`anyio.current_time`)."""

    def __init__(self) -> None:
        self._total: float | None = None
        self._end = math.inf
        self._shields: set[anyio.CancelScope] = set()

    @property
    def started(self) -> bool:
        """True once the drain has begun (or was forced)."""
        return self._total is not None

    @property
    def total(self) -> float:
        """The whole budget in seconds (inf before the drain begins)."""
        return math.inf if self._total is None else self._total

    def begin(self, timeout: float) -> None:
        """Start the clock: the drain must be over `timeout` seconds from now."""
        if self._total is not None:
            return
        self._total = timeout
        self._end = anyio.current_time() + timeout
        for scope in self._shields:
            scope.deadline = min(scope.deadline, self._end)

    def force(self) -> None:
        """The deadline is now: every shielded step is cancelled at once."""
        if self._total is None:
            self._total = 0.0
        self._end = anyio.current_time()
        for scope in self._shields:
            scope.cancel()

    def remaining(self) -> float:
        """Seconds left (inf before the drain begins, 0 once it is over)."""
        if self._end == math.inf:
            return math.inf
        return max(0.0, self._end - anyio.current_time())

    def share(self, fraction: float, *, reserve: float = 0.0) -> float:
        """At most `fraction` of the whole budget, and never more than what is left
        after keeping `reserve` (a fraction of the budget) for the steps that follow."""
        total = self.total
        if total == math.inf:
            return math.inf
        return max(0.0, min(fraction * total, self.remaining() - reserve * total))

    @contextlib.contextmanager
    def shield(self, cap: float) -> Iterator[anyio.CancelScope]:
        """A shielded scope for a step that must not be cut by an ordinary cancel,
        ended after `cap` seconds, at the drain's deadline, or at `force()`, whichever
        comes first. Code after it sees `scope.cancelled_caught` when it was cut."""
        deadline = min(anyio.current_time() + cap, self._end)
        with anyio.CancelScope(shield=True, deadline=deadline) as scope:
            self._shields.add(scope)
            try:
                yield scope
            finally:
                self._shields.discard(scope)
