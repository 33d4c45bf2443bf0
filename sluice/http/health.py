"""Liveness and readiness: what an orchestrator asks before sending traffic."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
from quart import Blueprint, Response, current_app, jsonify

Check = Callable[[], Awaitable[None]]  # raises (anything) when not ready

CHECK_TIMEOUT = 2.0


class Health:
    """Named readiness checks plus the draining flag; liveness from the supervisor."""

    def __init__(self) -> None:
        self.checks: dict[str, Check] = {}
        self.draining = False
        self.alive: Callable[[], dict[str, bool]] = dict

    async def readiness(self) -> tuple[bool, dict[str, dict[str, object]]]:
        results: dict[str, dict[str, object]] = {}
        for name, check in self.checks.items():
            try:
                with anyio.fail_after(CHECK_TIMEOUT):
                    await check()
            except Exception as exc:
                results[name] = {"ok": False, "error": str(exc) or type(exc).__name__}
            else:
                results[name] = {"ok": True}
        results["draining"] = {"ok": not self.draining}
        return all(r["ok"] for r in results.values()), results


health_routes = Blueprint("health", __name__)


def _health() -> Health:
    health: Health = current_app.extensions["sluice.health"]
    return health


@health_routes.get("/health/live")
async def live() -> tuple[Response, int]:
    actors = _health().alive()
    return jsonify({"status": "ok", "actors": actors}), 200


@health_routes.get("/health/ready")
async def ready() -> tuple[Response, int]:
    ok, checks = await _health().readiness()
    return jsonify({"status": "ready" if ok else "not ready", "checks": checks}), (
        200 if ok else 503
    )
