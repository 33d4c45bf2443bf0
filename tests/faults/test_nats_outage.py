"""A NATS outage is answered, not hung: a real nats-server of the test's own, paused.

While nats-server is stopped (SIGSTOP, by PID), every webhook request is answered 503
with Retry-After within the publish timeout of its arrival, whether it led a group
commit lane or waited in one; once it is continued, requests are accepted again and
every event that got a 2xx is stored exactly once.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sluice.edges.embedded import EmbeddedNats
from tests.faults.load import SteadyLoad, post_one, wait_for
from tests.ops.test_drain_process import start, stored_counts, wait_all_stored

pytestmark = [pytest.mark.integration, pytest.mark.faults]

PUBLISH_TIMEOUT = 2.0


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[tuple[EmbeddedNats, str]]:
    # A fixed port (free now), so the server restarted after a kill is where it was.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = EmbeddedNats(tmp_path / "nats", port=port, monitor=False)
    url = server.start()
    try:
        yield server, url
    finally:
        if server.pid is not None:
            os.kill(server.pid, signal.SIGCONT)
        server.stop()


def sluice_env(nats_url: str, database_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        "NATS_URL": nats_url,
        "DATABASE_URL": database_url,
        "SLUICE_DATA_DIR": str(tmp_path / "data"),
        "SLUICE_HTTP_PORT": "0",
        "SLUICE_PUBLISH_TIMEOUT": str(PUBLISH_TIMEOUT),
        "SLUICE_ENV": "dev",
        "LOG_LEVEL": "INFO",
    }


def test_a_paused_nats_server_is_answered_503_within_the_publish_timeout(
    nats_server: tuple[EmbeddedNats, str], fresh_database_url: str, tmp_path: Path
) -> None:
    server, nats_url = nats_server
    env = sluice_env(nats_url, fresh_database_url, tmp_path)
    running = start(env)
    accepted: set[str] = set()
    try:
        with ThreadPoolExecutor(16) as pool:
            before = list(pool.map(lambda i: post_one(running.url, f"before-{i}"), range(32)))
            assert {status for status, _, _ in before} == {202}, running.output
            accepted |= {f"before-{i}" for i in range(32)}

            assert server.pid is not None
            os.kill(server.pid, signal.SIGSTOP)
            # 48 concurrent requests: some lead a group-commit lane, most wait in one.
            during = list(pool.map(lambda i: post_one(running.url, f"during-{i}"), range(48)))
            for i, (status, took, retry_after) in enumerate(during):
                if status == 202:  # acked just before the pause took hold
                    accepted.add(f"during-{i}")
                    continue
                assert status == 503, running.output
                assert retry_after is not None
                assert took < PUBLISH_TIMEOUT + 1.5, f"answered after {took:.1f} s"
            assert sum(status == 503 for status, _, _ in during) > 0

            os.kill(server.pid, signal.SIGCONT)
            deadline = time.monotonic() + 30
            n = 0
            while True:  # the client reconnects by itself
                status, _, _ = post_one(running.url, f"after-{n}")
                if status == 202:
                    accepted.add(f"after-{n}")
                    break
                assert time.monotonic() < deadline, running.output
                n += 1
            after = list(pool.map(lambda i: post_one(running.url, f"later-{i}"), range(32)))
            assert {status for status, _, _ in after} == {202}, running.output
            accepted |= {f"later-{i}" for i in range(32)}

        counts = wait_all_stored(fresh_database_url, accepted)
        assert accepted <= set(counts)
        assert all(counts[event_id] == 1 for event_id in accepted)
    finally:
        running.signal(signal.SIGTERM)
        assert running.wait(timeout=60) in (0, 1), running.output
    assert all(count == 1 for count in stored_counts(fresh_database_url).values())


def test_a_killed_nats_server_loses_nothing_that_got_a_2xx(
    nats_server: tuple[EmbeddedNats, str], fresh_database_url: str, tmp_path: Path
) -> None:
    server, nats_url = nats_server
    env = sluice_env(nats_url, fresh_database_url, tmp_path)
    running = start(env)
    try:
        with SteadyLoad(running.url, "kill") as load:
            wait_for(lambda: load.count(202) >= 200, "no 2xx before the kill")
            assert server.pid is not None
            os.kill(server.pid, signal.SIGKILL)  # mid-stream, acked writes on disk
            wait_for(lambda: load.count(503) >= 20, "no 503 while NATS was down")
            before_restart = load.count(202)
            server.start()  # the same data directory and port
            wait_for(
                lambda: load.count(202) >= before_restart + 200,
                f"no 2xx after restart: {load.statuses}",
            )
        assert set(load.statuses) <= {202, 503}, load.statuses
        assert load.slowest < PUBLISH_TIMEOUT + 1.5, f"an answer took {load.slowest:.1f} s"
        counts = wait_all_stored(fresh_database_url, load.accepted)
        missing = load.accepted - set(counts)
        assert not missing, f"{len(missing)} events got a 2xx and were not stored"
        assert all(counts[event_id] == 1 for event_id in load.accepted)
    finally:
        running.signal(signal.SIGTERM)
        assert running.wait(timeout=60) in (0, 1), running.output
