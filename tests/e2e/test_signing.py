"""Signed webhooks against a running `sluice run` with SLUICE_WEBHOOK_SECRETS set: each
answer (202, too old, too new, wrong, missing, rotated secret), replays, /webhook with
mixed sources, `sluice publish --sign-secret`, and the secrets kept out of the logs."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
from standardwebhooks import Webhook

from tests.e2e.test_cli import SLUICE, data_dir, finish, start, wait_stored
from tests.factories import make_event

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["data_dir"]  # the fixture, shared with test_cli

OLD = "whsec_" + base64.b64encode(b"e2e-facebook-secret-old-0123").decode()
NEW = "whsec_" + base64.b64encode(b"e2e-facebook-secret-new-4567").decode()
TIKTOK = "whsec_" + base64.b64encode(b"e2e-tiktok-secret-89abcdef01").decode()
WRONG = "whsec_" + base64.b64encode(b"e2e-not-a-configured-secret").decode()
SECRETS = f"facebook={OLD} facebook={NEW},tiktok={TIKTOK}"


def signed_post(
    url: str, body: Any, secret: str | None, *, shift: float = 0.0, msg_id: str | None = None
) -> httpx.Response:
    """POST `body` signed with `secret` (None: unsigned) at now + `shift` seconds."""
    raw = json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    if secret is not None:
        msg_id = msg_id or f"msg_{time.monotonic_ns()}"
        when = datetime.fromtimestamp(int(time.time() + shift), UTC)
        headers |= {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, when, raw),
        }
    return httpx.post(url, content=raw, headers=headers)


def metric(url: str, name: str, labels: str) -> float:
    """The value of `name{labels}` (0 when absent)."""
    text = httpx.get(f"{url}/metrics").text
    found = re.search(rf"^{name}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def stored_total(url: str) -> int:
    total: int = httpx.get(f"{url}/reports/events").json()["total"]
    return total


def test_signed_webhooks_against_a_running_engine(data_dir: Path) -> None:
    running = start(data_dir, SLUICE_WEBHOOK_SECRETS=SECRETS)
    url = running.url
    facebook = f"{url}/webhook/facebook"
    accepted = 0
    try:
        good = signed_post(facebook, make_event("facebook"), NEW)
        assert good.status_code == 202 and good.json()["accepted"] == 1, good.text
        accepted += 1
        rotated = signed_post(facebook, make_event("facebook"), OLD)  # the other secret
        assert rotated.status_code == 202 and rotated.json()["accepted"] == 1, rotated.text
        accepted += 1

        refusals = {
            "too old": signed_post(facebook, make_event("facebook"), NEW, shift=-360),
            "too new": signed_post(facebook, make_event("facebook"), NEW, shift=360),
            "wrong": signed_post(facebook, make_event("facebook"), WRONG),
            "tiktok's": signed_post(facebook, make_event("facebook"), TIKTOK),
            "missing": signed_post(facebook, make_event("facebook"), None),
        }
        errors = {}
        for kind, response in refusals.items():
            assert response.status_code == 401, (kind, response.text)
            errors[kind] = response.json()["error"]
        assert errors["too old"].startswith("webhook-timestamp too old")
        assert errors["too new"].startswith("webhook-timestamp too new")
        assert errors["wrong"] == "no webhook-signature matches a facebook webhook secret"
        assert errors["tiktok's"] == errors["wrong"]
        assert errors["missing"].startswith("missing webhook-id, webhook-timestamp")

        # The same signed request twice: both 2xx, the second all duplicates.
        event = make_event("tiktok")
        first = signed_post(f"{url}/webhook/tiktok", event, TIKTOK, msg_id="msg_replayed")
        assert first.status_code == 202 and first.json()["accepted"] == 1
        accepted += 1
        duplicates_before = metric(url, "events_duplicate_total", 'source="tiktok"')
        replay = signed_post(f"{url}/webhook/tiktok", event, TIKTOK, msg_id="msg_replayed")
        assert replay.status_code == 202, replay.text
        assert replay.json() == {"accepted": 0, "duplicates": 1, "rejected": []}
        assert metric(url, "events_duplicate_total", 'source="tiktok"') == duplicates_before + 1, [
            line for line in httpx.get(f"{url}/metrics").text.splitlines() if "duplicate" in line
        ]

        # /webhook unsigned: the events of the sources with a secret are refused.
        mixed = [make_event("tiktok"), make_event("facebook")]
        answer = signed_post(f"{url}/webhook", mixed, None)
        assert answer.status_code == 422, answer.text
        assert [r["error"] for r in answer.json()["rejected"]] == [
            "source: tiktok events must be signed with a tiktok webhook secret",
            "source: facebook events must be signed with a facebook webhook secret",
        ]
        # ... and signed with facebook's secret, the tiktok one alone.
        answer = signed_post(f"{url}/webhook", mixed, OLD)
        assert answer.status_code == 202 and answer.json()["accepted"] == 1, answer.text
        assert answer.json()["rejected"][0]["index"] == 0
        accepted += 1

        published = subprocess.run(
            [
                *SLUICE,
                "publish",
                "--url",
                f"{url}/webhook",
                "--total",
                "200",
                "--batch",
                "20",
                "--progress",
                "0",
                "--sign-secret",
                NEW,
                "--sign-secret",
                TIKTOK,
                "--json",
                "-",
            ],
            env=os.environ.copy(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert published.returncode == 0, published.stderr
        summary = json.loads(published.stdout[published.stdout.index("{") :])
        assert summary["accepted"] == 200 and summary["rejected"] == 0, summary
        accepted += 200

        assert wait_stored(url, accepted) == accepted
        assert stored_total(url) == accepted  # the replay stored nothing more
        refused = 'reason="source",source="facebook"'  # the unsigned request's one
        assert metric(url, "events_rejected_total", refused) == 1
    finally:
        running.proc.send_signal(signal.SIGTERM)
    assert finish(running) == 0, "".join(running.output)
    output = "".join(running.output)
    assert "signed:   facebook, tiktok (SLUICE_WEBHOOK_SECRETS" in output
    for secret in (OLD, NEW, TIKTOK):
        assert secret.removeprefix("whsec_") not in output  # never logged


def test_sluice_config_masks_the_secrets_and_a_bad_one_stops_start_up(data_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    env |= {"SLUICE_DATA_DIR": str(data_dir), "SLUICE_WEBHOOK_SECRETS": SECRETS}
    shown = subprocess.run([*SLUICE, "config"], env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "facebook=whsec_***" in shown.stdout
    for secret in (OLD, NEW, TIKTOK):
        assert secret.removeprefix("whsec_") not in shown.stdout + shown.stderr
    env["SLUICE_WEBHOOK_SECRETS"] = f"myspace={OLD}"
    bad = subprocess.run([*SLUICE, "run"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0
    assert "SLUICE_WEBHOOK_SECRETS: unknown source 'myspace'" in bad.stdout + bad.stderr
    assert OLD.removeprefix("whsec_") not in bad.stdout + bad.stderr
