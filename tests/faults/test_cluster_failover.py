"""sluice on the embedded 3-node NATS cluster, streams on 3 replicas: two ingress
processes sharing one port (SO_REUSEPORT) and two workers under steady load; the node
leading the work stream (found through the JetStream API) and one worker are killed
with SIGKILL, by PID, then both are started again.

Every event that got a 2xx is stored exactly once; no request waits longer than the
publish timeout (and a margin for a loaded machine) while the leader moves; the 503s
of the election are counted and timed (printed; see README "Scaling out").
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path

import nats
import pytest

from sluice.edges.embedded import EmbeddedNatsCluster
from tests.faults.load import SteadyLoad, wait_for
from tests.faults.test_process_kill import assert_stored_once
from tests.ops.test_drain_process import Process, start

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.cluster]

PUBLISH_TIMEOUT = 2.0
MARGIN = 1.5  # connection set-up and scheduling on a shared 2-core machine
STEP = 150  # 2xx answers to see between the steps of the test


async def stream_leader(nats_url: str, stream: str) -> str:
    nc = await nats.connect(nats_url.split(","), connect_timeout=5)
    try:
        return str((await nc.jetstream().stream_info(stream)).cluster.leader)
    finally:
        await nc.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_stream_leader_and_a_worker_killed_under_load_lose_nothing(
    nats_cluster: EmbeddedNatsCluster, fresh_database_url: str, nats_prefix: str, tmp_path: Path
) -> None:
    stream = f"{nats_prefix}_EVENTS"
    common = {
        "NATS_URL": nats_cluster.url,
        "DATABASE_URL": fresh_database_url,
        "SLUICE_STREAM": stream,
        "SLUICE_SUBJECT_PREFIX": nats_prefix,
        "SLUICE_SOURCES": "facebook,tiktok",
        "SLUICE_STREAM_REPLICAS": "3",
        # each node reserves a stream's max bytes on its disk: keep them small here
        "SLUICE_STREAM_MAX_BYTES": str(64 * 2**20),
        "SLUICE_HISTORY_MAX_BYTES": str(64 * 2**20),
        "SLUICE_PUBLISH_TIMEOUT": str(PUBLISH_TIMEOUT),
        "SLUICE_DATA_DIR": str(tmp_path / "data"),
        "SLUICE_DRAIN_TIMEOUT": "20",
        "SLUICE_ENV": "dev",
        "LOG_LEVEL": "WARNING",
    }
    worker_env = common | {"SLUICE_HTTP_PORT": "0"}
    ingress_env = common | {"SLUICE_HTTP_PORT": str(free_port()), "SLUICE_HTTP_REUSE_PORT": "1"}
    running: list[Process] = []
    try:
        workers = [start(worker_env, "--role", "worker") for _ in range(2)]
        running += workers
        ingress = [start(ingress_env, "--role", "ingress") for _ in range(2)]
        running += ingress
        assert ingress[0].url == ingress[1].url

        with SteadyLoad(ingress[0].url, "cl", threads=6) as load:
            wait_for(lambda: load.count(202) >= STEP, "no 2xx before the kill", timeout=60)
            leader = nats_cluster.node(asyncio.run(stream_leader(nats_cluster.url, stream)))
            assert leader.pid is not None
            killed_at = time.monotonic()
            os.kill(leader.pid, signal.SIGKILL)
            workers[0].proc.kill()
            workers[0].wait(timeout=10)
            taken = load.count(202)
            wait_for(lambda: load.count(202) >= taken + STEP, "no 2xx after the kill", 60)

            leader.start()  # on its ports and data: it catches up as a follower
            nats_cluster.wait_healthy(60)
            successor = start(worker_env, "--role", "worker")
            running.append(successor)
            taken = load.count(202)
            wait_for(lambda: load.count(202) >= taken + STEP, "no 2xx after the restart", 60)

        refused = sorted(t for t in load.answered.get(503, []) if t >= killed_at)
        window = refused[-1] - refused[0] if refused else 0.0
        print(
            f"\ncluster failover: {load.count(202)} x 2xx, {load.count(503)} x 503 over "
            f"{window:.2f} s (first {refused[0] - killed_at if refused else 0:.2f} s after "
            f"the kill); slowest answer {load.slowest:.2f} s; statuses {load.statuses}"
        )
        assert set(load.statuses) <= {202, 503}, load.statuses
        assert load.slowest <= PUBLISH_TIMEOUT + MARGIN, load.slowest
        assert_stored_once(fresh_database_url, load.accepted)
    finally:
        for process in running:
            if process.proc.poll() is None:
                process.signal(signal.SIGTERM)
        for process in running:
            code = process.wait(timeout=60)
            assert code in (0, -signal.SIGKILL), process.output  # drained, or killed above
