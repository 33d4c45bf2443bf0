"""Signed webhooks through the ASGI front as served: 401s naming the problem with nothing
published, per-event refusals on /webhook, replays, and the order of the checks."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from typing import Any

import httpx
import msgspec
import pytest

from sluice import envelope
from sluice.auth import Authenticator
from sluice.config import Settings
from sluice.http.app import HttpDeps, create_app
from sluice.http.front import WebhookFront, front
from sluice.http.health import Health
from sluice.metrics import Metrics
from sluice.signing import TOLERANCE, Signer
from tests.factories import make_event
from tests.fakes import FakeEventLog, FakeKeyStore

pytestmark = pytest.mark.anyio

FB = "whsec_" + base64.b64encode(b"facebook-secret-0123456789").decode()
FB_NEXT = "whsec_" + base64.b64encode(b"facebook-secret-rotated-01").decode()
TT = "whsec_" + base64.b64encode(b"tiktok-secret-0123456789ab").decode()
SECRETS = (("facebook", FB), ("facebook", FB_NEXT), ("tiktok", TT))


def generic_event() -> dict[str, Any]:
    """A generic product event tagged with its source (for POST /webhook)."""
    return {
        "event_id": f"g-{uuid.uuid4().hex}",
        "source": "generic",
        "account_id": "acc-1",
        "user_id": "u-1",
        "type": "page.view",
        "timestamp": "2026-12-04T10:00:00Z",
        "metadata": {},
    }


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Quart runs on asyncio only


class Served:
    def __init__(self, auth: Authenticator | None = None) -> None:
        self.log = FakeEventLog()
        self.metrics = Metrics()
        settings = Settings(webhook_secrets=SECRETS)
        deps = HttpDeps(settings, self.metrics, Health(), event_log=self.log, auth=auth)
        self.app = front(create_app(deps))
        assert isinstance(self.app, WebhookFront)

    async def post(
        self,
        path: str,
        body: Any,
        *,
        secret: str | None = None,
        at: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        raw = json.dumps(body).encode()
        sent = {"content-type": "application/json", **(headers or {})}
        if secret is not None:
            clock = time.time if at is None else (lambda: at)
            signer = Signer([secret], clock=clock)
            sent |= signer.headers(signer.new_id(), raw)
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sluice") as http:
            return await http.post(path, content=raw, headers=sent)

    def published_ids(self) -> list[str]:
        events = [
            msgspec.json.decode(raw)
            for _source, payload, _id, _headers in self.log.published
            for raw in envelope.decode(payload).events
        ]
        return [event.get("eventId") or event["event_id"] for event in events]

    def duplicates_counted(self, source: str) -> float:
        text = self.metrics.exposition().decode()
        match = re.search(rf'^events_duplicate_total\{{source="{source}"\}} (\S+)$', text, re.M)
        return float(match.group(1)) if match else 0.0


async def test_a_signed_request_to_its_source_is_accepted() -> None:
    served = Served()
    event = make_event("facebook")
    response = await served.post("/webhook/facebook", event, secret=FB)
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    assert served.published_ids() == [event["eventId"]]


async def test_both_secrets_of_a_rotation_are_accepted() -> None:
    served = Served()
    for secret in (FB, FB_NEXT):
        response = await served.post("/webhook/facebook", make_event("facebook"), secret=secret)
        assert response.status_code == 202, response.text
    assert len(served.published_ids()) == 2


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("missing", "missing webhook-id, webhook-timestamp, webhook-signature"),
        ("wrong", "no webhook-signature matches a facebook webhook secret"),
        ("other source's", "no webhook-signature matches a facebook webhook secret"),
        ("old", "webhook-timestamp too old"),
        ("future", "webhook-timestamp too new"),
    ],
)
async def test_a_bad_signature_is_401_naming_the_problem_and_nothing_is_published(
    kind: str, words: str
) -> None:
    served = Served()
    wrong = "whsec_" + base64.b64encode(b"not-a-configured-secret").decode()
    secret, at = {
        "missing": (None, None),
        "wrong": (wrong, None),
        "other source's": (TT, None),
        "old": (FB, time.time() - TOLERANCE - 60),
        "future": (FB, time.time() + TOLERANCE + 60),
    }[kind]
    response = await served.post("/webhook/facebook", make_event("facebook"), secret=secret, at=at)
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"].startswith(words)
    assert served.log.published == []


async def test_a_replay_within_the_tolerance_is_accepted_as_duplicates() -> None:
    served = Served()
    event = make_event("tiktok")
    raw = json.dumps(event).encode()
    signer = Signer([TT])
    headers = {"content-type": "application/json", **signer.headers(signer.new_id(), raw)}
    transport = httpx.ASGITransport(app=served.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sluice") as http:
        first = await http.post("/webhook/tiktok", content=raw, headers=headers)
        replay = await http.post("/webhook/tiktok", content=raw, headers=headers)
    assert first.status_code == 202 and first.json()["accepted"] == 1
    assert replay.status_code == 202, replay.text
    assert replay.json() == {"accepted": 0, "duplicates": 1, "rejected": []}
    assert served.published_ids() == [event["eventId"]]
    assert served.duplicates_counted("tiktok") == 1


async def test_an_unsigned_webhook_request_has_the_protected_sources_events_rejected() -> None:
    served = Served()
    events = [generic_event(), make_event("facebook"), make_event("tiktok")]
    response = await served.post("/webhook", events)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["accepted"] == 1
    assert body["rejected"] == [
        {
            "index": 1,
            "eventId": events[1]["eventId"],
            "error": "source: facebook events must be signed with a facebook webhook secret",
        },
        {
            "index": 2,
            "eventId": events[2]["eventId"],
            "error": "source: tiktok events must be signed with a tiktok webhook secret",
        },
    ]
    assert served.published_ids() == [events[0]["event_id"]]


async def test_a_webhook_request_signed_for_one_source_takes_that_sources_events() -> None:
    served = Served()
    events = [make_event("facebook"), make_event("tiktok")]
    for path in ("/webhook", "/events"):
        response = await served.post(path, events, secret=FB_NEXT)
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["accepted"] + body["duplicates"] == 1
        assert [r["error"] for r in body["rejected"]] == [
            "source: tiktok events must be signed with a tiktok webhook secret"
        ]
    assert served.published_ids() == [events[0]["eventId"]]


async def test_only_protected_events_unsigned_is_422() -> None:
    served = Served()
    response = await served.post("/webhook", [make_event("facebook")])
    assert response.status_code == 422
    assert served.log.published == []


async def test_a_signature_sent_to_webhook_must_verify() -> None:
    served = Served()
    wrong = "whsec_" + base64.b64encode(b"not-a-configured-secret").decode()
    response = await served.post("/webhook", [generic_event()], secret=wrong)
    assert response.status_code == 401
    assert response.json() == {"error": "no webhook-signature matches a configured webhook secret"}
    old = await served.post(
        "/webhook", [generic_event()], secret=FB, at=time.time() - TOLERANCE - 60
    )
    assert old.status_code == 401 and old.json()["error"].startswith("webhook-timestamp too old")
    assert served.log.published == []


async def test_a_source_without_a_secret_is_unaffected() -> None:
    served = Served()
    response = await served.post("/webhook/generic", [generic_event()])
    assert response.status_code == 202, response.text


async def test_the_api_key_is_checked_before_the_signature() -> None:
    keys = FakeKeyStore()
    served = Served(Authenticator(keys, keys.secret, required=True))
    unsigned = await served.post("/webhook/facebook", make_event("facebook"))
    assert unsigned.status_code == 401 and "missing API key" in unsigned.json()["error"]
    key = keys.add("ingest")
    bearer = {"Authorization": f"Bearer {key}"}
    unsigned = await served.post("/webhook/facebook", make_event("facebook"), headers=bearer)
    assert unsigned.status_code == 401 and "webhook-signature" in unsigned.json()["error"]
    signed = await served.post(
        "/webhook/facebook", make_event("facebook"), secret=FB, headers=bearer
    )
    assert signed.status_code == 202, signed.text
    assert len(served.published_ids()) == 1
