"""Apply the numbered SQL migrations in `sluice/sql/migrations/`, exactly once.

Files are named `NNN_name.sql` and applied in numeric order. Each runs in its own
transaction together with its row in `schema_migrations`, so a migration is either
wholly applied and recorded or not at all. The whole run holds a PostgreSQL advisory
lock: when several instances start together, one applies what is pending while the
others wait, then find nothing left to do.

An applied file must never change: its checksum is recorded, and a mismatch stops the
run (add a new numbered file instead). Migration files must not contain BEGIN/COMMIT
nor statements that cannot run inside a transaction block.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

__all__ = [
    "ADVISORY_LOCK_KEY",
    "MIGRATIONS_DIR",
    "Connection",
    "Migration",
    "MigrationError",
    "load",
    "migrate",
    "pending",
]

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

# pg_advisory_lock key shared by every sluice instance: b"sluice:m" as a signed bigint.
ADVISORY_LOCK_KEY = int.from_bytes(b"sluice:m", "big", signed=True)

_FILE_NAME = re.compile(r"^(\d+)_([A-Za-z0-9_\-]+)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""

# SQLSTATE classes that say "the connection is gone", not "this migration is wrong":
# connection exception, operator intervention (shutdown, cannot connect now).
_CONNECTION_CLASSES = ("08", "57")


class Connection(Protocol):
    """What the runner needs of a connection: an asyncpg.Connection (or pool proxy).

    Typed structurally so this foundation module does not import asyncpg (only
    `sluice.edges` does); errors are recognised by their `sqlstate` attribute.
    """

    async def execute(self, query: str, *args: Any) -> Any: ...
    async def fetch(self, query: str, *args: Any) -> Any: ...
    async def fetchval(self, query: str, *args: Any) -> Any: ...
    def transaction(self) -> AbstractAsyncContextManager[Any]: ...
    def is_closed(self) -> bool: ...


class MigrationError(Exception):
    """A migration could not be applied, or an applied one has been changed."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str  # the file name, e.g. "001_events.sql"
    sql: str
    checksum: str


def load(directory: Path | str | None = None) -> list[Migration]:
    """Read the migration files of `directory` (default: MIGRATIONS_DIR), in order."""
    root = Path(directory) if directory is not None else MIGRATIONS_DIR
    found: dict[int, Migration] = {}
    for path in sorted(root.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files must be named NNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(
                f"{path.name}: version {version} already used by {found[version].name}"
            )
        sql = path.read_text(encoding="utf-8")
        # Line endings do not change a migration's meaning (e.g. a Windows checkout).
        checksum = hashlib.sha256(sql.replace("\r\n", "\n").encode("utf-8")).hexdigest()
        found[version] = Migration(version, path.name, sql, checksum)
    return [found[v] for v in sorted(found)]


async def _applied(conn: Connection) -> dict[int, tuple[str, str]] | None:
    """{version: (name, checksum)} recorded so far; None if nothing was ever applied."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return None
    rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
    return {r["version"]: (r["name"], r["checksum"]) for r in rows}


def _check_unchanged(migrations: list[Migration], applied: dict[int, tuple[str, str]]) -> None:
    for m in migrations:
        recorded = applied.get(m.version)
        if recorded is not None and recorded[1] != m.checksum:
            raise MigrationError(
                f"{m.name}: changed after it was applied as {recorded[0]} "
                f"(checksum {m.checksum[:12]}, recorded {recorded[1][:12]}); "
                "add a new numbered migration instead of editing an applied one"
            )


def _sqlstate(exc: BaseException) -> str | None:
    state = getattr(exc, "sqlstate", None)
    return state if isinstance(state, str) else None


def _describe(name: str, sql: str, exc: Exception) -> str:
    where = ""
    position = getattr(exc, "position", None)
    if position is not None and str(position).isdigit():
        where = f" at line {sql.count(chr(10), 0, int(position)) + 1}"
    text = f"{name}{where}: {type(exc).__name__} ({_sqlstate(exc)}): {exc}"
    detail = getattr(exc, "detail", None)
    if detail and detail not in str(exc):
        text += f" ({detail})"
    return text


async def pending(conn: Connection, *, directory: Path | str | None = None) -> list[str]:
    """File names of the migrations not applied yet, in order (no lock is taken)."""
    migrations = load(directory)
    applied = await _applied(conn) or {}
    return [m.name for m in migrations if m.version not in applied]


async def migrate(conn: Connection, *, directory: Path | str | None = None) -> list[str]:
    """Apply every pending migration; return the file names applied by this call.

    Raises MigrationError (naming the file and the PostgreSQL error) when a migration
    fails, after rolling it back; earlier migrations of the run stay applied. Also raises
    MigrationError, before applying anything, when an applied file has been changed.
    Connection failures propagate unchanged (asyncpg's own exceptions, OSError).
    """
    migrations = load(directory)
    done: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
    try:
        # Under the lock: concurrent CREATE TABLE IF NOT EXISTS can still collide.
        await conn.execute(_CREATE_TABLE)
        applied = await _applied(conn) or {}
        _check_unchanged(migrations, applied)
        for m in migrations:
            if m.version in applied:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES ($1, $2, $3)",
                        m.version,
                        m.name,
                        m.checksum,
                    )
            except Exception as exc:
                state = _sqlstate(exc)
                if state is None or state.startswith(_CONNECTION_CLASSES):
                    raise  # not a PostgreSQL verdict on this migration
                raise MigrationError(_describe(m.name, m.sql, exc)) from exc
            done.append(m.name)
    finally:
        if not conn.is_closed():
            await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)
    return done
