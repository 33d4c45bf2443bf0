"""Liveness and readiness: what an orchestrator asks before sending traffic.

- `GET /health/live`: 200 while the process and its supervisor run (also while
  draining: a draining process must not be killed for being slow), 503 once the
  supervisor has stopped. Body: `{"status", "supervisor", "actors": {name: running}}`.
- `GET /health/ready`: 200 when every check of this role passes (some of: nats,
  postgres, migrations) and the process is not draining; else 503. Body:
  `{"status": "ready" | "not ready", "checks": {name: {"ok": bool, "error"?: str}}}`,
  always with a `draining` entry. Checks run concurrently, each under CHECK_TIMEOUT.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
from quart import Blueprint, Response, current_app, jsonify

from sluice.config import mask_secrets

Check = Callable[[], Awaitable[None]]  # raises (anything) when not ready

CHECK_TIMEOUT = 2.0


class Health:
    """Named readiness checks plus the draining flag; liveness from the supervisor."""

    def __init__(self) -> None:
        self.checks: dict[str, Check] = {}
        self.draining = False
        self.alive: Callable[[], dict[str, bool]] = dict
        self.supervisor: Callable[[], str] = lambda: "running"
        """"running", "draining" or "stopped"."""

    async def readiness(self) -> tuple[bool, dict[str, dict[str, object]]]:
        results: dict[str, dict[str, object]] = {}

        async def run(name: str, check: Check) -> None:
            try:
                with anyio.fail_after(CHECK_TIMEOUT):
                    await check()
            except Exception as exc:
                error = str(exc) or type(exc).__name__
                results[name] = {"ok": False, "error": mask_secrets(error)}
            else:
                results[name] = {"ok": True}

        async with anyio.create_task_group() as tg:
            for name, check in self.checks.items():
                tg.start_soon(run, name, check)
        ordered = {name: results[name] for name in self.checks}
        ordered["draining"] = (
            {"ok": False, "error": "draining: shutting down"} if self.draining else {"ok": True}
        )
        return all(r["ok"] for r in ordered.values()), ordered


health_routes = Blueprint("health", __name__)


def _health() -> Health:
    health: Health = current_app.extensions["sluice.health"]
    return health


@health_routes.get("/health/live")
async def live() -> tuple[Response, int]:
    health = _health()
    state = health.supervisor()
    up = state != "stopped"
    body = {"status": "ok" if up else "down", "supervisor": state, "actors": health.alive()}
    return jsonify(body), 200 if up else 503


@health_routes.get("/health/ready")
async def ready() -> tuple[Response, int]:
    ok, checks = await _health().readiness()
    return jsonify({"status": "ready" if ok else "not ready", "checks": checks}), (
        200 if ok else 503
    )
