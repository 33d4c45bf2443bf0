"""What a new user meets outside the happy path: a busy port, `migrate` and `reset`
while sluice runs, `GET /`. One real `sluice run` on its embedded servers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.test_cli import SLUICE, data_dir, finish, start

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration

__all__ = ["data_dir"]  # the fixture, shared with test_cli


def sluice(*args: str, data: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    full |= {"SLUICE_DATA_DIR": str(data)} | env
    return subprocess.run(
        [*SLUICE, *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_busy_port_migrate_and_reset_while_running_then_reset(data_dir: Path) -> None:
    running = start(data_dir)
    try:
        root = httpx.get(f"{running.url}/").json()
        assert root["links"]["docs"]["href"] == "/docs"
        servers = json.loads((data_dir / "servers.json").read_text())
        port = running.url.rsplit(":", 1)[1]

        # The same port again, on the running servers: one line, exit 2, no restarts.
        urls = {"NATS_URL": servers["nats_url"], "DATABASE_URL": servers["database_url"]}
        began = time.monotonic()
        busy = sluice("run", "--port", port, data=data_dir.parent / "other", **urls)
        assert busy.returncode == 2, busy.stderr
        assert time.monotonic() - began < 20
        expected = (
            f"sluice: cannot listen on 127.0.0.1:{port}: address already in use "
            "(set SLUICE_HTTP_PORT or --port)"
        )
        assert busy.stderr.rstrip().splitlines()[-1] == expected
        assert "Traceback" not in busy.stderr and "restart" not in busy.stderr
        quiet = sluice(
            "run", "--port", port, data=data_dir.parent / "other", LOG_LEVEL="WARNING", **urls
        )
        assert (quiet.returncode, quiet.stderr) == (2, expected + "\n")
        # Past the early check (reuse-port skips it): the ingress's FatalError, escalated
        # by the supervisor at once, gives the same line.
        shared = sluice(
            "run", "--port", port, data=data_dir.parent / "other", LOG_LEVEL="WARNING",
            SLUICE_HTTP_REUSE_PORT="1", **urls,
        )  # fmt: skip
        assert (shared.returncode, shared.stderr) == (2, expected + "\n")
        debug = sluice("run", "--debug", "--port", port, data=data_dir.parent / "other", **urls)
        assert debug.returncode == 2 and "Traceback" in debug.stderr
        assert debug.stderr.rstrip().endswith(expected)

        migrate = sluice("migrate", data=data_dir)
        assert migrate.returncode == 2
        assert f"set DATABASE_URL to the database_url in {data_dir / 'servers.json'}" in (
            migrate.stderr
        )
        password = urlsplit(servers["database_url"]).password
        assert password and password not in migrate.stderr  # where it is, not what
        assert "Traceback" not in migrate.stderr and len(migrate.stderr.splitlines()) == 1

        reset = sluice("reset", "--yes", data=data_dir)
        assert reset.returncode == 2 and "stop it first" in reset.stderr
        assert (data_dir / "servers.json").exists()
    finally:
        running.proc.send_signal(signal.SIGTERM)
    assert finish(running) == 0, "".join(running.output)
    # A clean stop, in the dev profile's text lines: nothing to worry a person.
    (signalled,) = [i for i, line in enumerate(running.output) if "received SIGTERM" in line]
    stopping = running.output[signalled:]
    worrying = [line for line in stopping if " WARNING " in line or " ERROR " in line]
    assert worrying == [], worrying
    assert any(" INFO " in line and "stopped (clean)" in line for line in stopping)

    unconfirmed = sluice("reset", data=data_dir)  # no terminal to ask on: nothing deleted
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    assert data_dir.exists()
    reset = sluice("reset", "--yes", data=data_dir)
    assert reset.returncode == 0, reset.stderr
    assert not data_dir.exists()
