"""Log formats, and the health endpoints through Quart's test client."""

from __future__ import annotations

import json
import logging

import anyio
import pytest

from sluice.config import Settings
from sluice.engine import current_actor
from sluice.http.app import HttpDeps, create_app
from sluice.http.health import Health
from sluice.logs import JsonFormatter, TextFormatter
from sluice.metrics import Metrics


def record(message: str, **fields: object) -> logging.LogRecord:
    rec = logging.LogRecord("sluice.writer", logging.INFO, __file__, 1, message, (), None)
    for key, value in fields.items():
        setattr(rec, key, value)
    return rec


def test_json_lines_carry_the_fields_and_the_actor() -> None:
    token = current_actor.set("writer[1]")
    try:
        line = JsonFormatter().format(
            record("committed", correlation_ids=["c1", "c2"], rows=3, extra_map={"a": 1})
        )
    finally:
        current_actor.reset(token)
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["level"] == "info" and entry["logger"] == "sluice.writer"
    assert entry["message"] == "committed" and entry["timestamp"].endswith("+00:00")
    assert entry["actor"] == "writer[1]"
    assert entry["correlation_ids"] == ["c1", "c2"] and entry["rows"] == 3
    assert entry["extra_map"] == {"a": 1}
    assert "actor" not in json.loads(JsonFormatter().format(record("outside any actor")))


def test_text_lines_are_readable() -> None:
    line = TextFormatter().format(record("committed", correlation_ids=["c1", "c2"]))
    assert line.endswith("INFO    sluice.writer: committed correlation_ids=c1,c2")


def make_client(health: Health) -> object:
    app = create_app(HttpDeps(Settings(), Metrics(), health))
    return app.test_client()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Quart is asyncio-only


@pytest.mark.anyio
async def test_ready_names_every_check_and_answers_503_while_one_fails() -> None:
    health = Health()
    healthy = {"nats": True, "postgres": True}

    def check(name: str):  # type: ignore[no-untyped-def]
        async def run() -> None:
            await anyio.lowlevel.checkpoint()
            if not healthy[name]:
                raise ConnectionError(f"{name} is down")

        return run

    health.checks = {"nats": check("nats"), "postgres": check("postgres")}
    client = make_client(health)
    response = await client.get("/health/ready")  # type: ignore[attr-defined]
    assert response.status_code == 200
    assert await response.get_json() == {
        "status": "ready",
        "checks": {"nats": {"ok": True}, "postgres": {"ok": True}, "draining": {"ok": True}},
    }
    healthy["postgres"] = False
    response = await client.get("/health/ready")  # type: ignore[attr-defined]
    assert response.status_code == 503
    body = await response.get_json()
    assert body["status"] == "not ready"
    assert body["checks"]["postgres"] == {"ok": False, "error": "postgres is down"}
    assert body["checks"]["nats"] == {"ok": True}

    healthy["postgres"] = True
    health.draining = True
    response = await client.get("/health/ready")  # type: ignore[attr-defined]
    assert response.status_code == 503
    assert (await response.get_json())["checks"]["draining"]["ok"] is False


@pytest.mark.anyio
async def test_live_reports_the_supervisor_and_its_actors() -> None:
    health = Health()
    state = {"value": "running"}
    health.alive = lambda: {"ingress": True, "writer[0]": False}
    health.supervisor = lambda: state["value"]
    client = make_client(health)
    response = await client.get("/health/live")  # type: ignore[attr-defined]
    assert response.status_code == 200
    assert await response.get_json() == {
        "status": "ok",
        "supervisor": "running",
        "actors": {"ingress": True, "writer[0]": False},
    }
    state["value"] = "draining"  # still alive: do not kill a draining process
    assert (await client.get("/health/live")).status_code == 200  # type: ignore[attr-defined]
    state["value"] = "stopped"
    assert (await client.get("/health/live")).status_code == 503  # type: ignore[attr-defined]
