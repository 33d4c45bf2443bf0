"""The migration runner against a real PostgreSQL (a fresh database per test)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import asyncpg
import pytest

from sluice.sql.migrate import MIGRATIONS_DIR, MigrationError, load, migrate, pending

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@pytest.fixture
async def conn(fresh_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(fresh_database_url)
    try:
        yield connection
    finally:
        await connection.close()


async def _versions(conn: asyncpg.Connection) -> list[tuple[int, str]]:
    rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    return [(r["version"], r["name"]) for r in rows]


async def _table_exists(conn: asyncpg.Connection, name: str) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name))


def test_shipped_migrations_are_well_formed() -> None:
    migrations = load()
    assert migrations, MIGRATIONS_DIR
    assert migrations[0].name == "001_events.sql"
    assert [m.version for m in migrations] == sorted({m.version for m in migrations})


async def test_applies_the_shipped_migrations_once(conn: asyncpg.Connection) -> None:
    shipped = [m.name for m in load()]
    versions = [(m.version, m.name) for m in load()]
    assert await pending(conn) == shipped

    assert await migrate(conn) == shipped
    assert await _versions(conn) == versions
    assert await _table_exists(conn, "events")
    assert await _table_exists(conn, "dead_letters")
    assert await _table_exists(conn, "rollup_events")
    assert await pending(conn) == []

    assert await migrate(conn) == []
    assert await _versions(conn) == versions


async def test_concurrent_runs_apply_each_migration_once(
    fresh_database_url: str, tmp_path: Path
) -> None:
    # A slow migration keeps the first runner inside the lock while the others arrive.
    (tmp_path / "001_slow.sql").write_text(
        "SELECT pg_sleep(0.5);\nCREATE TABLE slow (id int);\nINSERT INTO slow VALUES (1);\n"
    )
    (tmp_path / "002_more.sql").write_text("INSERT INTO slow VALUES (2);\n")
    conns = [await asyncpg.connect(fresh_database_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(c, directory=tmp_path) for c in conns))
        assert sorted(results) == [[], [], ["001_slow.sql", "002_more.sql"]]
        assert await conns[0].fetchval("SELECT count(*) FROM slow") == 2
        assert await _versions(conns[1]) == [(1, "001_slow.sql"), (2, "002_more.sql")]
    finally:
        for c in conns:
            await c.close()


async def test_concurrent_runs_of_the_shipped_migrations(fresh_database_url: str) -> None:
    conns = [await asyncpg.connect(fresh_database_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        assert sorted(results) == [[], [], [m.name for m in load()]]
        assert await _versions(conns[0]) == [(m.version, m.name) for m in load()]
    finally:
        for c in conns:
            await c.close()


async def test_failing_migration_rolls_back_and_names_the_file(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    (tmp_path / "001_good.sql").write_text("CREATE TABLE good (id int);\n")
    (tmp_path / "002_broken.sql").write_text(
        "CREATE TABLE half (id int);\n-- the next statement fails\nSELECT * FROM no_such_table;\n"
    )
    (tmp_path / "003_later.sql").write_text("CREATE TABLE later (id int);\n")

    with pytest.raises(MigrationError) as info:
        await migrate(conn, directory=tmp_path)
    message = str(info.value)
    assert "002_broken.sql" in message
    assert "no_such_table" in message  # PostgreSQL's own message
    assert "line 3" in message
    assert isinstance(info.value.__cause__, asyncpg.UndefinedTableError)

    # 001 stays applied; 002 left nothing behind (not even its first statement); 003 not run.
    assert await _versions(conn) == [(1, "001_good.sql")]
    assert await _table_exists(conn, "good")
    assert not await _table_exists(conn, "half")
    assert not await _table_exists(conn, "later")
    assert await pending(conn, directory=tmp_path) == ["002_broken.sql", "003_later.sql"]
    # The advisory lock was released.
    assert await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0

    (tmp_path / "002_broken.sql").write_text("CREATE TABLE half (id int);\n")
    assert await migrate(conn, directory=tmp_path) == ["002_broken.sql", "003_later.sql"]


async def test_changed_checksum_is_refused(conn: asyncpg.Connection, tmp_path: Path) -> None:
    (tmp_path / "001_first.sql").write_text("CREATE TABLE first (id int);\n")
    assert await migrate(conn, directory=tmp_path) == ["001_first.sql"]

    (tmp_path / "001_first.sql").write_text("CREATE TABLE first (id bigint);\n")
    (tmp_path / "002_second.sql").write_text("CREATE TABLE second (id int);\n")
    with pytest.raises(MigrationError, match=r"001_first\.sql.*changed"):
        await migrate(conn, directory=tmp_path)
    assert not await _table_exists(conn, "second")  # nothing applied after the refusal


async def test_line_endings_do_not_change_the_checksum(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    path = tmp_path / "001_first.sql"
    path.write_bytes(b"CREATE TABLE first (id int);\n")
    assert await migrate(conn, directory=tmp_path) == ["001_first.sql"]
    path.write_bytes(b"CREATE TABLE first (id int);\r\n")
    assert await migrate(conn, directory=tmp_path) == []


def test_badly_named_or_duplicate_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "001_a.sql").write_text("SELECT 1;")
    (tmp_path / "1_b.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="version 1 already used"):
        load(tmp_path)
    (tmp_path / "1_b.sql").unlink()
    (tmp_path / "oops.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"oops\.sql"):
        load(tmp_path)
