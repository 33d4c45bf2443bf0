"""Drain with the real process: steady load, SIGTERM mid-stream, restart, count.

The process runs against the session's NATS and PostgreSQL (fixtures), on a stream of
its own, so the test can look at both after the process has gone.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import nats
import pytest

from tests.factories import make_events

pytestmark = pytest.mark.integration

READY = re.compile(r"(?:webhook:\s+POST|health:\s+GET)\s+(http://\S+?)/(?:webhook|health/ready)")


@dataclass
class Process:
    proc: subprocess.Popen[str]
    url: str
    lines: list[str]
    reader: threading.Thread

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self.reader.join(10)
        return code


def start(env: dict[str, str], *args: str) -> Process:
    """`sluice run` with `env`; its output is read all along (it logs every request)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "NATS_URL"))}
    full.pop("DATABASE_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sluice.cli", "run", *args],
        env=full | env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    found: list[str] = []
    announced = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                lines.append(line)
                if not found and (match := READY.search(line)):
                    found.append(match.group(1))
                    announced.set()
        announced.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not announced.wait(60) or not found:
        proc.kill()
        proc.wait()
        raise AssertionError("sluice run did not announce itself:\n" + "".join(lines))
    return Process(proc, found[0], lines, reader)


@dataclass
class Load:
    """Posts batches of fresh events until stopped or the server goes away."""

    url: str
    prefix: str
    batch: int = 25
    max_requests: int = 2000
    accepted: set[str] = field(default_factory=set)  # every event of a 2xx answer
    sent: set[str] = field(default_factory=set)
    refused: int = 0  # 503 while draining
    stop: threading.Event = field(default_factory=threading.Event)
    got_some: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        template = make_events(self.batch, seed=3)
        with httpx.Client(base_url=self.url, timeout=10) as client:
            for n in range(self.max_requests):
                if self.stop.is_set():
                    return
                events = [dict(e, eventId=f"{self.prefix}-{n}-{i}") for i, e in enumerate(template)]
                ids = {e["eventId"] for e in events}
                self.sent |= ids
                try:
                    response = client.post("/webhook", json=events)
                except httpx.TransportError:
                    return  # the server has stopped listening
                if response.status_code == 202:
                    assert response.json()["accepted"] == len(events)
                    self.accepted |= ids
                    if len(self.accepted) >= 10 * self.batch:
                        self.got_some.set()
                elif response.status_code == 503:
                    assert response.headers["Retry-After"]
                    self.refused += 1
                    time.sleep(0.01)
                else:
                    raise AssertionError(f"{response.status_code}: {response.text}")

    def __enter__(self) -> Load:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def stored_counts(database_url: str) -> dict[str, int]:
    async def query() -> dict[str, int]:
        conn = await asyncpg.connect(database_url)
        try:
            found = await conn.fetch("select event_id, count(*) from events group by event_id")
            return {r[0]: r[1] for r in found}
        finally:
            await conn.close()

    return asyncio.run(query())


def consumer_state(nats_url: str, stream: str) -> dict[str, tuple[int, int]]:
    async def query() -> dict[str, tuple[int, int]]:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            state = {}
            for source in ("facebook", "tiktok"):
                info = await js.consumer_info(stream, f"sluice-{source}")
                state[source] = (info.num_pending, info.num_ack_pending)
            return state
        finally:
            await nc.close()

    return asyncio.run(query())


def wait_all_stored(database_url: str, ids: set[str], timeout: float = 60) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        counts = stored_counts(database_url)
        if ids <= set(counts) or time.monotonic() > deadline:
            return counts
        time.sleep(0.2)


@pytest.fixture
def env(
    nats_url: str, fresh_database_url: str, nats_prefix: str, tmp_path: Path
) -> Iterator[dict[str, str]]:
    yield {
        "NATS_URL": nats_url,
        "DATABASE_URL": fresh_database_url,
        "SLUICE_STREAM": f"{nats_prefix}_EVENTS",
        "SLUICE_SUBJECT_PREFIX": nats_prefix,
        "SLUICE_SOURCES": "facebook,tiktok",
        "SLUICE_DATA_DIR": str(tmp_path / "data"),
        "SLUICE_HTTP_PORT": "0",
        "SLUICE_DRAIN_TIMEOUT": "20",
        "SLUICE_ENV": "dev",
        "LOG_LEVEL": "INFO",
    }


def test_sigterm_under_load_writes_every_accepted_event_before_exit(env: dict[str, str]) -> None:
    running = start(env)
    with Load(running.url, "first") as load:
        assert load.got_some.wait(30), running.output
        began = time.monotonic()
        running.signal(signal.SIGTERM)
        code = running.wait(timeout=40)
        took = time.monotonic() - began
    assert code == 0, running.output
    assert took < float(env["SLUICE_DRAIN_TIMEOUT"])
    assert "received SIGTERM: draining" in running.output
    assert "drained (clean)" in running.output

    # Written and acked before the process ended, not merely kept in JetStream.
    counts = stored_counts(env["DATABASE_URL"])
    assert load.accepted <= set(counts), f"{len(load.accepted - set(counts))} accepted, not stored"
    assert set(counts) <= load.sent
    assert consumer_state(env["NATS_URL"], env["SLUICE_STREAM"]) == {
        "facebook": (0, 0),
        "tiktok": (0, 0),
    }

    running = start(env)
    with Load(running.url, "second", max_requests=40) as again:
        again.thread.join(30)
    running.signal(signal.SIGINT)
    assert running.wait(timeout=40) == 0, running.output
    counts = stored_counts(env["DATABASE_URL"])
    accepted = load.accepted | again.accepted
    assert accepted <= set(counts)
    assert all(counts[event_id] == 1 for event_id in accepted)  # exactly once
    assert set(counts) <= load.sent | again.sent


def test_a_second_signal_forces_exit_and_jetstream_keeps_the_rest(env: dict[str, str]) -> None:
    env = env | {"SLUICE_ACK_WAIT": "3"}  # what the forced process held comes back soon
    running = start(env)
    with Load(running.url, "forced") as load:
        assert load.got_some.wait(30), running.output
        running.signal(signal.SIGTERM)
        time.sleep(0.01)  # let the first signal start the drain
        running.signal(signal.SIGTERM)
        code = running.wait(timeout=30)
    assert code in (0, 1), running.output
    assert "forcing exit" in running.output or "drained (clean)" in running.output

    running = start(env)
    try:
        counts = wait_all_stored(env["DATABASE_URL"], load.accepted)
        assert load.accepted <= set(counts), f"lost {len(load.accepted - set(counts))}"
        assert all(counts[event_id] == 1 for event_id in load.accepted)
        assert set(counts) <= load.sent
    finally:
        running.signal(signal.SIGTERM)
        assert running.wait(timeout=40) == 0, running.output


def test_health_and_metrics_answer_while_draining_and_a_hung_request_gets_only_its_share(
    env: dict[str, str],
) -> None:
    env = env | {"SLUICE_DRAIN_TIMEOUT": "10"}
    running = start(env)
    host, port = running.url.removeprefix("http://").rsplit(":", 1)
    # A webhook request whose body never comes: it stays in flight.
    hung = socket.create_connection((host, int(port)))
    hung.sendall(
        b"POST /webhook HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
        b"content-length: 1000\r\n\r\n[{"
    )
    with httpx.Client(base_url=running.url, timeout=5) as http:
        # Served after the hung request's head (accepted first, on the same loop).
        assert http.get("/health/live").status_code == 200
        began = time.monotonic()
        running.signal(signal.SIGTERM)
        # The drain waits on the hung request (intake's share: 4 of 10 s); meanwhile:
        deadline = time.monotonic() + 5
        while (live := http.get("/health/live")).json()["supervisor"] != "draining":
            assert time.monotonic() < deadline, "the drain did not begin"  # signal not seen
        assert live.status_code == 200
        ready = http.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["draining"]["ok"] is False
        assert http.get("/metrics").status_code == 200
        refused = http.post("/webhook", json=make_events(1, seed=3))
        assert refused.status_code == 503 and refused.headers["Retry-After"]
    code = running.wait(timeout=30)
    took = time.monotonic() - began
    hung.close()
    assert code == 0, running.output  # the hung request (nothing accepted) is cut, clean
    assert 4 <= took < 10, running.output
    assert "webhook requests still in flight" in running.output
    assert "drained (clean)" in running.output
