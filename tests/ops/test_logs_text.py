"""Dev text logs a person can read: one line per request, batches summarised, no
warnings on a clean stop; JSON lines keep every field whole."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from sluice.config import Settings
from sluice.http.app import HttpDeps, create_app
from sluice.http.health import Health
from sluice.logs import JsonFormatter, TextFormatter
from sluice.metrics import Metrics
from tests.factories import make_event
from tests.fakes import FakeEventLog
from tests.http.test_webhook import LeanClient

IDS = [f"corr-{n:03d}" for n in range(250)]


def record(**fields: object) -> logging.LogRecord:
    rec = logging.LogRecord("sluice.writer", logging.INFO, __file__, 1, "committed", (), None)
    for key, value in fields.items():
        setattr(rec, key, value)
    return rec


def test_a_batch_of_hundreds_of_ids_is_a_count_and_the_first_id() -> None:
    line = TextFormatter().format(record(correlation_ids=IDS, rows=250))
    assert line.endswith("committed correlation_ids=250 (first corr-000) rows=250")
    assert "corr-001" not in line


def test_a_few_ids_are_listed() -> None:
    line = TextFormatter().format(record(correlation_ids=IDS[:3]))
    assert line.endswith("correlation_ids=corr-000,corr-001,corr-002")


def test_json_lines_keep_every_id() -> None:
    entry = json.loads(JsonFormatter().format(record(correlation_ids=IDS, rows=250)))
    assert entry["correlation_ids"] == IDS and entry["rows"] == 250
    assert entry["message"] == "committed"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Quart runs on asyncio only


@pytest.mark.anyio
async def test_one_log_line_per_webhook_request_at_most(caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(HttpDeps(Settings(), Metrics(), Health(), event_log=FakeEventLog()))
    client = LeanClient(app)
    caplog.set_level(logging.DEBUG)
    requests: list[Any] = [make_event(seed=n) for n in range(5)] + [[make_event(seed=9)] * 2]
    requests.append({"eventId": "bad"})
    for body in requests:
        assert (await client.post("/webhook", json=body)).status_code in (202, 422)
    for path in ("/health/ready", "/metrics", "/"):
        assert (await client.get(path)).status_code == 200
    shown = [r for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith("sluice")]
    assert len(shown) == len(requests), [r.getMessage() for r in shown]
    assert all(r.name == "sluice.webhook" for r in shown)
