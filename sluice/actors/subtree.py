"""A nested supervisor run as one child of the top one (the writing subtree).

The consumers, the dedup guard and the writers restart under their own budgets inside
it; when one of them spends its budget, only this subtree ends, and the top supervisor
starts it again after its backoff (its policy never runs out): ingress keeps answering
from JetStream whatever happens to the database side.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import anyio

from sluice.engine import Actor, ChildSpec, DrainDeadline, Supervisor

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from anyio.abc import TaskStatus


class Subtree(Actor):
    """Runs `children` under a fresh Supervisor per start; drains it on `request_stop()`."""

    def __init__(
        self,
        name: str,
        children: Sequence[ChildSpec],
        *,
        deadline: DrainDeadline,
        on_restart: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self.name = name
        self._children = children
        self._deadline = deadline
        self._on_restart = on_restart
        self._stop = anyio.Event()
        self.supervisor: Supervisor | None = None

    def children_alive(self) -> dict[str, bool]:
        return self.supervisor.children_alive() if self.supervisor else {}

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        supervisor = Supervisor(
            self._children, name=self.name, on_restart=self._on_restart, deadline=self._deadline
        )
        self.supervisor = supervisor
        async with anyio.create_task_group() as tg:

            async def drain_when_asked() -> None:
                await self._stop.wait()
                remaining = self._deadline.remaining()
                await supervisor.drain(remaining if remaining < math.inf else 3600.0)

            tg.start_soon(drain_when_asked)
            await supervisor.run(task_status=task_status)
            tg.cancel_scope.cancel()
