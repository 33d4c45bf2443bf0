"""API keys against a running `sluice run` (prod profile, keys required), made with
`sluice keys`: 401, 403, a key limited to tiktok, revocation within the cache TTL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any

import httpx

from tests.e2e.test_cli import SLUICE, data_dir, finish, start
from tests.factories import make_event

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["data_dir"]  # the fixture, shared with test_cli

PROD_LIKE = {
    "SLUICE_ENV": "prod",
    "SLUICE_AUTH": "required",
    "SLUICE_HTTP_HOST": "127.0.0.1",
    "SLUICE_KEY_CACHE_TTL": "1",
    "SLUICE_WRITERS": "2",
    "SLUICE_STREAM_REPLICAS": "1",  # prod's 3 needs a NATS cluster; the embedded one is one node
}


def keys(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    env |= PROD_LIKE | {"SLUICE_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [*SLUICE, "keys", *args], env=env, capture_output=True, text=True, timeout=60
    )


def create(data_dir: Path, *args: str) -> dict[str, Any]:
    made = keys(data_dir, "create", "--json", *args)
    assert made.returncode == 0, made.stderr
    created: dict[str, Any] = json.loads(made.stdout)
    return created


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_keys_against_a_running_engine(data_dir: Path) -> None:
    running = start(data_dir, **PROD_LIKE)
    url = running.url
    try:
        assert httpx.get(f"{url}/health/ready").status_code == 200  # public
        missing = httpx.post(f"{url}/webhook", json=make_event("tiktok"))
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert "missing API key" in missing.json()["error"]
        assert httpx.get(f"{url}/reports/events").status_code == 401

        ingest = create(data_dir, "--scope", "ingest", "--name", "publisher")
        report = create(data_dir, "--scope", "report")
        tiktok = create(data_dir, "--scope", "ingest", "--source", "tiktok", "--name", "tt")
        assert ingest["key"].startswith("slk_") and tiktok["sources"] == ["tiktok"]

        unknown = httpx.post(f"{url}/webhook", json=make_event("tiktok"), headers=auth("slk_x"))
        assert unknown.status_code == 401
        accepted = httpx.post(
            f"{url}/webhook", json=make_event("facebook"), headers=auth(ingest["key"])
        )
        assert accepted.status_code == 202 and accepted.json()["accepted"] == 1
        forbidden = httpx.post(
            f"{url}/webhook", json=make_event("facebook"), headers=auth(report["key"])
        )
        assert forbidden.status_code == 403
        assert forbidden.json() == {"error": "this API key lacks the ingest scope"}
        assert httpx.get(f"{url}/reports/events", headers=auth(ingest["key"])).status_code == 403
        assert httpx.get(f"{url}/reports/events", headers=auth(report["key"])).status_code == 200

        body = [make_event("tiktok"), make_event("facebook")]
        mixed = httpx.post(f"{url}/webhook", json=body, headers=auth(tiktok["key"]))
        assert mixed.status_code == 202 and mixed.json()["accepted"] == 1
        (rejected,) = mixed.json()["rejected"]
        assert rejected == {
            "index": 1,
            "eventId": body[1]["eventId"],
            "error": "source: this API key may not send facebook events",
        }
        routed = httpx.post(
            f"{url}/webhook/facebook", json=make_event("facebook"), headers=auth(tiktok["key"])
        )
        assert routed.status_code == 403

        listed = keys(data_dir, "list", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = {row["name"]: row for row in json.loads(listed.stdout)}
        assert rows["publisher"]["last_used_at"] is not None
        assert ingest["key"] not in listed.stdout and "key_hash" not in listed.stdout
        table = keys(data_dir, "list")
        assert "publisher" in table.stdout and ingest["key"] not in table.stdout

        revoked = keys(data_dir, "revoke", "publisher")
        assert revoked.returncode == 0, revoked.stderr
        deadline = time.monotonic() + 10  # the TTL is 1 s
        status = 202
        while status != 401 and time.monotonic() < deadline:
            status = httpx.post(
                f"{url}/webhook", json=make_event("tiktok"), headers=auth(ingest["key"])
            ).status_code
            time.sleep(0.2)
        assert status == 401
        assert keys(data_dir, "revoke", "no-such-key").returncode == 1
    finally:
        running.proc.send_signal(signal.SIGTERM)
    assert finish(running) == 0, "".join(running.output)
    output = "".join(running.output)
    for made in (ingest, report, tiktok):
        assert made["key"] not in output  # never logged


def test_create_refuses_a_bad_source_or_name_before_touching_a_database(tmp_path: Path) -> None:
    bad_source = keys(tmp_path / "none", "create", "--scope", "ingest", "--source", "myspace")
    assert bad_source.returncode == 2
    assert "--source 'myspace': unknown source; expected one of" in bad_source.stderr
    digits = keys(tmp_path / "none", "create", "--scope", "ingest", "--name", "42")
    assert digits.returncode == 2 and "--name '42'" in digits.stderr
    bad_scope = keys(tmp_path / "none", "create", "--scope", "root")
    assert bad_scope.returncode == 2 and "invalid choice: 'root'" in bad_scope.stderr
    assert not (tmp_path / "none").exists()
