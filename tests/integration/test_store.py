"""PgEventStore against a real PostgreSQL (a fresh database per test)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from sluice.edges.store import PgEventStore
from sluice.ports import DeadLetter, EventRow, RowsRejected, StoreUnavailable
from sluice.sql.migrate import load
from tests.asyncpg_leaks import tolerating_orphaned_copy_waiters

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def row(event_id: str, **changes: object) -> EventRow:
    fields: dict[str, object] = {
        "event_id": event_id,
        "source": "facebook",
        "funnel_stage": "bottom",
        "event_type": "checkout.complete",
        "occurred_at": T0,
        "received_at": T0 + timedelta(seconds=2),
        "user_id": "u1",
        "country": "PL",
        "campaign_id": "c1",
        "purchase_amount": Decimal("10.50"),
        "correlation_id": "corr-1",
        "data": json.dumps({"eventId": event_id, "source": "facebook"}),
    }
    fields.update(changes)
    return EventRow(**fields)  # type: ignore[arg-type]


@pytest.fixture
async def store(fresh_database_url: str) -> AsyncIterator[PgEventStore]:
    async with PgEventStore.open(fresh_database_url, migrate=True) as opened:
        yield opened


@pytest.fixture
async def db(fresh_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A separate connection, to look at what was stored."""
    connection = await asyncpg.connect(fresh_database_url)
    try:
        yield connection
    finally:
        await connection.close()


async def test_write_batch_inserts_and_returns_new_ids(
    store: PgEventStore, db: asyncpg.Connection
) -> None:
    assert await store.migrations_pending() == []
    assert await store.write_batch([]) == set()

    assert await store.write_batch([row("a"), row("b"), row("c")]) == {"a", "b", "c"}
    assert await store.count_events() == 3

    stored = await db.fetchrow("SELECT * FROM events WHERE event_id = 'a'")
    assert stored is not None
    assert stored["source"] == "facebook"
    assert stored["funnel_stage"] == "bottom"
    assert stored["event_type"] == "checkout.complete"
    assert stored["occurred_at"] == T0
    assert stored["received_at"] == T0 + timedelta(seconds=2)
    assert (stored["user_id"], stored["country"], stored["campaign_id"]) == ("u1", "PL", "c1")
    assert stored["purchase_amount"] == Decimal("10.50")
    assert stored["correlation_id"] == "corr-1"


async def test_nullable_columns_and_aware_timestamps(
    store: PgEventStore, db: asyncpg.Connection
) -> None:
    plus2 = timezone(timedelta(hours=2))
    sparse = row(
        "sparse",
        funnel_stage=None,
        user_id=None,
        country=None,
        campaign_id=None,
        purchase_amount=None,
        correlation_id=None,
        occurred_at=datetime(2025, 3, 1, 14, 0, tzinfo=plus2),
    )
    assert await store.write_batch([sparse]) == {"sparse"}
    stored = await db.fetchrow("SELECT * FROM events")
    assert stored is not None
    assert stored["occurred_at"] == T0  # the same instant
    for column in ("funnel_stage", "user_id", "country", "campaign_id", "purchase_amount"):
        assert stored[column] is None


async def test_duplicates_return_only_new_ids_and_are_stored_once(
    store: PgEventStore, db: asyncpg.Connection
) -> None:
    assert await store.write_batch([row("a"), row("b")]) == {"a", "b"}

    batch = [
        row("b"),  # already stored
        row("c", user_id="first"),
        row("c", user_id="second"),  # twice in one batch
        row("d"),
        row("c", user_id="third"),
    ]
    assert await store.write_batch(batch) == {"c", "d"}
    assert await store.write_batch(batch) == set()  # a full redelivery

    counts = await db.fetch("SELECT event_id, count(*) AS n FROM events GROUP BY event_id")
    assert {r["event_id"]: r["n"] for r in counts} == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert await db.fetchval("SELECT user_id FROM events WHERE event_id = 'c'") == "first"


async def test_purchase_amount_is_exact(store: PgEventStore, db: asyncpg.Connection) -> None:
    amounts = ["624844.19", "0.10", "0.20", "12345678901234567890.123456789", "-3.00"]
    rows = [row(f"e{i}", purchase_amount=Decimal(a)) for i, a in enumerate(amounts)]
    await store.write_batch(rows)

    stored = await db.fetch("SELECT event_id, purchase_amount FROM events")
    by_id = {r["event_id"]: r["purchase_amount"] for r in stored}
    assert by_id == {f"e{i}": Decimal(a) for i, a in enumerate(amounts)}
    text = await db.fetchval("SELECT purchase_amount::text FROM events WHERE event_id = 'e0'")
    assert text == "624844.19"
    assert await db.fetchval(
        "SELECT sum(purchase_amount) FROM events WHERE event_id IN ('e1', 'e2')"
    ) == Decimal("0.30")


async def test_data_round_trips_as_jsonb_with_unknown_fields(
    store: PgEventStore, db: asyncpg.Connection
) -> None:
    event = {
        "eventId": "j1",
        "timestamp": "2025-03-01T12:00:00Z",
        "source": "tiktok",
        "data": {
            "user": {"userId": "u9", "username": "zażółć 🐟", "followers": 12},
            "engagement": {"purchaseAmount": "624844.19", "watchTime": 1.5},
        },
        "somethingNew": {"nested": [1, None, True, "x"], "big": 123456789012345678901234567890},
    }
    await store.write_batch([row("j1", data=json.dumps(event, ensure_ascii=False))])

    assert json.loads(await db.fetchval("SELECT data FROM events")) == event
    assert await db.fetchval("SELECT jsonb_typeof(data) FROM events") == "object"
    assert await db.fetchval("SELECT data #>> '{somethingNew,nested,3}' FROM events") == "x"


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"data": '{"note": "\\u0000"}'}, id="escaped-nul-in-json"),
        pytest.param({"data": '{"note": "a\x00b"}'}, id="raw-nul-in-json"),
        pytest.param({"user_id": "u\x00"}, id="raw-nul-in-text-column"),
        pytest.param({"data": "{not json"}, id="invalid-json"),
        pytest.param({"data": 42}, id="wrong-python-type"),
    ],
)
async def test_rejected_rows_store_nothing_from_the_batch(
    store: PgEventStore, bad: dict[str, object]
) -> None:
    batch = [row("ok1"), row("bad", **bad), row("ok2")]
    with pytest.raises(RowsRejected) as info:
        await store.write_batch(batch)
    assert list(info.value.rows) == batch
    assert info.value.reason
    assert await store.count_events() == 0

    # The store (and its connection, and its staging table) is fine afterwards.
    assert await store.write_batch([row("ok1"), row("ok2")]) == {"ok1", "ok2"}


async def test_rejection_reason_points_at_the_row(store: PgEventStore) -> None:
    batch = [row("ok1"), row("ok1"), row("bad", data='{"note": "\\u0000"}')]
    with pytest.raises(RowsRejected) as info:
        await store.write_batch(batch)
    assert "event_id='bad'" in info.value.reason
    assert "UntranslatableCharacterError" in info.value.reason


async def test_store_unavailable_when_server_unreachable() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(StoreUnavailable):
        async with PgEventStore.open(f"postgresql://postgres@127.0.0.1:{port}/postgres"):
            pytest.fail("opened a store on a closed port")


async def test_store_unavailable_when_connection_dies_mid_batch(
    fresh_database_url: str, db: asyncpg.Connection
) -> None:
    async with PgEventStore.open(fresh_database_url, min_size=1, max_size=1, migrate=True) as st:
        async with db.transaction():
            await db.execute("LOCK TABLE events IN EXCLUSIVE MODE")
            write = asyncio.ensure_future(st.write_batch([row("a")]))
            for _ in range(200):  # wait until the writer blocks on our lock
                blocked = await db.fetchval(
                    "SELECT pid FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
                if blocked is not None:
                    break
                await asyncio.sleep(0.01)
            assert blocked is not None
            assert await db.fetchval("SELECT pg_terminate_backend($1)", blocked)
            with pytest.raises(StoreUnavailable):
                await write
        assert await st.count_events() == 0
        # The pool replaces the dead connection (with a new staging table).
        assert await st.write_batch([row("a")]) == {"a"}
        await st.ping()


def _error_response(**fields: str) -> bytes:
    body = b"".join(k.encode() + v.encode() + b"\0" for k, v in fields.items()) + b"\0"
    return b"E" + struct.pack("!i", len(body) + 4) + body


# What a backend sends when it finds its postmaster dead, just before it closes.
POSTMASTER_DIED = _error_response(
    S="FATAL", V="FATAL", C="57P01", M="terminating connection due to unexpected postmaster exit"
)


class DyingBackendProxy:
    """A TCP proxy to PostgreSQL. Once armed, it sends the server's next reply with
    POSTMASTER_DIED after it, as a backend whose postmaster was killed does, and forwards
    nothing more on that connection; the client sees no end of the connection until it
    closes the connection itself."""

    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self._handlers: set[asyncio.Task[None]] = set()
        self.armed = False
        self.tripped = False

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        server_r, server_w = await asyncio.open_connection(*self._upstream)
        dead = False

        async def requests() -> None:
            while (data := await client_r.read(65536)) and not dead:
                server_w.write(data)
                await server_w.drain()
            server_w.close()

        async def replies() -> None:
            nonlocal dead
            while data := await server_r.read(65536):
                if self.armed:
                    self.armed, self.tripped, dead = False, True, True
                    client_w.write(data + POSTMASTER_DIED)  # one write: one segment
                    return  # and no end of connection: the client closes it
                client_w.write(data)
                await client_w.drain()
            client_w.close()

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(requests())
                tg.create_task(replies())
        except* OSError:  # the client's abort
            pass
        finally:
            for w in (client_w, server_w):
                w.close()

    @contextlib.asynccontextmanager
    async def url_for(self, url: str) -> AsyncIterator[str]:
        """`url` through this proxy, while the block runs."""
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)[0] + f"@127.0.0.1:{port}"
        try:
            yield urlunsplit(parts._replace(netloc=netloc))
        finally:
            server.close()
            if self._handlers:
                await asyncio.wait(self._handlers, timeout=10)


async def test_store_unavailable_when_the_backend_dies_between_begin_and_copy(
    fresh_database_url: str,
) -> None:
    """The FATAL comes with the reply to the BEGIN: asyncpg cannot start the COPY, the
    batch is not stored, StoreUnavailable (the writer retries); the pool then opens a new
    connection. asyncpg leaves the COPY's waiter behind (see tests.asyncpg_leaks): when
    this fails because it no longer does, drop that tolerance."""
    parts = urlsplit(fresh_database_url)
    proxy = DyingBackendProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    async with (
        tolerating_orphaned_copy_waiters() as leaks,
        proxy.url_for(fresh_database_url) as url,
        PgEventStore.open(url, min_size=1, max_size=1, migrate=True) as st,
    ):
        assert await st.write_batch([row("a")]) == {"a"}  # COPY's statement now cached
        proxy.armed = True
        with pytest.raises(StoreUnavailable, match="another operation"):
            await st.write_batch([row("b")])
        assert proxy.tripped
        assert await st.write_batch([row("b"), row("c")]) == {"b", "c"}
        assert await st.count_events() == 3
    assert [type(e) for e in leaks] == [asyncpg.ConnectionDoesNotExistError]


async def test_store_unavailable_before_migrations(fresh_database_url: str) -> None:
    async with PgEventStore.open(fresh_database_url) as st:
        assert await st.migrations_pending() == [m.name for m in load()]
        with pytest.raises(StoreUnavailable, match="UndefinedTableError"):
            await st.write_batch([row("a")])  # not the rows' fault: must not be rejected


async def test_ping(fresh_database_url: str) -> None:
    async with PgEventStore.open(fresh_database_url) as st:
        await st.ping()
    with pytest.raises(StoreUnavailable):
        await st.ping()  # the pool is closed


async def test_dead_letter_stores_rows(store: PgEventStore, db: asyncpg.Connection) -> None:
    await store.dead_letter([])
    await store.dead_letter(
        [
            DeadLetter(source="tiktok", reason="bad json", payload=b"\x00\xff{", attempts=1),
            DeadLetter(source="facebook", reason="nul \x00 in reason", payload=b"{}", attempts=5),
        ]
    )
    rows = await db.fetch("SELECT * FROM dead_letters ORDER BY id")
    assert [(r["source"], r["payload"], r["attempts"]) for r in rows] == [
        ("tiktok", b"\x00\xff{", 1),
        ("facebook", b"{}", 5),
    ]
    assert rows[0]["reason"] == "bad json"
    assert rows[1]["reason"] == "nul \ufffd in reason"
    assert all(r["replayed_at"] is None for r in rows)
    assert all(r["first_seen"] == r["last_seen"] for r in rows)


async def test_a_large_batch(store: PgEventStore) -> None:
    rows = [row(f"bulk-{i}", purchase_amount=Decimal(i) / 100) for i in range(5000)]
    new = await store.write_batch(rows + rows[:100])
    assert len(new) == 5000
    assert await store.count_events() == 5000
