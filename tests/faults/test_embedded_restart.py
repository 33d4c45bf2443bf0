"""The embedded default: a nats-server or PostgreSQL child that dies is started again.

`sluice run` with no URLs runs its own servers; one of them killed (SIGKILL, by the pid
`servers.json` gives) is started again on its data and port by sluice's watchdog, logged,
and the engine goes on: every event that got a 2xx is stored exactly once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.load import SteadyLoad, wait_for
from tests.ops.test_drain_process import start, wait_all_stored

pytestmark = [pytest.mark.integration, pytest.mark.faults]


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Outside pytest's tmp root: PostgreSQL runs as a user of its own (see conftest).
    root = Path(tempfile.mkdtemp(prefix="sluice-watchdog-"))
    try:
        yield root / "data"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def servers(data_dir: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((data_dir / "servers.json").read_text())
    return state


def test_a_killed_embedded_server_is_started_again_and_nothing_is_lost(data_dir: Path) -> None:
    env = {
        "SLUICE_DATA_DIR": str(data_dir),
        "SLUICE_HTTP_PORT": "0",
        "SLUICE_ENV": "dev",
        "LOG_LEVEL": "INFO",
    }
    running = start(env)
    try:
        with SteadyLoad(running.url, "wd") as load:
            for kind in ("nats", "postgres"):
                more_than = load.count(202) + 100
                wait_for(lambda: load.count(202) >= more_than, f"no 2xx before {kind} died")  # noqa: B023
                os.kill(servers(data_dir)[f"{kind}_pid"], signal.SIGKILL)
                wait_for(
                    lambda: f"embedded {kind} started again" in running.output,  # noqa: B023
                    f"{kind} was not started again:\n{running.output[-3000:]}",
                    timeout=60,
                )
            taken = load.count(202)
            wait_for(lambda: load.count(202) >= taken + 100, "no 2xx after the restarts")
        counts = wait_all_stored(servers(data_dir)["database_url"], load.accepted)
        missing = load.accepted - set(counts)
        assert not missing, f"{len(missing)} events got a 2xx and were not stored"
        assert all(counts[event_id] == 1 for event_id in load.accepted)
        assert "exited (killed by signal 9)" in running.output
    finally:
        running.signal(signal.SIGTERM)
        assert running.wait(timeout=60) == 0, running.output[-3000:]
