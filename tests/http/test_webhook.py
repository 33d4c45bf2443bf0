"""The webhook through its ASGI front (as served), publishing to a recording fake log."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import pytest

from sluice import envelope
from sluice.config import Settings
from sluice.http.app import HttpDeps, create_app
from sluice.http.front import WebhookFront, front
from sluice.http.health import Health
from sluice.http.webhook import correlation_id_from, new_correlation_id
from sluice.metrics import Metrics
from tests.factories import make_event
from tests.fakes import FakeEventLog

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Quart runs on asyncio only


@pytest.fixture
def log() -> FakeEventLog:
    return FakeEventLog()


@pytest.fixture
def health() -> Health:
    return Health()


class LeanClient:
    """Quart's test-client API, through the raw ASGI front that production serves
    (`WebhookFront`, which passes non-webhook requests on to Quart)."""

    def __init__(self, app: Any) -> None:
        self.front = front(app)
        assert isinstance(self.front, WebhookFront)

    async def post(
        self,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> LeanResponse:
        return await self._request("POST", path, json=json, data=data, headers=headers)

    async def get(self, path: str) -> LeanResponse:
        return await self._request("GET", path)

    async def _request(self, method: str, path: str, **kwargs: Any) -> LeanResponse:
        if kwargs.get("data") is not None:
            kwargs["content"] = kwargs.pop("data")
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        transport = httpx.ASGITransport(app=self.front)
        async with httpx.AsyncClient(transport=transport, base_url="http://sluice") as http:
            return LeanResponse(await http.request(method, path, **kwargs))


class LeanResponse:
    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.headers = response.headers
        self._response = response

    async def get_json(self) -> Any:
        return self._response.json()

    async def get_data(self) -> bytes:
        return self._response.content


@pytest.fixture
def client(log: FakeEventLog, health: Health) -> Any:
    """The webhook as the HTTP server serves it: the ASGI front, before Quart."""
    settings = Settings(max_body_bytes=64 * 1024)
    return LeanClient(create_app(HttpDeps(settings, Metrics(), health, event_log=log)))


def published_events(log: FakeEventLog) -> list[dict[str, Any]]:
    events = []
    for _source, payload, _msg_id, _headers in log.published:
        events.extend(msgspec.json.decode(raw) for raw in envelope.decode(payload).events)
    return events


async def post(client: Any, body: Any, **kwargs: Any) -> Any:
    return await client.post("/webhook", json=body, **kwargs)


async def test_a_single_event_is_published_and_acknowledged(client: Any, log: FakeEventLog) -> None:
    event = make_event("facebook", "bottom")
    response = await post(client, event)
    assert response.status_code == 202
    assert await response.get_json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    assert published_events(log) == [event]
    [(source, _payload, msg_id, headers)] = log.published
    assert source == "facebook"
    assert msg_id == envelope.msg_id_for([event["eventId"]])
    assert headers["X-Correlation-ID"] == response.headers["X-Correlation-ID"]


async def test_an_array_becomes_one_envelope_per_source(client: Any, log: FakeEventLog) -> None:
    events = [make_event("facebook"), make_event("tiktok"), make_event("facebook", "bottom")]
    response = await post(client, events)
    assert response.status_code == 202
    assert (await response.get_json())["accepted"] == 3
    assert [source for source, *_ in log.published] == ["facebook", "tiktok"]
    assert published_events(log) == [events[0], events[2], events[1]]


async def test_invalid_events_are_named_and_the_valid_ones_still_accepted(
    client: Any, log: FakeEventLog
) -> None:
    good = make_event("tiktok", "top")
    bad = make_event("facebook", "top", data__user__age="forty")
    response = await post(client, [good, bad])
    assert response.status_code == 202
    body = await response.get_json()
    assert body["accepted"] == 1
    assert body["rejected"] == [
        {"index": 1, "eventId": bad["eventId"], "error": body["rejected"][0]["error"]}
    ]
    assert body["rejected"][0]["error"].startswith("data.user.age:")
    assert published_events(log) == [good]


async def test_nothing_valid_is_422_with_the_same_body(client: Any, log: FakeEventLog) -> None:
    bad = make_event("facebook", "top", eventType="purchase")
    response = await post(client, [bad])
    assert response.status_code == 422
    body = await response.get_json()
    assert body["accepted"] == 0 and body["rejected"][0]["error"].startswith("eventType")
    assert log.published == []


async def test_duplicates_in_a_body_and_resent_envelopes_are_counted(
    client: Any, log: FakeEventLog
) -> None:
    event = make_event("facebook")
    first = await post(client, [event, event])
    assert await first.get_json() == {"accepted": 1, "duplicates": 1, "rejected": []}
    again = await post(client, [event])
    assert again.status_code == 202
    assert await again.get_json() == {"accepted": 0, "duplicates": 1, "rejected": []}
    assert len(log.published) == 1


@pytest.mark.parametrize(
    ("data", "content_type", "status", "phrase"),
    [
        (b"{not json", "application/json", 400, "JSON"),
        (b'"just a string"', "application/json", 400, "object or array"),
        (b"eventId=1", "application/x-www-form-urlencoded", 415, "application/json"),
        (b"{}", "text/plain", 415, "application/json"),
    ],
)
async def test_unusable_bodies_get_a_4xx_naming_the_problem(
    client: Any, log: FakeEventLog, data: bytes, content_type: str, status: int, phrase: str
) -> None:
    response = await client.post("/webhook", data=data, headers={"Content-Type": content_type})
    assert response.status_code == status
    body = await response.get_json()
    assert phrase in body["error"]
    assert log.published == []


async def test_a_body_over_the_limit_is_413(client: Any, log: FakeEventLog) -> None:
    events = [make_event() for _ in range(200)]  # well over the 64 KiB limit of this app
    response = await post(client, events)
    assert response.status_code == 413
    assert "too large" in (await response.get_json())["error"]
    assert log.published == []


async def test_nats_down_is_503_with_retry_after_and_nothing_claimed(
    client: Any, log: FakeEventLog
) -> None:
    log.unavailable = True
    response = await post(client, [make_event()])
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert "error" in await response.get_json()


async def test_draining_refuses_new_events_with_503(
    client: Any, log: FakeEventLog, health: Health
) -> None:
    health.draining = True
    response = await post(client, [make_event()])
    assert response.status_code == 503
    assert "Retry-After" in response.headers
    assert log.published == []


async def test_events_route_and_source_routes(client: Any, log: FakeEventLog) -> None:
    event = make_event("tiktok")
    assert (await client.post("/events", json=event)).status_code == 202
    mismatch = await client.post("/webhook/facebook", json=make_event("tiktok"))
    assert mismatch.status_code == 422
    assert "source" in (await mismatch.get_json())["rejected"][0]["error"]
    assert (await client.post("/webhook/myspace", json=event)).status_code == 404


async def test_an_event_larger_than_a_message_is_rejected_alone(
    client: Any, log: FakeEventLog
) -> None:
    log.max_payload = 4096
    small = make_event()
    huge = make_event(data__user__bio="x" * 5000)  # unknown fields are kept, any length
    response = await post(client, [small, huge])
    body = await response.get_json()
    assert response.status_code == 202
    assert body["accepted"] == 1
    assert body["rejected"][0]["index"] == 1 and "larger than" in body["rejected"][0]["error"]


async def test_big_arrays_are_split_below_max_payload(client: Any, log: FakeEventLog) -> None:
    log.max_payload = 8192
    events = [make_event() for _ in range(40)]
    response = await post(client, events)
    assert (await response.get_json())["accepted"] == 40
    assert len(log.published) > 1
    assert all(len(payload) <= 8192 for _, payload, _, _ in log.published)
    assert published_events(log) == events


async def test_health_and_metrics_answer_json_and_prometheus_text(client: Any) -> None:
    live = await client.get("/health/live")
    assert live.status_code == 200
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert (await ready.get_json())["checks"]["draining"] == {"ok": True}
    await post(client, [make_event("tiktok")])
    metrics = await client.get("/metrics")
    text = (await metrics.get_data()).decode()
    assert 'events_accepted_total{source="tiktok"} 1.0' in text


async def test_rejections_are_counted_under_the_events_own_source(client: Any) -> None:
    bad_age = make_event("facebook", "top", data__user__age="forty")
    bad_source = {**make_event("tiktok"), "source": "myspace"}
    await post(client, [make_event("tiktok"), bad_age, bad_source, 7])
    await client.post("/webhook/tiktok", json=make_event("facebook"))
    text = (await (await client.get("/metrics")).get_data()).decode()
    assert 'events_rejected_total{reason="data.user.age",source="facebook"} 1.0' in text
    assert 'events_rejected_total{reason="source",source="unknown"} 1.0' in text
    assert 'events_rejected_total{reason="event",source="unknown"} 1.0' in text
    # on /webhook/<source> the label is the route's source
    assert 'events_rejected_total{reason="source",source="tiktok"} 1.0' in text
    assert "myspace" not in text


async def test_unknown_routes_answer_json(client: Any) -> None:
    response = await client.get("/nope")
    assert response.status_code == 404
    assert json.loads(await response.get_data())["error"]


async def test_the_correlation_id_is_taken_from_the_request_and_returned(
    client: Any, log: FakeEventLog
) -> None:
    response = await post(client, [make_event()], headers={"X-Correlation-ID": "req-42"})
    assert response.headers["X-Correlation-ID"] == "req-42"
    assert log.published[0][3]["X-Correlation-ID"] == "req-42"
    fresh = await post(client, [make_event()])
    assert len(fresh.headers["X-Correlation-ID"]) == 32


@pytest.mark.parametrize("path", ["/webhook", "/webhook/tiktok"])
async def test_other_methods_on_the_webhook_are_405_with_allow(client: Any, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]
    assert "POST" in (await response.get_json())["error"]


@dataclass
class BackloggedLog(FakeEventLog):
    waiting: int = 0

    async def backlog(self) -> int:
        return self.waiting


async def test_a_backlog_over_the_limit_is_429_with_retry_after() -> None:
    log = BackloggedLog(waiting=5000)
    app = create_app(HttpDeps(Settings(max_backlog=1000), Metrics(), Health(), event_log=log))
    client = LeanClient(app)
    response = await post(client, [make_event()])
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert "behind" in (await response.get_json())["error"]
    assert log.published == []


async def test_the_backlog_is_also_bounded_in_events_at_this_process_s_events_per_message() -> None:
    log = BackloggedLog(waiting=300)  # far below max_backlog's 2,000 messages
    settings = Settings(max_backlog=2000, max_backlog_events=200_000)
    app = create_app(HttpDeps(settings, Metrics(), Health(), event_log=log))
    client = LeanClient(app)
    # Events per message unknown yet: 300 messages count as 300 events.
    big = [make_event() for _ in range(1000)]
    response = await post(client, big)
    assert response.status_code == 202 and len(log.published) == 1  # one message of 1,000
    # Now 300 messages are ~300,000 events: over the events limit.
    response = await post(client, [make_event()])
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    error = (await response.get_json())["error"]
    assert "300 messages" in error and "~300000 events" in error
    assert len(log.published) == 1


def test_generated_correlation_ids_are_distinct_sane_tokens() -> None:
    ids = [new_correlation_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(correlation_id_from(i) == i for i in ids)  # kept as given when sent back
