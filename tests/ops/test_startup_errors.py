"""What no restart can fix stops `sluice run` at once: one line naming the cause and
the setting to change, exit 2, no traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sluice.edges.bus import CONNECT_TIMEOUT


def sluice(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "NATS_URL"))}
    full.pop("DATABASE_URL", None)
    full |= {"SLUICE_HTTP_PORT": "0"} | env
    return subprocess.run(
        [sys.executable, "-m", "sluice.cli", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_a_bad_setting_is_one_line_naming_it() -> None:
    run = sluice("run", SLUICE_HTTP_PORT="eighty")
    assert (run.returncode, run.stderr) == (
        2,
        "sluice: invalid configuration: SLUICE_HTTP_PORT='eighty': cannot parse 'eighty'\n",
    )


def test_a_bad_port_option_is_refused_by_the_parser() -> None:
    run = sluice("run", "--port", "70000")
    assert run.returncode == 2 and "--port: '70000' is not a port number" in run.stderr


@pytest.mark.integration
def test_an_unreachable_nats_at_start_is_one_line_naming_nats_url() -> None:
    run = sluice("run", "--role", "ingress", NATS_URL="nats://user:secret@127.0.0.1:1")
    assert run.returncode == 2
    (line,) = run.stderr.splitlines()  # no line per failed attempt
    assert line.startswith(
        "sluice: cannot start: cannot connect to NATS at nats://user:***@127.0.0.1:1"
    )
    assert f"no connection within {CONNECT_TIMEOUT:.0f} s" in line
    assert line.endswith("(check NATS_URL)") and "secret" not in line


def test_version() -> None:
    run = sluice("--version")
    assert run.returncode == 0 and run.stdout.startswith("sluice ")


def test_a_busy_port_stops_before_any_embedded_server_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = sluice("run", SLUICE_HTTP_PORT=str(port), SLUICE_DATA_DIR=str(tmp_path / "data"))
    assert (run.returncode, run.stderr) == (
        2,
        f"sluice: cannot listen on 127.0.0.1:{port}: address already in use "
        "(set SLUICE_HTTP_PORT or --port)\n",
    )
    assert not (tmp_path / "data").exists()
