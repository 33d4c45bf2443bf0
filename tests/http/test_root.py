"""GET /: points a person at the docs and what else this process serves."""

from __future__ import annotations

from typing import Any

import pytest

from sluice.config import Settings
from sluice.http.app import HttpDeps, create_app
from sluice.http.health import Health
from sluice.metrics import Metrics
from tests.fakes import FakeEventLog
from tests.http.test_reports import FakeReports

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def links(**deps: Any) -> dict[str, Any]:
    app = create_app(HttpDeps(Settings(), Metrics(), Health(), **deps))
    response = await app.test_client().get("/")
    assert response.status_code == 200
    body: dict[str, Any] = await response.get_json()
    assert body["service"] == "sluice"
    return body["links"]


async def test_every_link_is_served_by_the_same_app() -> None:
    found = await links(event_log=FakeEventLog(), reports=FakeReports())
    assert found["docs"]["href"] == "/docs"
    assert found["webhook"]["href"] == "/webhook"
    app = create_app(HttpDeps(Settings(), Metrics(), Health(), reports=FakeReports()))  # type: ignore[arg-type]
    client = app.test_client()
    for name, link in found.items():
        if name != "webhook":  # served by the ASGI front, in front of this app
            assert (await client.get(link["href"])).status_code != 404, name


async def test_a_role_without_reports_or_webhook_lists_neither() -> None:
    found = await links()
    assert "reports" not in found and "webhook" not in found
    assert {"health", "metrics"} <= set(found)
