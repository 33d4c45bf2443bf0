"""Rate limits against a running `sluice run`: a key made with `sluice keys create
--rate-requests 2` gets 429 (with Retry-After and RateLimit-*) and passes again after
Retry-After; an array bigger than a key's event bucket is refused whole and nothing of it
is stored; requests without a key are limited per client address; the counter in
/metrics; /health/* and /metrics are never limited."""

from __future__ import annotations

import json
import re
import signal
import time
from typing import TYPE_CHECKING

import httpx

from tests.e2e.test_cli import data_dir, finish, start
from tests.e2e.test_keys import auth, create, keys
from tests.factories import make_event

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["data_dir"]  # the fixture, shared with test_cli

LIMITED = {
    "SLUICE_ENV": "dev",
    "SLUICE_AUTH": "optional",
    "SLUICE_RATE_LIMIT_REQUESTS": "3",  # per client address without a key, and per key
    "SLUICE_RATE_LIMIT_EVENTS": "1000",
    "SLUICE_RATE_LIMIT_BURST": "1",
}
RATE_HEADERS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "ratelimit-policy")


def until_refused(
    post: httpx.Client, url: str, headers: dict[str, str]
) -> tuple[int, float, httpx.Response]:
    """POST single events until one is refused: (how many passed, seconds it took, the 429)."""
    passed = 0
    started = time.monotonic()
    for _ in range(50):
        response = post.post(url, json=make_event("tiktok"), headers=headers)
        if response.status_code != 202:
            return passed, time.monotonic() - started, response
        passed += 1
    raise AssertionError(f"never refused after {passed} requests")


def stored(http: httpx.Client, url: str, event_id: str, key: str) -> bool:
    response = http.get(f"{url}/events/{event_id}", headers=auth(key))
    assert response.status_code in (200, 404), response.text
    return response.status_code == 200


def test_rate_limits_against_a_running_engine(data_dir: Path) -> None:
    running = start(data_dir, **LIMITED)
    url = running.url
    try:
        two = create(data_dir, "--scope", "ingest", "--name", "two", "--rate-requests", "2")
        ten = create(
            data_dir, "--scope", "ingest", "--name", "ten", "--rate-events", "10",
            "--rate-requests", "0",
        )  # fmt: skip
        reader = create(data_dir, "--scope", "report", "--name", "reader", "--rate-requests", "0")
        assert (two["rate_requests"], two["rate_events"]) == (2, None)
        with httpx.Client(timeout=30) as http:
            # A key of 2 requests/s (burst 1 s): the 3rd quick request is refused.
            passed, took, refused = until_refused(http, f"{url}/webhook", auth(two["key"]))
            assert refused.status_code == 429, refused.text
            assert 2 <= passed <= 2 + 2 * took  # 2 at once, then 2 a second at most
            assert refused.json()["error"].startswith(
                "rate limit exceeded: 2 requests/s (bursts of 2) for API key 'two'"
            )
            retry_after = int(refused.headers["retry-after"])
            assert retry_after >= 1
            assert refused.headers["ratelimit-limit"] == "2"
            assert refused.headers["ratelimit-policy"] == "2;w=1"
            assert all(refused.headers[name] for name in RATE_HEADERS)
            time.sleep(retry_after)  # what Retry-After says, and no more
            again = http.post(f"{url}/webhook", json=make_event("tiktok"), headers=auth(two["key"]))
            assert again.status_code == 202, again.text

            # 10 events/s: an array of 11 never fits; nothing of it is kept.
            eleven = [make_event("tiktok") for _ in range(11)]
            refused = http.post(f"{url}/webhook", json=eleven, headers=auth(ten["key"]))
            assert refused.status_code == 429, refused.text
            assert "11 events in one request, more than the 10" in refused.json()["error"]
            assert refused.headers["ratelimit-limit"] == "10"
            accepted = http.post(f"{url}/webhook", json=eleven[:10], headers=auth(ten["key"]))
            assert accepted.status_code == 202 and accepted.json()["accepted"] == 10
            # The accepted ten are stored (after the refused request): the 11th is not.
            deadline = time.monotonic() + 30
            while not all(stored(http, url, e["eventId"], reader["key"]) for e in eleven[:10]):
                assert time.monotonic() < deadline, "the accepted events were not stored"
                time.sleep(0.2)
            assert not stored(http, url, eleven[10]["eventId"], reader["key"])
            metrics = http.get(f"{url}/metrics").text
            found = re.search(
                r'^events_rate_limited_total\{source="tiktok"\} (\S+)$', metrics, re.M
            )
            assert found is not None and float(found.group(1)) == 11.0

            # Without a key: 3 requests/s per client address, Quart routes included.
            passed, took, refused = until_refused(http, f"{url}/webhook", {})
            assert refused.status_code == 429 and 3 <= passed <= 3 + 3 * took
            assert "3 requests/s (bursts of 3) for address 127.0.0.1" in refused.json()["error"]
            assert all(refused.headers[name] for name in RATE_HEADERS)
            for _ in range(50):  # the reports too (the same bucket, filling meanwhile)
                report = http.get(f"{url}/reports/events")
                if report.status_code != 200:
                    break
            assert report.status_code == 429, report.text
            assert "for address 127.0.0.1" in report.json()["error"]
            for _ in range(10):  # never limited
                for path in ("/health/live", "/health/ready", "/metrics"):
                    assert http.get(f"{url}{path}").status_code == 200, path

        listed = keys(data_dir, "list", "--json")
        assert listed.returncode == 0, listed.stderr
        rates = {
            r["name"]: (r["rate_requests"], r["rate_events"]) for r in json.loads(listed.stdout)
        }
        assert rates == {"two": (2, None), "ten": (0, 10), "reader": (0, None)}
        made = keys(
            data_dir, "create", "--scope", "report", "--name", "five", "--rate-requests", "5"
        )
        assert made.returncode == 0, made.stderr
        assert "; rate limits (requests/s,events/s) 5,-" in made.stdout
        table = keys(data_dir, "list").stdout
        assert re.search(r"\btwo\b.*\b2,-", table) and re.search(r"\bten\b.*unlimited,10", table)
    finally:
        running.proc.send_signal(signal.SIGTERM)
    assert finish(running) == 0, "".join(running.output)


def test_create_refuses_a_bad_rate_before_touching_a_database(tmp_path: Path) -> None:
    for bad in ("-1", "1.5", "many"):
        made = keys(tmp_path / "none", "create", "--scope", "ingest", "--rate-events", bad)
        assert made.returncode == 2, made.stdout
        assert f"--rate-events: {bad!r}: expected a whole number >= 0 (0: no limit)" in made.stderr
    assert not (tmp_path / "none").exists()
