"""Migrations as an operator meets them: at start-up, by `sluice migrate`, and failing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from sluice.sql.migrate import load

pytestmark = pytest.mark.integration


def sluice(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "NATS_URL"))}
    full.pop("DATABASE_URL", None)
    return subprocess.Popen(
        [sys.executable, "-m", "sluice.cli", *args],
        env=full | env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def sql(database_url: str, query: str) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(database_url)
        try:
            return list(await conn.fetch(query))
        finally:
            await conn.close()

    return asyncio.run(run())


@pytest.fixture
def env(fresh_database_url: str, nats_url: str, nats_prefix: str, tmp_path: Path) -> dict[str, str]:
    return {
        "DATABASE_URL": fresh_database_url,
        "NATS_URL": nats_url,
        "SLUICE_STREAM": f"{nats_prefix}_EVENTS",
        "SLUICE_SUBJECT_PREFIX": nats_prefix,
        "SLUICE_DATA_DIR": str(tmp_path),
        "SLUICE_HTTP_PORT": "0",
    }


def test_instances_migrating_together_apply_each_migration_once(env: dict[str, str]) -> None:
    runs = [sluice("migrate", env=env) for _ in range(3)]
    for run in runs:
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, err
        assert "migrations applied" in out
    applied = sql(env["DATABASE_URL"], "select version from schema_migrations order by version")
    assert [r["version"] for r in applied] == [m.version for m in load()]


def test_a_failed_migration_rolls_back_and_stops_start_up(env: dict[str, str]) -> None:
    # Something in the way of 001's second table: 001 fails after creating `events`.
    sql(env["DATABASE_URL"], "create table dead_letters (nothing int)")
    run = sluice("run", env=env)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 2
    assert "sluice: cannot start: migration failed and was rolled back: 001_events.sql" in err
    assert 'relation "dead_letters" already exists' in err
    assert "Traceback" not in err
    assert "sluice is running" not in out
    # Rolled back as a whole: nothing of 001 remains, nothing is recorded.
    tables = sql(env["DATABASE_URL"], "select to_regclass('events') as t")
    assert tables[0]["t"] is None
    assert sql(env["DATABASE_URL"], "select * from schema_migrations") == []

    migrate = sluice("migrate", env=env)
    _, err = migrate.communicate(timeout=60)
    assert migrate.returncode == 2 and "001_events.sql" in err and "Traceback" not in err


def test_start_up_without_a_database_says_so(env: dict[str, str]) -> None:
    env = env | {"DATABASE_URL": "postgresql://nobody:secret@127.0.0.1:1/none"}
    run = sluice("run", "--role", "worker", env=env)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 2
    assert "sluice: cannot start: PostgreSQL unreachable:" in err and "Traceback" not in err
    assert err.rstrip().endswith("(check DATABASE_URL)")
    assert "secret" not in err
