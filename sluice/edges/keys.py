"""PostgreSQL adapter (asyncpg) for API keys: implements `sluice.ports.KeyStore`, and
the management `sluice keys` needs (create, list, revoke).

Its pool is small (2) and opens no connection until the first lookup, so a process
whose database is away still starts (cached keys keep working; an uncached key gets
503). Every error of a lookup is "unavailable": a lookup has no bad data to refuse.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import asyncpg

from sluice.edges.store import SERVER_SETTINGS, map_errors
from sluice.ports import ApiKey, StoreUnavailable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from sluice.ports import KeyStore

__all__ = ["PgKeyStore"]

LOOKUP_TIMEOUT = 2.0  # seconds: a request waits no longer for its key's lookup

_USE = """
UPDATE api_keys SET last_used_at = now()
WHERE key_hash = $1 AND revoked_at IS NULL
RETURNING id, name, scopes, sources, rate_requests, rate_events
"""

_CREATE = """
INSERT INTO api_keys (name, key_hash, scopes, sources, rate_requests, rate_events)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING id, name, scopes, sources, rate_requests, rate_events, created_at
"""

_LIST = """
SELECT id, name, scopes, sources, rate_requests, rate_events, created_at, last_used_at,
       revoked_at
FROM api_keys ORDER BY id
"""

_REVOKE = """
UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
WHERE CASE WHEN $1::bigint IS NULL THEN name = $2 ELSE id = $1 END
RETURNING id, name, revoked_at
"""


class NameTaken(Exception):
    """Another key already has this name."""


def _api_key(record: Any) -> ApiKey:
    sources = record["sources"]
    return ApiKey(
        id=record["id"],
        name=record["name"],
        scopes=frozenset(record["scopes"]),
        sources=None if sources is None else frozenset(sources),
        rate_requests=record["rate_requests"],
        rate_events=record["rate_events"],
    )


class PgKeyStore:
    """API keys over an asyncpg pool of their own. Create it with `open()`."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, url: str, *, max_size: int = 2) -> AsyncIterator[PgKeyStore]:
        """A pool to `url` that connects on first use (the server may be down now)."""
        pool = await asyncpg.create_pool(
            url, min_size=0, max_size=max_size, server_settings=SERVER_SETTINGS
        )
        try:
            yield cls(pool)
        finally:
            await pool.close()

    async def use(self, key_hash: bytes) -> ApiKey | None:
        try:
            async with self._pool.acquire(timeout=LOOKUP_TIMEOUT) as conn:
                record = await conn.fetchrow(_USE, key_hash, timeout=LOOKUP_TIMEOUT)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return None if record is None else _api_key(record)

    async def create(
        self,
        key_hash: bytes,
        *,
        name: str,
        scopes: Sequence[str],
        sources: Sequence[str] | None,
        rate_requests: int | None = None,
        rate_events: int | None = None,
    ) -> dict[str, Any]:
        """Store a new key's hash; its row (id, name, scopes, sources, rate_requests,
        rate_events, created_at). Rates per second: None the profile's, 0 no limit.

        Raises NameTaken, StoreUnavailable."""
        try:
            with map_errors():
                async with self._pool.acquire() as conn:
                    record = await conn.fetchrow(
                        _CREATE,
                        name,
                        key_hash,
                        list(scopes),
                        None if sources is None else list(sources),
                        rate_requests,
                        rate_events,
                    )
        except asyncpg.UniqueViolationError as exc:
            raise NameTaken(f"an API key named {name!r} exists already") from exc
        return dict(record)

    async def list_keys(self) -> list[dict[str, Any]]:
        """Every key, oldest first (never its hash)."""
        with map_errors():
            async with self._pool.acquire() as conn:
                return [dict(r) for r in await conn.fetch(_LIST)]

    async def revoke(self, id_or_name: str) -> list[dict[str, Any]]:
        """Revoke the key with this id (digits) or name (a revoked key keeps its first
        revocation time); the keys found (id, name, revoked_at): none when none matches."""
        key_id = int(id_or_name) if id_or_name.isdigit() else None
        with map_errors():
            async with self._pool.acquire() as conn:
                return [dict(r) for r in await conn.fetch(_REVOKE, key_id, id_or_name)]

    if TYPE_CHECKING:

        def _implements_the_port(store: PgKeyStore) -> KeyStore:
            return store
