"""/openapi.json: a valid OpenAPI document that describes what the routes really answer.

The webhook is served by the ASGI front, not by Quart; these tests hold its documented
request body and every documented answer against the front's real answers.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from sluice.config import Settings
from sluice.http.app import HttpDeps, create_app
from sluice.http.health import Health
from sluice.metrics import Metrics
from sluice.ratelimit import RateLimiter
from tests.factories import make_event
from tests.fakes import FakeEventLog
from tests.http.test_reports import FakeReports
from tests.http.test_webhook import LeanClient

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class BackloggedLog(FakeEventLog):
    waiting: int = 0

    async def backlog(self) -> int:
        return self.waiting


def full_app(
    log: FakeEventLog | None = None, limits: RateLimiter | None = None, **settings: Any
) -> Any:
    deps = HttpDeps(
        Settings(**settings),
        Metrics(),
        Health(),
        event_log=log or FakeEventLog(),
        reports=FakeReports(),  # type: ignore[arg-type]
        limits=limits,
    )
    return create_app(deps)


async def document(app: Any) -> dict[str, Any]:
    response = await app.test_client().get("/openapi.json")
    assert response.status_code == 200
    doc: dict[str, Any] = await response.get_json()
    return doc


def schema_validator(doc: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A validator for `schema` whose `#/components/...` references resolve in `doc`."""
    return Draft202012Validator({**schema, "components": doc["components"]})


async def test_the_document_is_valid_openapi_and_covers_every_route() -> None:
    doc = await document(full_app())
    validate(doc)
    assert "docs/events.md" in doc["info"]["description"]  # the event contract
    paths = doc["paths"]
    for path in ("/webhook", "/events", "/webhook/{source}"):
        assert "post" in paths[path], path
    for path in ("/health/live", "/health/ready", "/metrics"):
        assert "get" in paths[path], path
    assert "get" in paths["/events"]  # the event list shares the path with the webhook
    for status in ("202", "422", "400", "413", "415", "429", "503"):
        answer = paths["/webhook"]["post"]["responses"][status]
        assert "X-Correlation-ID" in answer["headers"]
        assert ("Retry-After" in answer["headers"]) == (status in ("429", "503"))
        assert ("RateLimit-Limit" in answer["headers"]) == (status == "429")
    assert "404" in paths["/webhook/{source}"]["post"]["responses"]


async def test_sample_requests_match_the_documented_body() -> None:
    doc = await document(full_app())
    body_schema = doc["paths"]["/webhook"]["post"]["requestBody"]["content"]["application/json"]
    validator = schema_validator(doc, body_schema["schema"])
    generic = {
        "event_id": "g-1",
        "account_id": "a-1",
        "user_id": "u-1",
        "type": "signup",
        "timestamp": "2026-11-23T10:00:00Z",
        "metadata": {"plan": "pro"},
    }
    samples = [
        make_event("facebook", "top"),
        make_event("tiktok", "bottom"),
        [make_event("facebook", "bottom"), make_event("tiktok", "top")],
        [generic],
    ]
    for sample in samples:
        validator.validate(sample)
    assert not validator.is_valid({"eventId": "x"})  # not an event of any source
    assert not validator.is_valid("text")


async def test_every_answer_matches_what_the_document_says() -> None:
    answers: dict[str, tuple[int, Any]] = {}

    async def post(client: LeanClient, name: str, path: str = "/webhook", **kwargs: Any) -> None:
        response = await client.post(path, **kwargs)
        answers[name] = (response.status_code, response)

    client = LeanClient(full_app(max_body_bytes=64 * 1024))
    await post(client, "accepted", json=[make_event(), {"eventId": "bad"}])
    await post(client, "nothing valid", json=[])
    await post(client, "malformed", data=b"{", headers={"Content-Type": "application/json"})
    await post(client, "too large", json=[make_event() for _ in range(200)])
    await post(client, "not json", data=b"x", headers={"Content-Type": "text/plain"})
    await post(client, "unknown source", path="/webhook/myspace", json=[make_event()])
    behind = LeanClient(full_app(BackloggedLog(waiting=10**6)))
    await post(behind, "backlog", json=[make_event()])
    limited = LeanClient(full_app(limits=RateLimiter(requests=0, events=1, burst=1)))
    await post(limited, "rate limited", json=[make_event(), make_event()])
    down = FakeEventLog()
    down.unavailable = True
    await post(LeanClient(full_app(down)), "nats down", json=[make_event()])

    doc = await document(full_app())
    expected = {
        "accepted": 202,
        "nothing valid": 422,
        "malformed": 400,
        "too large": 413,
        "not json": 415,
        "unknown source": 404,
        "backlog": 429,
        "rate limited": 429,
        "nats down": 503,
    }
    for name, status in expected.items():
        got, response = answers[name]
        assert got == status, name
        path = "/webhook/{source}" if name == "unknown source" else "/webhook"
        documented = doc["paths"][path]["post"]["responses"][str(status)]
        schema = documented["content"]["application/json"]["schema"]
        schema_validator(doc, schema).validate(await response.get_json())
        for header, described in documented["headers"].items():
            # RateLimit-* come with a rate limit's 429 only (not the backlog's).
            if described.get("required") or name == "rate limited":
                assert header in response.headers, (name, header)


async def test_the_health_answers_match_what_the_document_says() -> None:
    app = full_app()
    doc = await document(app)
    client = app.test_client()
    for path in ("/health/live", "/health/ready"):
        response = await client.get(path)
        documented = doc["paths"][path]["get"]["responses"][str(response.status_code)]
        schema = documented["content"]["application/json"]["schema"]
        schema_validator(doc, schema).validate(await response.get_json())
    response = await client.get("/metrics")
    assert response.status_code == 200 and "text/plain" in response.content_type


async def test_the_signature_headers_and_their_401_are_documented() -> None:
    secret = "whsec_" + base64.b64encode(b"openapi-test-secret-0123").decode()
    app = full_app(webhook_secrets=(("facebook", secret),))
    doc = await document(app)
    validate(doc)
    for path in ("/webhook", "/events", "/webhook/{source}"):
        operation = doc["paths"][path]["post"]
        headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
        assert {"webhook-id", "webhook-timestamp", "webhook-signature"} <= headers, path
        assert "webhook-timestamp too old" in operation["responses"]["401"]["description"]
    response = await LeanClient(app).post("/webhook/facebook", json=make_event("facebook"))
    assert response.status_code == 401
    documented = doc["paths"]["/webhook/{source}"]["post"]["responses"]["401"]
    schema = documented["content"]["application/json"]["schema"]
    schema_validator(doc, schema).validate(await response.get_json())
    assert "X-Correlation-ID" in response.headers and "X-Correlation-ID" in documented["headers"]
