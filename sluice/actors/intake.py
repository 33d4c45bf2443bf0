"""intake: the webhook's part of a drain, first of all.

The HTTP server itself stops last (health and metrics answer until the process exits);
intake is what stops first. On `request_stop()` readiness turns false and new webhook
requests are answered 503 with Retry-After; the requests already in flight finish,
and their publishes with them, before the consumers are asked to stop. That wait is
bounded by intake's share of the drain deadline, so one hung request cannot use the
budget the catch-up and the writers' last flush need.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from sluice.engine import Actor, DrainDeadline

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from sluice.http.health import Health
    from sluice.http.webhook import RequestsInFlight

log = logging.getLogger("sluice.intake")


class Intake(Actor):
    name = "intake"

    def __init__(
        self,
        requests: RequestsInFlight,
        health: Health,
        deadline: DrainDeadline,
        *,
        share: float,
    ) -> None:
        self._requests = requests
        self._health = health
        self._deadline = deadline
        self._share = share
        self._stop = anyio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await self._stop.wait()
        self._health.draining = True  # the webhook refuses new requests from now on
        budget = self._deadline.share(self._share)
        with anyio.move_on_after(budget) as scope:
            await self._requests.wait_idle()
        if scope.cancelled_caught:
            log.warning(
                "intake: %d webhook requests still in flight after %.1f s; going on with the drain",
                self._requests.count,
                budget,
            )
        else:
            log.info("intake: closed, no webhook request in flight")
