"""The embedded PostgreSQL is no open door: a password on every connection, TCP and unix
socket alike, kept owner-only in the data dir; data dirs of earlier versions (trust
authentication) get one on their next start."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from sluice.edges.embedded import EmbeddedError, EmbeddedPostgres, postgres_bin_dir
from sluice.edges.embedded._base import (
    PG_SYSTEM_USER,
    _chown_tree,
    _clean_env,
    _ensure_traversable,
    _pg_run_as,
)
from sluice.edges.embedded._postgres import run_as_server_user

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_root() -> Iterator[Path]:
    """Outside pytest's temporary root, which pytest makes owner-only whenever a session
    starts (PostgreSQL runs as a user of its own when the tests run as root)."""
    path = Path(tempfile.mkdtemp(prefix="sluice-test-pgauth-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _run_as_pg(argv: list[str], stdin: str = "") -> None:
    """Run a PostgreSQL binary as the user the embedded server runs as."""
    done = run_as_server_user(argv, _pg_run_as(PG_SYSTEM_USER), cwd=Path("/"), stdin=stdin)
    assert done.returncode == 0, done.stderr


def psql_without_password(server: EmbeddedPostgres, host: str) -> subprocess.CompletedProcess[str]:
    """psql with no password from anywhere: no PGPASSWORD, no password file, no prompt."""
    return subprocess.run(
        [
            str(postgres_bin_dir() / "psql"),
            "-w",
            "-X",
            "-h",
            host,
            "-p",
            str(server.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            "select 1",
        ],
        capture_output=True,
        text=True,
        env=_clean_env(PGPASSFILE=os.devnull),
        timeout=30,
        check=False,
    )


def assert_password_required(server: EmbeddedPostgres) -> None:
    for host in ("127.0.0.1", str(server.socket_dir)):
        refused = psql_without_password(server, host)
        assert refused.returncode != 0, f"{host}: connected without a password"
        assert "password" in refused.stderr, refused.stderr


def read_kept(url: str) -> list[str]:
    async def read() -> list[str]:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return [r["v"] for r in await conn.fetch("select v from kept")]
        finally:
            await conn.close()

    return asyncio.run(read())


def owner_only(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def test_every_connection_needs_the_password(pg_root: Path) -> None:
    server = EmbeddedPostgres(pg_root, port=0, database="postgres")
    url = server.start()
    try:
        password = server.password_path.read_text().strip()
        assert len(password) >= 32
        assert f"postgres:{password}@127.0.0.1:{server.port}/" in url

        async def with_password() -> int:
            conn = await asyncpg.connect(url, timeout=10)
            try:
                return int(await conn.fetchval("select 1"))
            finally:
                await conn.close()

        assert asyncio.run(with_password()) == 1
        assert_password_required(server)

        async def wrong_password() -> None:
            await asyncpg.connect(url.replace(password, "not-the-password"), timeout=10)

        with pytest.raises(asyncpg.InvalidPasswordError):
            asyncio.run(wrong_password())

        assert owner_only(server.password_path)
        assert owner_only(server.socket_dir)
        assert owner_only(server.pgdata)
        hba = (server.pgdata / "pg_hba.conf").read_text()
        assert "trust" not in hba
        user = _pg_run_as(PG_SYSTEM_USER)
        if user is not None:  # root: the server's user owns it; nobody else can read it
            assert server.password_path.stat().st_uid == user.uid
    finally:
        server.stop()


def test_the_embedded_server_listens_on_loopback_only(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedError, match="loopback"):
        EmbeddedPostgres(tmp_path, host="0.0.0.0")
    with pytest.raises(EmbeddedError, match="DATABASE_URL"):
        EmbeddedPostgres(tmp_path, host="192.0.2.10")
    for host in ("127.0.0.1", "::1", "localhost"):
        EmbeddedPostgres(tmp_path, host=host)  # accepted (not started)


def make_trusting_data_dir(root: Path) -> None:
    """A data directory as sluice made it before passwords: initdb --auth=trust, with a
    table holding one row (written in single-user mode, no server needed)."""
    bin_dir = postgres_bin_dir()
    pg_dir = root / "postgres"
    pg_dir.mkdir(parents=True)
    user = _pg_run_as(PG_SYSTEM_USER)
    if user is not None:
        _ensure_traversable(pg_dir, user)
        _chown_tree(pg_dir, user)
    pgdata = pg_dir / "data"
    _run_as_pg(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(pgdata),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-instructions",
        ]
    )
    _run_as_pg(
        [str(bin_dir / "postgres"), "--single", "-D", str(pgdata), "postgres"],
        "CREATE TABLE kept (v text)\nINSERT INTO kept VALUES ('row-1')\n",
    )
    assert "trust" in (pgdata / "pg_hba.conf").read_text()


def test_a_trusting_data_dir_of_an_earlier_version_gets_a_password(
    pg_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_trusting_data_dir(pg_root)
    caplog.set_level(logging.INFO, logger="sluice.embedded")

    server = EmbeddedPostgres(pg_root, port=0, database="postgres")
    url = server.start()
    try:
        migrated = [r for r in caplog.records if "trusted local connections" in r.getMessage()]
        assert len(migrated) == 1, [r.getMessage() for r in caplog.records]
        assert read_kept(url) == ["row-1"]
        assert_password_required(server)
        assert owner_only(server.password_path)
        hba = (server.pgdata / "pg_hba.conf").read_text()
        assert "trust" not in hba and "scram-sha-256" in hba
    finally:
        server.stop()

    # Migrated once: the next start says nothing about it and keeps the password.
    caplog.clear()
    again = EmbeddedPostgres(pg_root, port=0, database="postgres")
    try:
        assert again.start() == url.replace(f":{server.port}/", f":{again.port}/")
        assert not [r for r in caplog.records if "trusted" in r.getMessage()]
        assert read_kept(again.url) == ["row-1"]
    finally:
        again.stop()


def test_a_lost_password_file_gives_the_server_a_new_password(pg_root: Path) -> None:
    first = EmbeddedPostgres(pg_root, port=0, database="postgres")
    old_url = first.start()
    first.stop()
    old = first.password_path.read_text().strip()
    first.password_path.unlink()

    server = EmbeddedPostgres(pg_root, port=0, database="postgres")
    url = server.start()
    try:
        new = server.password_path.read_text().strip()
        assert new != old and owner_only(server.password_path)

        async def connect(target: str) -> None:
            conn = await asyncpg.connect(target, timeout=10)
            await conn.close()

        asyncio.run(connect(url))
        with pytest.raises(asyncpg.InvalidPasswordError):
            asyncio.run(connect(old_url.replace(f":{first.port}/", f":{server.port}/")))
    finally:
        server.stop()
