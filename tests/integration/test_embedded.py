"""Embedded nats-server and PostgreSQL: start, persist across restarts, recover after kill -9."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import nats
import psutil
import pytest
from nats.js.api import StorageType

from sluice.edges.embedded import (
    EmbeddedError,
    EmbeddedNats,
    EmbeddedPostgres,
    EmbeddedServers,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


# --- helpers -------------------------------------------------------------------------


async def _write(nats_url: str, database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("select 1") == 1
        await conn.execute("create table kept (v text)")
        await conn.execute("insert into kept values ('row-1')")
    finally:
        await conn.close()
    nc = await nats.connect(nats_url, allow_reconnect=False)
    try:
        js = nc.jetstream()
        await js.account_info()
        await js.add_stream(name="KEPT", subjects=["kept.>"], storage=StorageType.FILE)
        ack = await js.publish("kept.one", b"message-1")
        assert (ack.stream, ack.seq) == ("KEPT", 1)
    finally:
        await nc.close()


async def _read(nats_url: str, database_url: str) -> tuple[list[str], bytes | None]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = [r["v"] for r in await conn.fetch("select v from kept")]
    finally:
        await conn.close()
    nc = await nats.connect(nats_url, allow_reconnect=False)
    try:
        msg = await nc.jetstream().get_msg("KEPT", 1)
    finally:
        await nc.close()
    return rows, msg.data


def _processes_on(data_dir: Path) -> list[int]:
    """Live (non-zombie) processes whose command line or cwd references data_dir."""
    marker = str(data_dir.resolve())
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if any(marker in arg for arg in proc.cmdline()) or proc.cwd().startswith(marker):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_until(predicate: object, timeout: float = 15.0) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


_CRASHING_SLUICE = """
import json, os, sys
from pathlib import Path
from sluice.edges.embedded import EmbeddedServers
servers = EmbeddedServers(Path(sys.argv[1]), die_with_parent=sys.argv[2] == "1")
servers.start()
print(json.dumps(list(servers.pids())), flush=True)
os.kill(os.getpid(), 9)
"""


@pytest.fixture
def pg_tmp_path() -> Iterator[Path]:
    """A temporary directory for tests that run PostgreSQL, outside pytest's temporary
    root: pytest makes that owner-only whenever a test session starts, which locks out
    PostgreSQL (it runs as a user of its own under root) when two sessions share a machine."""
    path = Path(tempfile.mkdtemp(prefix="sluice-test-embedded-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --- tests ---------------------------------------------------------------------------


def test_data_survives_restart_and_kill_9(pg_tmp_path: Path) -> None:
    data_dir = pg_tmp_path / "sluice"
    servers = EmbeddedServers(data_dir, nats_port=0, postgres_port=0)
    with servers as (nats_url, database_url):
        assert database_url.endswith("/sluice")
        first_urls = (nats_url, database_url)
        pids = list(servers.pids())
        assert len(pids) == 2
        conf = (data_dir / "nats" / "nats.conf").read_text()
        assert "sync_interval: always" in conf
        assert servers.nats.monitor_url
        asyncio.run(_write(nats_url, database_url))
    assert all(_gone(pid) for pid in pids)
    assert json.loads((data_dir / "servers.json").read_text())["nats_url"] == nats_url
    # It holds the database's password: its owner's alone.
    assert stat.S_IMODE((data_dir / "servers.json").stat().st_mode) == 0o600

    # Plain restart: same ports (remembered), data still there.
    with EmbeddedServers(data_dir) as urls:
        assert urls == first_urls
        assert asyncio.run(_read(*urls)) == (["row-1"], b"message-1")

    # kill -9 of the process that started them: PR_SET_PDEATHSIG takes the servers down.
    out = subprocess.run(
        [sys.executable, "-c", _CRASHING_SLUICE, str(data_dir), "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == -9, out.stderr
    crashed = json.loads(out.stdout)
    assert len(crashed) == 2
    assert _wait_until(lambda: all(_gone(pid) for pid in crashed))

    with EmbeddedServers(data_dir) as urls:
        assert asyncio.run(_read(*urls)) == (["row-1"], b"message-1")
    assert _processes_on(data_dir) == []


def test_recovers_from_leftover_servers_of_a_dead_sluice(pg_tmp_path: Path) -> None:
    data_dir = pg_tmp_path / "sluice"
    with EmbeddedServers(data_dir, nats_port=0, postgres_port=0) as urls:
        asyncio.run(_write(*urls))

    # Without the death signal the servers outlive the killed parent: leftovers.
    out = subprocess.run(
        [sys.executable, "-c", _CRASHING_SLUICE, str(data_dir), "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == -9, out.stderr
    leftovers = json.loads(out.stdout)
    assert not any(_gone(pid) for pid in leftovers)

    servers = EmbeddedServers(data_dir)
    with servers as urls:
        assert all(_gone(pid) for pid in leftovers)
        assert not set(leftovers) & set(servers.pids())
        assert asyncio.run(_read(*urls)) == (["row-1"], b"message-1")
    assert _processes_on(data_dir) == []


def test_data_dir_in_use_is_refused(tmp_path: Path) -> None:
    first = EmbeddedNats(tmp_path, port=0)
    first.start()
    try:
        with pytest.raises(EmbeddedError, match="in use"):
            EmbeddedNats(tmp_path, port=0).start()
        assert first.running
    finally:
        first.stop()
    assert first.pid is None


def test_taken_port_is_replaced_unless_explicit(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path, port=0, monitor=False)
    server.start()
    port = int(server.url.rsplit(":", 1)[1])
    server.stop()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        again = EmbeddedNats(tmp_path, monitor=False)  # would prefer the remembered port
        try:
            assert int(again.start().rsplit(":", 1)[1]) != port
        finally:
            again.stop()
        with pytest.raises(EmbeddedError, match="already in use"):
            EmbeddedNats(tmp_path, port=port, monitor=False).start()


def test_start_failure_raises_with_the_log_tail(tmp_path: Path) -> None:
    class Broken(EmbeddedPostgres):
        settings = {**EmbeddedPostgres.settings, "shared_buffers": "lots"}

    with pytest.raises(EmbeddedError, match="shared_buffers"):
        Broken(tmp_path, port=0).start()
    assert _processes_on(tmp_path) == []


def test_fixtures(fresh_database_url: str, nats_url: str, nats_prefix: str) -> None:
    async def check() -> None:
        conn = await asyncpg.connect(fresh_database_url)
        try:
            assert (
                await conn.fetchval("select count(*) from pg_tables where schemaname='public'") == 0
            )
        finally:
            await conn.close()
        nc = await nats.connect(nats_url, allow_reconnect=False)
        try:
            js = nc.jetstream()
            await js.add_stream(name=f"{nats_prefix}_S", subjects=[f"{nats_prefix}.>"])
            assert (await js.publish(f"{nats_prefix}.x", b"1")).seq == 1
        finally:
            await nc.close()

    assert nats_prefix.startswith("t") and len(nats_prefix) == 11
    asyncio.run(check())
