"""`sluice publish`: its bodies, its client loop against loopback servers, its CLI."""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from sluice import envelope
from sluice.actors.ingress import Ingress
from sluice.cli import main
from sluice.config import Settings
from sluice.http.app import HttpDeps, create_app
from sluice.http.health import Health
from sluice.metrics import Metrics
from sluice.publish import (
    Publisher,
    PublishOptions,
    format_summary,
    percentile,
    retry_after_seconds,
)
from sluice.publish.bodies import BodyMaker
from sluice.sources import validate_body
from tests.fakes import FakeEventLog
from tests.publish.conftest import FakeWebhook


def events_in(body: bytes) -> list[dict[str, Any]]:
    value = msgspec.json.decode(body)
    return value if isinstance(value, list) else [value]


# --------------------------------------------------------------------------- bodies


def test_bodies_are_valid_realistic_events_with_unique_ids() -> None:
    maker = BodyMaker(seed=3)
    batches = [maker.make(100) for _ in range(20)]
    ids = [e["eventId"] for b in batches for e in events_in(b.body)]
    assert len(ids) == len(set(ids)) == 2000
    for batch in batches:
        validated = validate_body(batch.body)
        assert validated.accepted == 100 and not validated.rejected
    kinds = {(e["source"], e["eventType"]) for b in batches for e in events_in(b.body)}
    assert len(kinds) == 14  # every type of both sources


def test_batch_of_one_is_a_bare_object_unless_an_array_is_asked_for() -> None:
    maker = BodyMaker(seed=1)
    assert maker.make(1, bare=True).body.startswith(b"{")
    assert maker.make(1).body.startswith(b"[")


def test_invalid_and_duplicate_ratios_are_respected() -> None:
    maker = BodyMaker(duplicates=0.1, invalid=0.2, seed=5)
    first = maker.make(1000)
    assert first.duplicates == 0  # nothing acknowledged yet to re-send
    maker.acknowledged(first)
    batch = maker.make(1000)
    assert 50 < batch.duplicates < 150 and 130 < batch.invalid < 270
    validated = validate_body(batch.body)
    assert len(validated.rejected) == batch.invalid
    sent_before = {e["eventId"]: e for e in events_in(first.body)}
    resent = [e for e in events_in(batch.body) if e["eventId"] in sent_before]
    assert len(resent) == batch.duplicates
    assert all(e == sent_before[e["eventId"]] for e in resent)  # exact re-sends
    assert batch.fresh_valid == 1000 - batch.duplicates - batch.invalid


def test_ratios_must_leave_room_for_valid_events() -> None:
    with pytest.raises(ValueError):
        BodyMaker(duplicates=0.5, invalid=0.5)


# --------------------------------------------------------------------------- helpers


def test_retry_after_is_read_as_seconds_or_a_date() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    delay = retry_after_seconds(date)
    assert delay is not None and 25 < delay <= 31


def test_percentiles_are_nearest_rank() -> None:
    values = sorted(float(i) for i in range(1, 101))
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([], 50) is None


# --------------------------------------------------------------------------- the loop


def publish(options: PublishOptions) -> dict[str, Any]:
    out = io.StringIO()

    async def go() -> dict[str, Any]:
        return (await Publisher(options, out=out).run()).summary()

    return asyncio.run(go())


def test_sends_the_total_in_batches_and_reports_latency(webhook: FakeWebhook) -> None:
    summary = publish(PublishOptions(webhook.url, batch=30, total=200, concurrency=3, progress=0))
    assert summary["sent"] == summary["accepted"] == summary["expected_stored"] == 200
    assert summary["requests"] == len(webhook.requests) == 7  # 6 x 30 + 20
    assert sorted(len(events_in(r.body)) for r in webhook.requests) == [20] + [30] * 6
    assert all(r.headers["content-type"] == "application/json" for r in webhook.requests)
    assert summary["latency_ms"]["p50"] is not None
    assert summary["statuses"] == {"202": 7}
    assert "accepted 200" in format_summary(summary)


def test_batch_one_sends_bare_objects(webhook: FakeWebhook) -> None:
    publish(PublishOptions(webhook.url, batch=1, total=5, concurrency=1, progress=0))
    assert [r.body[:1] for r in webhook.requests] == [b"{"] * 5


def test_429_and_503_are_retried_after_retry_after(webhook: FakeWebhook) -> None:
    webhook.script = [
        (503, {"Retry-After": "0"}, b'{"error":"busy"}'),
        (429, {"Retry-After": "0"}, b'{"error":"slow down"}'),
        (429, {}, b'{"error":"no header"}'),  # waits the default 1 s
    ]
    summary = publish(PublishOptions(webhook.url, batch=10, total=10, concurrency=1, progress=0))
    assert summary["throttled"] == 3 and summary["throttled_without_retry_after"] == 1
    assert summary["accepted"] == 10 and summary["failed"] == 0
    bodies = {r.body for r in webhook.requests}
    assert len(webhook.requests) == 4 and len(bodies) == 1  # the same body each time


def test_gives_up_after_max_retries_and_counts_the_events_failed(webhook: FakeWebhook) -> None:
    webhook.script = [(503, {"Retry-After": "0"}, b"{}")] * 3
    options = PublishOptions(
        webhook.url, batch=5, total=5, concurrency=1, max_retries=2, progress=0
    )
    summary = publish(options)
    assert summary["failed"] == 5 and summary["accepted"] == 0
    assert summary["expected_stored"] == 0


def test_a_connection_the_server_closes_is_reopened(webhook: FakeWebhook) -> None:
    webhook.close_after = 1
    summary = publish(PublishOptions(webhook.url, batch=10, total=50, concurrency=1, progress=0))
    assert summary["accepted"] == 50 and summary["connection_errors"] == 0


def test_rate_paces_the_requests(webhook: FakeWebhook) -> None:
    started = time.perf_counter()
    summary = publish(
        PublishOptions(webhook.url, batch=10, total=100, rate=500, concurrency=4, progress=0)
    )
    assert summary["sent"] == 100
    assert time.perf_counter() - started >= 0.17  # 100 events at 500/s: ~0.2 s


def test_duration_ends_the_run(webhook: FakeWebhook) -> None:
    started = time.perf_counter()
    summary = publish(
        PublishOptions(webhook.url, batch=10, rate=200, duration=0.3, concurrency=2, progress=0)
    )
    assert 0.25 <= time.perf_counter() - started < 2
    assert 0 < summary["sent"] <= 80


def test_progress_lines_are_printed(webhook: FakeWebhook) -> None:
    out = io.StringIO()

    async def go() -> None:
        options = PublishOptions(
            webhook.url, batch=10, rate=400, total=200, concurrency=2, progress=0.1
        )
        publisher = Publisher(options, out=out)
        publisher._progress_min = 0.1  # not a tty: allow fast lines in the test
        await publisher.run()

    asyncio.run(go())
    assert "events/s" in out.getvalue() and "sent" in out.getvalue()


# --------------------------------------------------------------------------- real webhook


def test_against_the_real_webhook_counts_match_what_was_published() -> None:
    """The real HTTP stack (Hypercorn, the webhook front, Quart) over loopback."""
    log = FakeEventLog()
    settings = Settings(http_port=0)
    app = create_app(HttpDeps(settings, Metrics(), Health(), event_log=log))

    async def go() -> dict[str, Any]:
        ingress = Ingress(app, host="127.0.0.1", port=0, graceful_timeout=5)
        async with anyio.create_task_group() as tg:
            await tg.start(ingress.run)
            assert ingress.bound is not None
            url = f"http://127.0.0.1:{ingress.bound[1]}/webhook"
            options = PublishOptions(
                url, batch=50, total=1000, concurrency=4, duplicates=0.1, invalid=0.05, progress=0
            )
            stats = await Publisher(options).run()
            ingress.request_stop()
        return stats.summary()

    summary = anyio.run(go, backend="asyncio")
    published = {
        e["eventId"]
        for _source, payload, _id, _headers in log.published
        for e in map(msgspec.json.decode, envelope.decode(payload).events)
    }
    assert summary["sent"] == 1000 and summary["failed"] == 0
    assert summary["rejected"] == summary["sent_invalid"] > 0
    assert summary["sent_duplicates"] > 0
    assert summary["expected_stored"] == len(published)
    assert summary["accepted"] + summary["duplicates"] + summary["rejected"] == 1000


# --------------------------------------------------------------------------- CLI


def test_the_cli_sends_and_writes_a_json_summary(
    webhook: FakeWebhook, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "summary.json"
    argv = ["publish", "--url", webhook.url, "--total", "25", "--batch", "10"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--progress", "0", "--json", str(out)])
    assert exit_info.value.code == 0
    summary = json.loads(out.read_text())
    assert summary["sent"] == summary["accepted"] == 25
    printed = capsys.readouterr().out
    assert "sent 25 events" in printed and "p99" in printed


def test_the_cli_url_defaults_to_event_endpoint(
    webhook: FakeWebhook, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EVENT_ENDPOINT", webhook.url)
    with pytest.raises(SystemExit) as exit_info:
        main(["publish", "--total", "3", "--batch", "1", "--progress", "0"])
    assert exit_info.value.code == 0
    assert len(webhook.requests) == 3


def test_the_cli_refuses_bad_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["publish", "--duplicates", "0.6", "--invalid", "0.5", "--total", "1"])
    assert exit_info.value.code == 2
