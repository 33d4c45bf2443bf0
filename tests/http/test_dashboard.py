"""GET /dashboard without a server: the page, its assets, and nothing from elsewhere."""

from __future__ import annotations

import re

import pytest
from quart import Quart

from sluice.config import Settings
from sluice.http.app import HttpDeps, create_app
from sluice.http.health import Health
from sluice.metrics import Metrics
from tests.http.test_reports import FakeReports

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Quart runs on asyncio only


@pytest.fixture
def app() -> Quart:
    return create_app(HttpDeps(Settings(), Metrics(), Health(), reports=FakeReports()))


async def test_the_page_and_its_assets_are_served_from_this_server_only(app: Quart) -> None:
    client = app.test_client()
    page = await client.get("/dashboard")
    assert page.status_code == 200
    assert page.content_type == "text/html; charset=utf-8"
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    html = (await page.get_data()).decode()
    linked = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert linked == ["data:,", "/dashboard/static/dashboard.css", "/dashboard/static/dashboard.js"]
    for name, kind in [("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")]:
        asset = await client.get(f"/dashboard/static/{name}")
        assert asset.status_code == 200 and asset.content_type.startswith(kind)
        text = (await asset.get_data()).decode()
        assert "//" not in re.sub(r"(^|\s)//.*|http://www\.w3\.org/2000/svg", "", text), name
        assert "@import" not in text and "url(" not in text, name
    assert (await client.get("/dashboard/static/../app.py")).status_code == 404
    assert (await client.get("/dashboard/static/secret")).status_code == 404


async def test_every_control_has_a_label(app: Quart) -> None:
    html = (await (await app.test_client().get("/dashboard")).get_data()).decode()
    controls = re.findall(r"<(?:select|input) [^>]*id=\"([^\"]+)\"", html)
    assert controls == ["range", "from", "to", "source", "every"]
    for control in controls:
        assert f'<label for="{control}">' in html, control


async def test_the_page_reads_the_report_endpoints_any_client_reads(app: Quart) -> None:
    client = app.test_client()
    script = (await (await client.get("/dashboard/static/dashboard.js")).get_data()).decode()
    paths = set(re.findall(r'"(/reports/[a-z]+)"', script))
    assert paths == {
        "/reports/extent",
        "/reports/events",
        "/reports/revenue",
        "/reports/demographics",
        "/reports/funnel",
        "/reports/countries",
        "/reports/top",
    }
    spec = await (await client.get("/openapi.json")).get_json()
    assert paths <= set(spec["paths"])
    assert not any(p.startswith("/dashboard") for p in spec["paths"])  # a page, not API


async def test_without_reports_there_is_no_dashboard() -> None:
    app = create_app(HttpDeps(Settings(), Metrics(), Health()))
    assert (await app.test_client().get("/dashboard")).status_code == 404
