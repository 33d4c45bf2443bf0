"""PgKeyStore against a real PostgreSQL: only hashes stored, lookups note their use,
revocation, and a database that is away (StoreUnavailable, never anything else)."""

from __future__ import annotations

import socket

import asyncpg
import pytest

from sluice.auth import hash_key, new_key
from sluice.edges.keys import NameTaken, PgKeyStore
from sluice.edges.store import PgEventStore
from sluice.ports import ApiKey, StoreUnavailable

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

SECRET = b"integration-secret"


async def migrated(url: str) -> None:
    async with PgEventStore.open(url, migrate=True):
        pass


async def test_create_use_list_revoke(fresh_database_url: str) -> None:
    await migrated(fresh_database_url)
    key = new_key()
    async with PgKeyStore.open(fresh_database_url) as store:
        row = await store.create(
            hash_key(SECRET, key), name="hook", scopes=["ingest"], sources=["tiktok"]
        )
        assert row["name"] == "hook" and row["scopes"] == ["ingest"]
        with pytest.raises(NameTaken):
            await store.create(
                hash_key(SECRET, new_key()), name="hook", scopes=["report"], sources=None
            )

        assert await store.use(hash_key(SECRET, new_key())) is None
        found = await store.use(hash_key(SECRET, key))
        assert found == ApiKey(row["id"], "hook", frozenset({"ingest"}), frozenset({"tiktok"}))
        (listed,) = await store.list_keys()
        assert listed["last_used_at"] is not None and listed["revoked_at"] is None
        assert "key_hash" not in listed

        (revoked,) = await store.revoke("hook")
        assert revoked["id"] == row["id"]
        assert await store.use(hash_key(SECRET, key)) is None
        again = await store.revoke(str(row["id"]))  # by id; the first time is kept
        assert again[0]["revoked_at"] == revoked["revoked_at"]
        assert await store.revoke("nothing-like-it") == []

    conn = await asyncpg.connect(fresh_database_url)
    try:
        stored = await conn.fetchval("SELECT key_hash FROM api_keys")
        assert bytes(stored) == hash_key(SECRET, key) and key.encode() not in bytes(stored)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO api_keys (name, key_hash, scopes) VALUES ('x', '\\x00', '{root}')"
            )
    finally:
        await conn.close()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_a_database_away_is_store_unavailable() -> None:
    url = f"postgresql://nobody@127.0.0.1:{_closed_port()}/none"
    async with PgKeyStore.open(url) as store:  # connects on first use: opens all the same
        with pytest.raises(StoreUnavailable):
            await store.use(hash_key(SECRET, new_key()))


async def test_a_database_without_the_table_is_store_unavailable(fresh_database_url: str) -> None:
    async with PgKeyStore.open(fresh_database_url) as store:  # not migrated
        with pytest.raises(StoreUnavailable):
            await store.use(hash_key(SECRET, new_key()))


async def test_a_keys_own_rate_limits_are_stored_and_carried(fresh_database_url: str) -> None:
    await migrated(fresh_database_url)
    limited, lifted, profile = new_key(), new_key(), new_key()
    async with PgKeyStore.open(fresh_database_url) as store:
        row = await store.create(
            hash_key(SECRET, limited),
            name="slow",
            scopes=["ingest"],
            sources=None,
            rate_requests=2,
            rate_events=50,
        )
        assert (row["rate_requests"], row["rate_events"]) == (2, 50)
        await store.create(
            hash_key(SECRET, lifted), name="free", scopes=["ingest"], sources=None, rate_events=0
        )
        await store.create(hash_key(SECRET, profile), name="plain", scopes=["ingest"], sources=None)
        found = await store.use(hash_key(SECRET, limited))
        assert found is not None and (found.rate_requests, found.rate_events) == (2, 50)
        found = await store.use(hash_key(SECRET, lifted))
        assert found is not None and (found.rate_requests, found.rate_events) == (None, 0)
        found = await store.use(hash_key(SECRET, profile))
        assert found is not None and (found.rate_requests, found.rate_events) == (None, None)
        rows = await store.list_keys()
        listed = {r["name"]: (r["rate_requests"], r["rate_events"]) for r in rows}
        assert listed == {"slow": (2, 50), "free": (None, 0), "plain": (None, None)}
        with pytest.raises(asyncpg.CheckViolationError):  # the database refuses it too
            await store.create(
                hash_key(SECRET, new_key()),
                name="bad",
                scopes=["ingest"],
                sources=None,
                rate_requests=-1,
            )
