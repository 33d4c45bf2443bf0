"""`sluice publish --sign-secret` and `--api-key`: what goes on the wire, and the real
webhook front taking it."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from typing import Any

import anyio
import pytest
from standardwebhooks import Webhook

from sluice.actors.ingress import Ingress
from sluice.cli import main
from sluice.config import Settings
from sluice.http.app import HttpDeps, create_app
from sluice.http.health import Health
from sluice.metrics import Metrics
from sluice.publish import Publisher, PublishOptions
from tests.fakes import FakeEventLog
from tests.publish.conftest import FakeWebhook

SECRET = "whsec_" + base64.b64encode(b"publisher-secret-0123456789").decode()
NEXT = "whsec_" + base64.b64encode(b"publisher-secret-rotated-89").decode()


def publish(options: PublishOptions) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        return (await Publisher(options, out=io.StringIO()).run()).summary()

    return asyncio.run(go())


def test_each_request_is_signed_with_a_fresh_id_and_the_current_time(
    webhook: FakeWebhook,
) -> None:
    options = PublishOptions(
        webhook.url, batch=5, total=50, concurrency=2, progress=0, sign_secrets=(SECRET,)
    )
    summary = publish(options)
    assert summary["accepted"] == 50 and len(webhook.requests) == 10
    ids = [r.headers["webhook-id"] for r in webhook.requests]
    assert len(set(ids)) == 10
    for request in webhook.requests:
        assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
        Webhook(SECRET).verify(request.body, request.headers, json_parse=False)


def test_a_retry_keeps_its_webhook_id_and_is_signed_again(webhook: FakeWebhook) -> None:
    webhook.script = [(503, {"Retry-After": "0"}, b'{"error":"busy"}')]
    options = PublishOptions(
        webhook.url, batch=5, total=5, concurrency=1, progress=0, sign_secrets=(SECRET,)
    )
    assert publish(options)["accepted"] == 5
    first, retry = webhook.requests
    assert first.body == retry.body
    assert first.headers["webhook-id"] == retry.headers["webhook-id"]
    Webhook(SECRET).verify(retry.body, retry.headers, json_parse=False)


def test_without_a_secret_nothing_is_signed(webhook: FakeWebhook) -> None:
    publish(PublishOptions(webhook.url, batch=5, total=5, concurrency=1, progress=0))
    assert "webhook-signature" not in webhook.requests[0].headers


def test_the_cli_signs_with_each_secret_and_sends_the_api_key(
    webhook: FakeWebhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLUICE_API_KEY", "slk_from_env")
    argv = ["publish", "--url", webhook.url, "--total", "3", "--batch", "3", "--progress", "0"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--sign-secret", SECRET, "--sign-secret", NEXT])
    assert exit_info.value.code == 0
    [request] = webhook.requests
    assert request.headers["authorization"] == "Bearer slk_from_env"
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (SECRET, NEXT):
        Webhook(secret).verify(request.body, request.headers, json_parse=False)
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--api-key", "slk_flag"])
    assert exit_info.value.code == 0
    assert webhook.requests[-1].headers["authorization"] == "Bearer slk_flag"


def test_the_cli_refuses_a_secret_not_in_whsec_form(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["publish", "--sign-secret", "hunter2", "--total", "1"])
    assert exit_info.value.code == 2
    assert "expected whsec_ followed by base64" in capsys.readouterr().err


def test_the_real_webhook_takes_what_the_publisher_signs() -> None:
    """Hypercorn and the webhook front with facebook and tiktok signed-only."""
    log = FakeEventLog()
    secrets = (("facebook", SECRET), ("tiktok", SECRET))
    settings = Settings(http_port=0, webhook_secrets=secrets)
    app = create_app(HttpDeps(settings, Metrics(), Health(), event_log=log))

    async def go(sign: tuple[str, ...]) -> dict[str, Any]:
        ingress = Ingress(app, host="127.0.0.1", port=0, graceful_timeout=5)
        async with anyio.create_task_group() as tg:
            await tg.start(ingress.run)
            assert ingress.bound is not None
            url = f"http://127.0.0.1:{ingress.bound[1]}/webhook"
            options = PublishOptions(
                url, batch=20, total=200, concurrency=4, progress=0, sign_secrets=sign
            )
            stats = await Publisher(options).run()
            ingress.request_stop()
        return stats.summary()

    signed = anyio.run(go, (SECRET,), backend="asyncio")
    assert signed["accepted"] == 200 and signed["rejected"] == 0 and signed["failed"] == 0
    unsigned = anyio.run(go, (), backend="asyncio")
    assert unsigned["accepted"] == 0 and unsigned["rejected"] == 200
