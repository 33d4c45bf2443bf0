"""Shared fixtures: real nats-server and PostgreSQL for integration tests.

Contract (other tests rely on these names):
- `nats_url` (session): URL of a nats-server with JetStream.
- `database_url` (session): URL of a PostgreSQL server (database `postgres`).
- `fresh_database_url` (function): a new, empty database on that server, dropped after.
- `nats_cluster` (module): an embedded 3-node NATS cluster (sluice.edges.embedded
  EmbeddedNatsCluster, the code of `sluice dev cluster`), started; its `url` is the
  comma-separated NATS_URL of all three. Tests may kill and start its nodes by PID.
- `nats_prefix` (function): a unique lowercase prefix (``t`` + 10 hex digits) for the
  stream and subject names of one test, so tests never share a stream. Streams whose name
  starts with it (case-insensitive) are deleted after the test.
SLUICE_TEST_NATS_URL / SLUICE_TEST_DATABASE_URL override the embedded servers.

The embedded servers (sluice.edges.embedded) are started lazily, once per session, on any
free ports in a session tmp dir, and stopped at the end. These fixtures are sync; they run
their asyncio work on a private thread, so they are safe next to any running event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

T = TypeVar("T")


def run_async(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run `make()` to completion with asyncio.run on a private thread."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="conftest-async") as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


def with_database(url: str, database: str) -> str:
    """`url` pointing at another database on the same server."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(database, safe="")))


async def _execute(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def delete_streams(nats_url: str, prefix: str) -> None:
    """Delete the streams whose names start with `prefix` (a test's own); `nats_url` may
    list the servers of a cluster, comma-separated."""
    import nats

    nc = await nats.connect(
        nats_url.split(","), connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=0
    )
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            if info.config.name and info.config.name.lower().startswith(prefix):
                await js.delete_stream(info.config.name)
    finally:
        await nc.close()


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("SLUICE_TEST_NATS_URL")
    if url:
        yield url
        return
    from sluice.edges.embedded import EmbeddedNats

    server = EmbeddedNats(tmp_path_factory.mktemp("embedded-nats"), port=0)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from sluice.edges.embedded import EmbeddedNatsCluster

    cluster = EmbeddedNatsCluster(tmp_path_factory.mktemp("embedded-nats-cluster"), size=3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    url = os.environ.get("SLUICE_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from sluice.edges.embedded import EmbeddedPostgres

    # Not under pytest's temporary root: pytest makes that owner-only whenever a test
    # session starts, which would lock out PostgreSQL (it runs as a user of its own)
    # whenever two test sessions share the machine.
    root = Path(tempfile.mkdtemp(prefix="sluice-test-postgres-"))
    server = EmbeddedPostgres(root, port=0, database="postgres")
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fresh_database_url(database_url: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    run_async(lambda: _execute(database_url, f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(database_url, name)
    finally:
        run_async(lambda: _execute(database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def nats_prefix(nats_url: str) -> Iterator[str]:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    yield prefix
    with contextlib.suppress(Exception):  # best effort: the server may be gone by now
        run_async(lambda: delete_streams(nats_url, prefix))
