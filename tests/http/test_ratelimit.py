"""Rate limits on the HTTP routes, through the ASGI front as served, on a fake clock:
the webhook (requests, then events once the body is decoded) and the Quart routes
(requests), per key or per client address; /health/* and /metrics never."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from sluice.auth import Authenticator
from sluice.config import Settings
from sluice.http.app import HttpDeps, create_app
from sluice.http.front import WebhookFront, front
from sluice.http.health import Health
from sluice.metrics import Metrics
from sluice.ratelimit import RateLimiter
from tests.factories import make_event
from tests.fakes import FakeEventLog, FakeKeyStore, post_unread
from tests.http.test_reports import FakeReports
from tests.unit.test_ratelimit import FakeClock

pytestmark = pytest.mark.anyio

HEADERS = ("retry-after", "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Quart runs on asyncio only


class Served:
    def __init__(
        self, *, requests: int = 0, events: int = 0, burst: int = 1, required: bool = False
    ) -> None:
        self.clock = FakeClock()
        self.keys = FakeKeyStore()
        self.log = FakeEventLog()
        self.metrics = Metrics()
        limits = RateLimiter(requests=requests, events=events, burst=burst, clock=self.clock)
        deps = HttpDeps(
            Settings(auth="required" if required else "optional"),
            self.metrics,
            Health(),
            event_log=self.log,
            reports=FakeReports(),  # type: ignore[arg-type]
            auth=Authenticator(self.keys, self.keys.secret, required=required),
            limits=limits,
        )
        self.app = front(create_app(deps))
        assert isinstance(self.app, WebhookFront)

    async def request(
        self,
        method: str,
        path: str,
        *,
        key: str | None = None,
        json: Any = None,
        address: str = "10.0.0.1",
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        transport = httpx.ASGITransport(app=self.app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://sluice") as http:
            return await http.request(method, path, headers=headers, json=json)

    def rate_limited(self) -> dict[str, float]:
        text = self.metrics.exposition().decode()
        found = re.findall(r'^events_rate_limited_total\{source="([^"]+)"\} (\S+)$', text, re.M)
        return {source: float(value) for source, value in found if float(value)}


def assert_429(response: httpx.Response, words: str) -> None:
    assert response.status_code == 429, response.text
    assert words in response.json()["error"], response.json()
    assert response.json()["error"].startswith("rate limit exceeded: ")
    for name in HEADERS:
        assert response.headers[name].isdigit(), name
    assert int(response.headers["retry-after"]) >= 1
    assert re.fullmatch(r"\d+;w=\d+", response.headers["ratelimit-policy"])


async def test_a_key_over_its_requests_per_second_gets_429_until_tokens_come_back() -> None:
    served = Served()
    key = served.keys.add("ingest", rate_requests=2)
    for _ in range(2):
        response = await served.request("POST", "/webhook", key=key, json=make_event("tiktok"))
        assert response.status_code == 202, response.text
    refused = await served.request("POST", "/webhook", key=key, json=make_event("tiktok"))
    assert_429(refused, "2 requests/s (bursts of 2) for API key 'key-1'")
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["ratelimit-limit"] == "2"
    assert refused.headers["ratelimit-remaining"] == "0"
    assert refused.headers["ratelimit-policy"] == "2;w=1"
    assert len(served.log.published) == 2
    # Another key and another address are not held back by it.
    other = served.keys.add("ingest")
    response = await served.request("POST", "/webhook", key=other, json=make_event("tiktok"))
    assert response.status_code == 202
    served.clock.now += int(refused.headers["retry-after"])
    response = await served.request("POST", "/webhook", key=key, json=make_event("tiktok"))
    assert response.status_code == 202, response.text


async def test_a_refused_request_is_answered_before_its_body_is_read() -> None:
    served = Served(requests=1)
    assert (await served.request("POST", "/webhook", json=make_event("tiktok"))).status_code == 202
    start = await post_unread(served.app, "/webhook", ("10.0.0.1", 40000))
    assert start["status"] == 429
    assert (b"ratelimit-limit", b"1") in start["headers"]


async def test_events_take_a_token_each_all_or_none_and_nothing_is_published() -> None:
    served = Served(events=10)
    first = [make_event("tiktok") for _ in range(7)]
    response = await served.request("POST", "/webhook", json=first)
    assert response.status_code == 202 and response.json()["accepted"] == 7
    published = len(served.log.published)
    # 3 tokens left: 2 tiktok, 1 facebook and 1 invalid facebook event do not fit.
    invalid = make_event("facebook", data__user__age="old")
    body = [make_event("tiktok"), make_event("tiktok"), make_event("facebook"), invalid]
    refused = await served.request("POST", "/webhook", json=body)
    assert_429(refused, "4 events in this request, 3 left of 10 events/s (bursts of 10)")
    assert "for address 10.0.0.1" in refused.json()["error"]
    assert refused.headers["ratelimit-remaining"] == "3"
    assert len(served.log.published) == published  # nothing of it
    assert served.rate_limited() == {"tiktok": 2, "facebook": 2}
    # The tokens it did not get are still there: three events pass.
    response = await served.request("POST", "/webhook", json=body[:3])
    assert response.status_code == 202 and response.json()["accepted"] == 3
    served.clock.now += 1
    response = await served.request("POST", "/webhook", json=first)
    assert response.status_code == 202 and response.json()["duplicates"] == 7


async def test_an_array_bigger_than_the_bucket_is_refused_whole() -> None:
    served = Served(events=5, burst=2)
    body = [make_event("tiktok") for _ in range(11)]
    refused = await served.request("POST", "/webhook/tiktok", json=body)
    assert_429(refused, "11 events in one request, more than the 10")
    assert "send smaller arrays" in refused.json()["error"]
    assert refused.headers["ratelimit-policy"] == "10;w=2"
    assert served.log.published == []
    assert served.rate_limited() == {"tiktok": 11}
    response = await served.request("POST", "/webhook/tiktok", json=body[:10])
    assert response.status_code == 202, response.text


async def test_without_a_key_each_client_address_has_its_own_bucket() -> None:
    served = Served(requests=1)
    response = await served.request("POST", "/webhook", json=make_event("facebook"))
    assert response.status_code == 202
    refused = await served.request("POST", "/webhook", json=make_event("facebook"))
    assert_429(refused, "for address 10.0.0.1")
    other = await served.request(
        "POST", "/webhook", json=make_event("facebook"), address="10.0.0.2"
    )
    assert other.status_code == 202
    # A key's own bucket, even from the same address.
    key = served.keys.add("ingest")
    keyed = await served.request("POST", "/webhook", key=key, json=make_event("facebook"))
    assert keyed.status_code == 202


async def test_a_key_with_rate_zero_is_never_limited() -> None:
    served = Served(requests=1, events=1, required=True)
    key = served.keys.add("ingest", rate_requests=0, rate_events=0)
    for _ in range(5):
        body = [make_event("tiktok") for _ in range(50)]
        response = await served.request("POST", "/webhook", key=key, json=body)
        assert response.status_code == 202, response.text


async def test_the_quart_routes_take_a_request_token_health_and_metrics_never() -> None:
    served = Served(requests=1, required=True)
    report = served.keys.add("report", rate_requests=1)
    assert (await served.request("GET", "/reports/events", key=report)).status_code == 200
    refused = await served.request("GET", "/events", key=report)
    assert_429(refused, "1 requests/s (bursts of 1) for API key 'key-1'")
    assert refused.headers["content-type"] == "application/json"
    assert "x-correlation-id" in refused.headers
    for _ in range(5):
        for path in ("/health/live", "/health/ready", "/metrics"):
            response = await served.request("GET", path)
            assert response.status_code == 200, path
    # Public routes are limited per address; a refused key is 401 before any limit.
    assert (await served.request("GET", "/docs")).status_code == 200
    assert_429(await served.request("GET", "/openapi.json"), "for address 10.0.0.1")
    assert (await served.request("GET", "/reports/events")).status_code == 401
    served.clock.now += 1
    assert (await served.request("GET", "/events", key=report)).status_code == 200


async def test_the_dev_profile_limits_nothing() -> None:
    settings = Settings()
    assert (settings.rate_limit_requests, settings.rate_limit_events) == (0, 0)
    served = Served(requests=settings.rate_limit_requests, events=settings.rate_limit_events)
    for _ in range(50):
        body = [make_event("tiktok") for _ in range(20)]
        assert (await served.request("POST", "/webhook", json=body)).status_code == 202
        assert (await served.request("GET", "/reports/events")).status_code == 200
