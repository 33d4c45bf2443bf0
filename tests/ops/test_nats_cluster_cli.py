"""`sluice dev cluster` and `sluice run --nats-cluster 3`, as processes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import nats
import psutil
import pytest

from tests.faults.load import post_one
from tests.ops.test_drain_process import start, wait_all_stored

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

SMALL_STREAMS = {
    "SLUICE_STREAM_MAX_BYTES": str(64 * 2**20),
    "SLUICE_HISTORY_MAX_BYTES": str(64 * 2**20),
}


async def stream_servers(nats_url: str, stream: str) -> set[str]:
    nc = await nats.connect(nats_url.split(","), connect_timeout=5)
    try:
        js = nc.jetstream()
        if not any(info.config.name == stream for info in await js.streams_info()):
            await js.add_stream(name=stream, subjects=["try.>"], num_replicas=3, max_bytes=2**20)
        cluster = (await js.stream_info(stream)).cluster
        return {cluster.leader, *(peer.name for peer in cluster.replicas or ())}
    finally:
        await nc.close()


def clean_env(**env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "NATS_URL"))}
    base.pop("DATABASE_URL", None)
    return base | env


def test_dev_cluster_prints_the_url_runs_three_nodes_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sluice.cli", "dev", "cluster"],
        env=clean_env(SLUICE_DATA_DIR=str(tmp_path / "data")),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if match := re.search(r"export NATS_URL='([^']+)'", line):
                url = match.group(1)
                break
        else:
            raise AssertionError("no NATS_URL printed:\n" + "".join(seen))
        assert len(url.split(",")) == 3
        assert asyncio.run(stream_servers(url, "TRY")) == {"sluice-1", "sluice-2", "sluice-3"}
        state = json.loads((tmp_path / "data" / "servers.json").read_text())
        pids = state["nats_pids"]
        assert len(pids) == 3 and state["nats_url"] == url
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, "".join(seen) + rest
    assert not [
        pid
        for pid in pids
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]


def test_run_with_nats_cluster_3_replicates_the_streams(
    fresh_database_url: str, tmp_path: Path
) -> None:
    env = {
        "DATABASE_URL": fresh_database_url,
        "SLUICE_DATA_DIR": str(tmp_path / "data"),
        "SLUICE_HTTP_PORT": "0",
        "SLUICE_SOURCES": "facebook,tiktok",
        "SLUICE_ENV": "dev",
        **SMALL_STREAMS,
    }
    running = start(env, "--nats-cluster", "3")
    try:
        status, _, _ = post_one(running.url, "in-the-cluster")
        assert status == 202, running.output
        assert set(wait_all_stored(fresh_database_url, {"in-the-cluster"})) == {"in-the-cluster"}
        url = json.loads((tmp_path / "data" / "servers.json").read_text())["nats_url"]
        nodes = {"sluice-1", "sluice-2", "sluice-3"}
        assert asyncio.run(stream_servers(url, "EVENTS")) == nodes
        assert asyncio.run(stream_servers(url, "EVENTS_HISTORY")) == nodes
    finally:
        running.signal(signal.SIGTERM)
        assert running.wait(timeout=60) == 0, running.output


def test_nats_cluster_with_a_nats_url_set_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sluice.cli", "run", "--nats-cluster", "3"],
        env=clean_env(NATS_URL="nats://127.0.0.1:1", SLUICE_DATA_DIR=str(tmp_path / "data")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "NATS_URL is set: unset it to start an embedded NATS cluster" in done.stderr
    assert not (tmp_path / "data").exists()  # nothing started
