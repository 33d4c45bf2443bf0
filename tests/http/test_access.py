"""API keys on the HTTP routes, through the ASGI front as served: 401, 403, optional vs
required, exempt routes, and keys limited to sources (webhook and Quart routes alike)."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from sluice.auth import Authenticator
from sluice.config import Settings
from sluice.http.access import BROWSER_CHALLENGE
from sluice.http.app import HttpDeps, create_app
from sluice.http.front import WebhookFront, front
from sluice.http.health import Health
from sluice.metrics import Metrics
from tests.factories import make_event
from tests.fakes import FakeEventLog, FakeKeyStore, post_unread
from tests.http.test_reports import FakeReports

pytestmark = pytest.mark.anyio

PUBLIC = ["/", "/health/live", "/health/ready", "/metrics", "/docs", "/openapi.json"]
REPORT_ROUTES = ["/reports/events", "/events", "/events/e-1", "/dashboard"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Quart runs on asyncio only


@pytest.fixture
def keys() -> FakeKeyStore:
    return FakeKeyStore()


@pytest.fixture
def log() -> FakeEventLog:
    return FakeEventLog()


def served(
    keys: FakeKeyStore, log: FakeEventLog, *, required: bool, metrics_auth: bool = False
) -> Any:
    auth = Authenticator(keys, keys.secret, required=required)
    settings = Settings(auth="required" if required else "optional", metrics_auth=metrics_auth)
    deps = HttpDeps(
        settings,
        Metrics(),
        Health(),
        event_log=log,
        reports=FakeReports(),
        auth=auth,
    )
    app = front(create_app(deps))
    assert isinstance(app, WebhookFront)
    return app


async def request(
    app: Any,
    method: str,
    path: str,
    key: str | None = None,
    json: Any = None,
    *,
    authorization: str | None = None,
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if authorization is not None:
        headers["Authorization"] = authorization
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sluice") as http:
        return await http.request(method, path, headers=headers, json=json)


def assert_401(response: httpx.Response, words: str) -> None:
    assert response.status_code == 401, response.text
    expected = ["Bearer"]
    if response.url.path.startswith("/dashboard"):
        expected.append(BROWSER_CHALLENGE)  # on a line of its own, as browsers need
    assert response.headers.get_list("www-authenticate") == expected
    assert words in response.json()["error"]


async def test_required_webhook_without_a_key_is_401_and_nothing_is_published(
    keys: FakeKeyStore, log: FakeEventLog
) -> None:
    app = served(keys, log, required=True)
    for path in ("/webhook", "/events", "/webhook/facebook"):
        response = await request(app, "POST", path, json=make_event("facebook"))
        assert_401(response, "missing API key")
    response = await request(app, "POST", "/webhook", key="slk_nope", json=make_event("facebook"))
    assert_401(response, "unknown or revoked API key")
    assert log.published == []


async def test_the_webhook_checks_the_key_before_reading_the_body(
    keys: FakeKeyStore, log: FakeEventLog
) -> None:
    app = served(keys, log, required=True)
    assert (await post_unread(app, "/webhook"))["status"] == 401


async def test_a_key_with_the_scope_is_served(keys: FakeKeyStore, log: FakeEventLog) -> None:
    app = served(keys, log, required=True)
    ingest, report, admin = keys.add("ingest"), keys.add("report"), keys.add("admin")
    for key in (ingest, admin):
        response = await request(app, "POST", "/webhook", key=key, json=make_event("tiktok"))
        assert response.status_code == 202, response.text
    refused = await request(app, "POST", "/webhook", key=report, json=make_event("tiktok"))
    assert refused.status_code == 403
    assert refused.json() == {"error": "this API key lacks the ingest scope"}
    for path in REPORT_ROUTES:
        assert_401(await request(app, "GET", path), "missing API key")
        forbidden = await request(app, "GET", path, key=ingest)
        assert forbidden.status_code == 403, path
        assert forbidden.json() == {"error": "this API key lacks the report scope"}
        for key in (report, admin):
            answered = await request(app, "GET", path, key=key)
            assert answered.status_code not in (401, 403), (path, answered.text)


async def test_a_browser_is_asked_for_the_key_and_may_send_it_by_basic_auth(
    keys: FakeKeyStore, log: FakeEventLog
) -> None:
    app = served(keys, log, required=True)
    for path in ("/dashboard", "/dashboard/static/dashboard.js"):
        assert_401(await request(app, "GET", path), "missing API key")
    # The API's own routes challenge for Bearer only: no prompt pops up in a browser
    # that fetches a report without a key (the dashboard shows the error instead).
    assert_401(await request(app, "GET", "/reports/events"), "missing API key")
    report, ingest = keys.add("report"), keys.add("ingest")
    as_password, as_user = basic("", report), basic(report, "")
    for path in ("/dashboard", "/dashboard/static/dashboard.js", "/reports/events"):
        for authorization in (as_password, as_user, basic("analyst", report)):
            answered = await request(app, "GET", path, authorization=authorization)
            assert answered.status_code == 200, (path, answered.text)
    forbidden = await request(app, "GET", "/dashboard", authorization=basic("", ingest))
    assert forbidden.status_code == 403
    wrong = await request(app, "GET", "/dashboard", authorization=basic("me", "not-a-key"))
    assert_401(wrong, "unknown or revoked API key")
    posted = await request(
        app, "POST", "/webhook", json=make_event("tiktok"), authorization=basic("", ingest)
    )
    assert posted.status_code == 202


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_public_routes_need_no_key(keys: FakeKeyStore, log: FakeEventLog) -> None:
    app = served(keys, log, required=True)
    for path in PUBLIC:
        response = await request(app, "GET", path)
        assert response.status_code in (200, 503), (path, response.status_code)  # 503: not ready
    swagger = await request(app, "GET", "/docs/assets/swagger-ui.css")
    assert swagger.status_code == 200


async def test_metrics_can_be_limited_to_admin(keys: FakeKeyStore, log: FakeEventLog) -> None:
    app = served(keys, log, required=True, metrics_auth=True)
    assert_401(await request(app, "GET", "/metrics"), "missing API key")
    assert (await request(app, "GET", "/metrics", key=keys.add("report"))).status_code == 403
    assert (await request(app, "GET", "/metrics", key=keys.add("admin"))).status_code == 200
    assert (await request(app, "GET", "/health/ready")).status_code != 401


async def test_optional_serves_without_a_key_but_checks_a_key_sent(
    keys: FakeKeyStore, log: FakeEventLog
) -> None:
    app = served(keys, log, required=False)
    assert (await request(app, "POST", "/webhook", json=make_event("facebook"))).status_code == 202
    assert (await request(app, "GET", "/reports/events")).status_code == 200
    unknown = await request(app, "POST", "/webhook", key="slk_x", json=make_event("facebook"))
    assert_401(unknown, "unknown or revoked API key")
    assert_401(await request(app, "GET", "/reports/events", key="slk_x"), "unknown")
    report = keys.add("report")
    refused = await request(app, "POST", "/webhook", key=report, json=make_event("facebook"))
    assert refused.status_code == 403
    assert (await request(app, "GET", "/reports/events", key=keys.add("ingest"))).status_code == 403


async def test_a_key_limited_to_tiktok_has_other_events_rejected_one_by_one(
    keys: FakeKeyStore, log: FakeEventLog
) -> None:
    app = served(keys, log, required=True)
    key = keys.add("ingest", sources={"tiktok"})
    body = [make_event("tiktok"), make_event("facebook"), make_event("tiktok", "bottom")]
    response = await request(app, "POST", "/webhook", key=key, json=body)
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["accepted"] == 2
    assert answer["rejected"] == [
        {
            "index": 1,
            "eventId": body[1]["eventId"],
            "error": "source: this API key may not send facebook events",
        }
    ]
    assert {source for source, *_ in log.published} == {"tiktok"}
    only_facebook = await request(app, "POST", "/webhook", key=key, json=[make_event("facebook")])
    assert only_facebook.status_code == 422
    # A copy of a refused event in the same body is refused too, not a duplicate (which
    # would claim it stored, and answer 202 for nothing).
    twice = make_event("facebook")
    repeated = await request(app, "POST", "/webhook", key=key, json=[twice, twice])
    assert repeated.status_code == 422, repeated.text
    assert repeated.json()["duplicates"] == 0
    assert [r["index"] for r in repeated.json()["rejected"]] == [0, 1]
    mixed = [make_event("tiktok"), twice, make_event("tiktok"), twice]
    mixed[2]["eventId"] = mixed[0]["eventId"]  # a tiktok copy stays a duplicate
    answered = await request(app, "POST", "/webhook", key=key, json=mixed)
    assert answered.status_code == 202
    assert (answered.json()["accepted"], answered.json()["duplicates"]) == (1, 1)
    assert [r["index"] for r in answered.json()["rejected"]] == [1, 3]
    routed = await request(app, "POST", "/webhook/facebook", key=key, json=make_event("facebook"))
    assert routed.status_code == 403
    assert routed.json() == {"error": "this API key may not send facebook events"}
    own = await request(app, "POST", "/webhook/tiktok", key=key, json=make_event("tiktok"))
    assert own.status_code == 202


async def test_the_key_store_down_an_uncached_key_is_503(
    keys: FakeKeyStore, log: FakeEventLog
) -> None:
    app = served(keys, log, required=True)
    cached, fresh = keys.add("ingest", "report"), keys.add("ingest")
    assert (await request(app, "GET", "/reports/events", key=cached)).status_code == 200
    keys.down = True
    assert (
        await request(app, "POST", "/webhook", key=cached, json=make_event("tiktok"))
    ).status_code == 202
    down = await request(app, "POST", "/webhook", key=fresh, json=make_event("tiktok"))
    assert down.status_code == 503 and down.headers["retry-after"] == "1"
    assert "unavailable" in down.json()["error"]


async def test_the_openapi_document_declares_the_bearer_scheme(
    keys: FakeKeyStore, log: FakeEventLog
) -> None:
    doc = (await request(served(keys, log, required=True), "GET", "/openapi.json")).json()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    webhook = doc["paths"]["/webhook"]["post"]
    assert webhook["security"] == [{"bearer": []}]
    assert {"401", "403"} <= set(webhook["responses"])
    assert doc["paths"]["/reports/events"]["get"]["security"] == [{"bearer": []}]
    assert "security" not in doc["paths"]["/health/ready"]["get"]
    assert "security" not in doc["paths"]["/metrics"]["get"]
