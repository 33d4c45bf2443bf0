"""`sluice run` as a user runs it: a real process on its embedded servers."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import psutil
import pytest

from tests.factories import make_events

pytestmark = pytest.mark.integration

SLUICE = [sys.executable, "-m", "sluice.cli"]
READY_LINE = re.compile(r"webhook:\s+POST (http://\S+)/webhook")


class Running:
    def __init__(self, proc: subprocess.Popen[str], url: str, output: list[str]) -> None:
        self.proc = proc
        self.url = url
        self.output = output


def start(data_dir: Path, timeout: float = 90, **extra_env: str) -> Running:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")} | {
        "SLUICE_DATA_DIR": str(data_dir),
        "SLUICE_HTTP_PORT": "0",
        "LOG_LEVEL": "INFO",
    }
    env |= extra_env
    proc = subprocess.Popen(
        [*SLUICE, "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    for line in proc.stdout:
        output.append(line)
        if match := READY_LINE.search(line):
            return Running(proc, match.group(1), output)
        if time.monotonic() > deadline:
            break
    proc.kill()
    proc.wait()
    proc.stdout.close()
    raise AssertionError("sluice run did not announce itself:\n" + "".join(output))


def finish(running: Running, timeout: float = 60) -> int:
    assert running.proc.stdout is not None
    with running.proc.stdout:
        running.output.extend(running.proc.stdout)
    return running.proc.wait(timeout)


def servers_of(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.info["name"] in ("nats-server", "postgres") and str(data_dir) in cmdline:
            found.append(proc)
    return found


def wait_stored(url: str, expected: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    processed = 0
    while time.monotonic() < deadline:
        text = httpx.get(f"{url}/metrics").text
        processed = sum(
            int(float(value))
            for value in re.findall(r"^events_processed_total\{[^}]*\} (\S+)$", text, re.M)
        )
        if processed >= expected:
            break
        time.sleep(0.1)
    return processed


def wait_for_rows(database_url: str, expected: int, timeout: float = 30) -> list[str]:
    async def ids() -> list[str]:
        conn = await asyncpg.connect(database_url)
        try:
            return [r[0] for r in await conn.fetch("select event_id from events")]
        finally:
            await conn.close()

    deadline = time.monotonic() + timeout
    while len(found := asyncio.run(ids())) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"
    for proc in servers_of(tmp_path / "data"):
        proc.kill()


def test_run_serves_drains_on_sigterm_and_keeps_data_across_restarts(data_dir: Path) -> None:
    events = make_events(50, seed=5)
    running = start(data_dir)
    try:
        assert httpx.get(f"{running.url}/health/ready").status_code == 200
        response = httpx.post(f"{running.url}/webhook", json=events)
        assert response.status_code == 202
        assert response.json()["accepted"] == 50
        assert wait_stored(running.url, 50) == 50
    finally:
        running.proc.send_signal(signal.SIGTERM)
    assert finish(running) == 0, "".join(running.output)
    assert servers_of(data_dir) == [], "embedded servers outlived sluice"
    # The embedded database's password: in its owner-only file, never in the output.
    password = (data_dir / "postgres" / "password").read_text().strip()
    assert password and password not in "".join(running.output)
    assert "postgres:***@" in "".join(running.output)  # its URL is logged, masked

    running = start(data_dir)
    try:
        # Same events again: all recognised as already stored, nothing new written.
        response = httpx.post(f"{running.url}/webhook", json=events)
        assert response.status_code == 202
        body = response.json()
        assert body["accepted"] + body["duplicates"] == 50
        more = make_events(60, seed=6)[50:]
        assert httpx.post(f"{running.url}/webhook", json=more).json()["accepted"] == 10
        assert wait_stored(running.url, 10) == 10
    finally:
        running.proc.send_signal(signal.SIGINT)
    assert finish(running) == 0, "".join(running.output)


def test_the_next_start_recovers_after_kill_9(data_dir: Path) -> None:
    # A short ack wait: what the killed process had fetched comes back after it.
    running = start(data_dir, SLUICE_ACK_WAIT="3")
    events = make_events(20, seed=9)
    assert httpx.post(f"{running.url}/webhook", json=events).status_code == 202
    running.proc.kill()
    finish(running)

    running = start(data_dir, SLUICE_ACK_WAIT="3")
    try:
        assert httpx.get(f"{running.url}/health/ready").status_code == 200
        # Whatever the killed process had not written was still in JetStream.
        database_url = json.loads((data_dir / "servers.json").read_text())["database_url"]
        assert sorted(wait_for_rows(database_url, 20)) == sorted(e["eventId"] for e in events)
        again = httpx.post(f"{running.url}/webhook", json=events).json()
        assert again["accepted"] + again["duplicates"] == 20
    finally:
        running.proc.send_signal(signal.SIGTERM)
    assert finish(running) == 0, "".join(running.output)
    assert servers_of(data_dir) == []
