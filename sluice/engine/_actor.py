"""The actor contract: one `run()` that owns its inbox and resources."""

from __future__ import annotations

import abc

import anyio
import anyio.abc

__all__ = ["Actor"]


class Actor(abc.ABC):
    """A unit of work run (and restarted) by a `Supervisor`.

    Channel ends and edge interfaces are passed to the constructor, created outside the
    actor, so a fresh instance made after a crash picks up the same channels. An actor
    closes its own send ends only when it returns normally; it never closes them on a
    crash (the restarted instance still needs them).
    """

    name: str
    """Identifies the actor in logs; a class attribute or set in `__init__`."""

    @abc.abstractmethod
    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Open resources, call `task_status.started()` once ready, return when the inbox ends.

        Blocks for the actor's whole life. Returning normally means the work is done
        (end of input, or drained after `request_stop()`); raising means a crash, which
        the supervisor may answer with a fresh instance. Helper tasks live in a task
        group inside this method.
        """

    def request_stop(self) -> None:  # noqa: B027  # a deliberate no-op default
        """Ask the actor to drain; must not block.

        Default: nothing, since actors fed by a channel stop when their inbox ends.
        Sources of work (HTTP ingress, JetStream consumers) override it: stop taking new
        input, finish what is in hand, close their output channels, return from `run()`.
        The supervisor calls it at most once per instance, from another task, possibly
        before `started()` (if the drain begins while the actor is starting).
        """
