"""sluice processes killed with SIGKILL (by PID) mid-stream, under load.

What got a 2xx was in JetStream (fsynced) before it was answered, and nothing is acked
before its commit: a successor, or a surviving worker, writes whatever the dead process
held, once.
"""

from __future__ import annotations

import signal

import pytest

from tests.faults.load import SteadyLoad, wait_for
from tests.ops.test_drain_process import env, start, wait_all_stored

pytestmark = [pytest.mark.integration, pytest.mark.faults]

__all__ = ["env"]  # the fixture, from the drain tests: a stream and a database of its own


def assert_stored_once(database_url: str, accepted: set[str]) -> None:
    counts = wait_all_stored(database_url, accepted)
    missing = accepted - set(counts)
    assert not missing, f"{len(missing)} events got a 2xx and were not stored"
    assert all(counts[event_id] == 1 for event_id in accepted)


def test_kill_9_of_sluice_mid_stream_loses_nothing_that_got_a_2xx(env: dict[str, str]) -> None:
    running = start(env)
    with SteadyLoad(running.url, "k9") as load:
        wait_for(lambda: load.count(202) >= 300, "no 2xx before the kill")
        running.proc.kill()
        running.wait(timeout=10)
    successor = start(env)
    try:
        assert_stored_once(env["DATABASE_URL"], load.accepted)
    finally:
        successor.signal(signal.SIGTERM)
        assert successor.wait(timeout=60) == 0, successor.output


def test_two_workers_share_the_consumers_and_one_is_killed(env: dict[str, str]) -> None:
    ingress = start(env, "--role", "ingress")
    workers = [start(env, "--role", "worker") for _ in range(2)]
    try:
        with SteadyLoad(ingress.url, "w") as load:
            wait_for(lambda: load.count(202) >= 300, "no 2xx before the kill")
            workers[0].proc.kill()
            workers[0].wait(timeout=10)
            taken = load.count(202)
            wait_for(lambda: load.count(202) >= taken + 300, "no 2xx after the kill")
        assert set(load.statuses) == {202}, load.statuses  # ingress never noticed
        assert_stored_once(env["DATABASE_URL"], load.accepted)
    finally:
        if workers[0].proc.poll() is None:  # failed before its kill: none left behind
            workers[0].proc.kill()
            workers[0].wait(timeout=10)
        for process in (ingress, workers[1]):
            process.signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0, process.output
