"""PostgreSQL adapter (asyncpg): implements `sluice.ports.EventStore`.

write_batch is one transaction per batch:

1. COPY the rows (binary, `copy_records_to_table`) into a per-connection TEMP staging
   table, created once when the pool opens the connection, `ON COMMIT DELETE ROWS` so
   it is empty again after every commit or rollback;
2. `INSERT INTO events SELECT ... FROM staging ON CONFLICT (event_id) DO NOTHING
   RETURNING ...` inside a CTE named `inserted`: exactly the rows that were new.

COPY cannot do ON CONFLICT itself, hence the staging table (measured: ~65-115k rows/s
without rollups). The rollups (migrations 002, 003) are updated in the same statement, as
further CTEs reading `inserted` (see `_INSERT_NEW`), so they count each event once
whatever the duplicates; they cost ~25-65% of the throughput (bench/README.md).

Errors are mapped to the port's two kinds: `StoreUnavailable` (the connection or the
server is not usable right now; retry later, nothing was stored) and `RowsRejected`
(PostgreSQL refused the data itself; retrying the same rows will not help, and nothing
from the batch was stored).
"""

from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
from msgspec.structs import astuple

from sluice.ports import DeadLetter, EventRow, RowsRejected, StoreUnavailable
from sluice.sql.migrate import migrate as run_migrations
from sluice.sql.migrate import pending

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
    from datetime import datetime

    from sluice.ports import EventStore

__all__ = ["PgEventStore", "is_unavailable", "map_errors"]

T = TypeVar("T")

STAGING_TABLE = "sluice_staging_events"

# Every sluice connection works in UTC: the rollups' date_trunc buckets are UTC days.
SERVER_SETTINGS = {"timezone": "UTC"}

# Column order of EventRow, of the staging table and of the COPY records.
COLUMNS: tuple[str, ...] = (
    "event_id",
    "source",
    "funnel_stage",
    "event_type",
    "occurred_at",
    "received_at",
    "user_id",
    "country",
    "campaign_id",
    "purchase_amount",
    "correlation_id",
    "data",
    "revenue",
    "account_id",
    "age",
    "gender",
    "city",
    "followers",
    "device",
    "video_id",
)
_COLUMN_LIST = ", ".join(COLUMNS)
# write_batch copies each EventRow as a tuple of its fields: they must be the columns.
if EventRow.__struct_fields__ != COLUMNS:
    raise RuntimeError("EventRow's fields and the COPY columns differ")

# Same columns as `events`, no constraints and no indexes: COPY into it is cheap. It
# lives as long as its connection; ON COMMIT DELETE ROWS empties it after each batch.
_CREATE_STAGING = f"""
CREATE TEMP TABLE IF NOT EXISTS {STAGING_TABLE} (
    event_id        text,
    source          text,
    funnel_stage    text,
    event_type      text,
    occurred_at     timestamptz,
    received_at     timestamptz,
    user_id         text,
    country         text,
    campaign_id     text,
    purchase_amount numeric,
    correlation_id  text,
    data            jsonb,
    revenue         numeric,
    account_id      text,
    age             integer,
    gender          text,
    city            text,
    followers       bigint,
    device          text,
    video_id        text
) ON COMMIT DELETE ROWS
"""

# Bucket widths of the time rollups: minute, hour and day (UTC: the pools' time zone).
_GRAINS = "(VALUES ('m'::\"char\", 'minute'), ('h', 'hour'), ('d', 'day'))"

# What `inserted` hands on: whatever a rollup may group or sum by (not `data`, the bulk).
_RETURNED = (
    "event_id, source, funnel_stage, event_type, occurred_at, user_id, country, campaign_id,"
    " revenue, age, gender, city, followers, device, video_id"
)

# The rows that were actually new come out of `inserted`; the rollups (migrations 002-3) are
# updated from them in the same statement, so a duplicate never counts twice. The staging
# table never holds an event_id twice (write_batch keeps the first copy), and ON CONFLICT
# DO NOTHING would skip a repeat anyway. Every INSERT takes its rows in key order: writers
# then lock shared rows (events, rollup buckets) in one order and never deadlock, they
# only queue behind each other's commit on the buckets they share.
_INSERT_NEW = f"""
WITH inserted AS (
    INSERT INTO events ({_COLUMN_LIST})
    SELECT {_COLUMN_LIST} FROM {STAGING_TABLE}
    ORDER BY event_id
    ON CONFLICT (event_id) DO NOTHING
    RETURNING {_RETURNED}
),
minutes AS MATERIALIZED (
    -- Pre-aggregated once: the grains below then read tens of rows, not the batch.
    SELECT date_trunc('minute', occurred_at) AS minute, source, funnel_stage, event_type,
           country, campaign_id, count(*) AS events, coalesce(sum(revenue), 0) AS revenue,
           count(revenue) AS transactions
    FROM inserted
    GROUP BY 1, 2, 3, 4, 5, 6
),
rolled_events AS (
    INSERT INTO rollup_events AS r
    SELECT g.grain, date_trunc(g.unit, m.minute), m.source, m.funnel_stage, m.event_type,
           m.country, sum(m.events), sum(m.revenue), sum(m.transactions)
    FROM minutes m CROSS JOIN {_GRAINS} g (grain, unit)
    GROUP BY 1, 2, 3, 4, 5, 6
    ORDER BY 1, 2, 3, 4, 5, 6
    ON CONFLICT ON CONSTRAINT rollup_events_key DO UPDATE SET
        events = r.events + EXCLUDED.events,
        revenue = r.revenue + EXCLUDED.revenue,
        transactions = r.transactions + EXCLUDED.transactions
),
rolled_series AS (
    INSERT INTO rollup_series AS r
    SELECT g.grain, date_trunc(g.unit, m.minute), m.source, m.funnel_stage, m.event_type,
           sum(m.events), sum(m.revenue), sum(m.transactions)
    FROM minutes m CROSS JOIN {_GRAINS} g (grain, unit)
    GROUP BY 1, 2, 3, 4, 5
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT ON CONSTRAINT rollup_series_key DO UPDATE SET
        events = r.events + EXCLUDED.events,
        revenue = r.revenue + EXCLUDED.revenue,
        transactions = r.transactions + EXCLUDED.transactions
),
rolled_campaigns AS (
    INSERT INTO rollup_campaigns AS r
    SELECT g.grain, date_trunc(g.unit, m.minute), m.source, m.campaign_id,
           sum(m.events), sum(m.revenue), sum(m.transactions)
    FROM minutes m CROSS JOIN {_GRAINS} g (grain, unit)
    WHERE m.campaign_id IS NOT NULL
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (grain, bucket, source, campaign_id) DO UPDATE SET
        events = r.events + EXCLUDED.events,
        revenue = r.revenue + EXCLUDED.revenue,
        transactions = r.transactions + EXCLUDED.transactions
),
hours AS (
    SELECT date_trunc('hour', occurred_at) AS hour, source, sluice_age_range(age) AS age_range,
           gender, country, city, sluice_followers_range(followers) AS followers_range, device,
           count(*) AS events,
           sum(followers) AS followers_sum, min(followers) AS followers_min,
           max(followers) AS followers_max
    FROM inserted
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
),
rolled_audience AS (
    INSERT INTO rollup_audience AS r
    SELECT g.grain, date_trunc(g.unit, h.hour), h.source, a.dimension, a.value,
           a.city_country, sum(h.events),
           sum(h.followers_sum) FILTER (WHERE a.dimension = 'followers'),
           min(h.followers_min) FILTER (WHERE a.dimension = 'followers'),
           max(h.followers_max) FILTER (WHERE a.dimension = 'followers')
    FROM hours h
    CROSS JOIN LATERAL sluice_audience(h.age_range, h.gender, h.country, h.city,
                                       h.followers_range, h.device) a
    CROSS JOIN (VALUES ('h'::"char", 'hour'), ('d', 'day')) g (grain, unit)
    GROUP BY 1, 2, 3, 4, 5, 6
    ORDER BY 1, 2, 3, 4, 5, 6
    ON CONFLICT ON CONSTRAINT rollup_audience_key DO UPDATE SET
        events = r.events + EXCLUDED.events,
        followers_sum = r.followers_sum + EXCLUDED.followers_sum,
        followers_min = least(r.followers_min, EXCLUDED.followers_min),
        followers_max = greatest(r.followers_max, EXCLUDED.followers_max)
),
rolled_entities AS (
    INSERT INTO entity_totals AS t
    SELECT x.entity, x.source, x.key, count(*), coalesce(sum(x.revenue), 0), count(x.revenue)
    FROM (
        SELECT 'user' AS entity, source, user_id AS key, revenue FROM inserted
        WHERE user_id IS NOT NULL
        UNION ALL
        SELECT 'video', source, video_id, revenue FROM inserted WHERE video_id IS NOT NULL
    ) x
    GROUP BY 1, 2, 3
    ORDER BY 1, 2, 3
    ON CONFLICT (entity, source, key) DO UPDATE SET
        events = t.events + EXCLUDED.events,
        revenue = t.revenue + EXCLUDED.revenue,
        transactions = t.transactions + EXCLUDED.transactions
    RETURNING t.entity, t.source, t.xmax = 0 AS fresh  -- xmax 0: inserted, not updated
),
counted AS (
    INSERT INTO entity_counts AS c
    SELECT entity, source, count(*) FROM rolled_entities WHERE fresh
    GROUP BY 1, 2
    ORDER BY 1, 2
    ON CONFLICT (entity, source) DO UPDATE SET n = c.n + EXCLUDED.n
)
SELECT event_id FROM inserted
"""

# One row per source and payload (digest, migration 004): a payload refused again
# updates its letter. DISTINCT ON: a statement may not update the same row twice.
_INSERT_DEAD_LETTERS = """
INSERT INTO dead_letters AS d
    (source, reason, payload, attempts, event_id, correlation_id, digest)
SELECT DISTINCT ON (digest) * FROM (
    SELECT l.source, l.reason, l.payload, l.attempts, l.event_id, l.correlation_id,
           sha256(convert_to(l.source, 'UTF8') || '\\x00'::bytea || l.payload) AS digest
    FROM unnest($1::text[], $2::text[], $3::bytea[], $4::integer[], $5::text[], $6::text[])
        AS l (source, reason, payload, attempts, event_id, correlation_id)
) letters
ORDER BY digest
ON CONFLICT (digest) DO UPDATE SET
    reason = EXCLUDED.reason,
    attempts = greatest(d.attempts, EXCLUDED.attempts),
    last_seen = now()
"""

# SQLSTATEs meaning "the store cannot be used right now, the rows are not at fault":
# connection exception (08), invalid transaction state (25: e.g. a read-only standby
# after a failover), invalid authorization (28), invalid catalog (3D), transaction
# rollback (40: serialization failure, deadlock), syntax error or access rule (42: a
# schema not migrated yet), insufficient resources (53: disk full, out of memory, too
# many connections), lock not available / object in use (55P03, 55006), operator
# intervention (57: admin or crash shutdown, cannot connect now, query canceled by
# statement_timeout), system error (58), internal error (XX). Every other SQLSTATE
# refuses the data itself (22 data exception, 23 integrity, 54 program limit, ...).
_UNAVAILABLE_STATES = ("08", "25", "28", "3D", "40", "42", "53", "55P03", "55006", "57", "58", "XX")

# Client-side and OS failures meaning "no usable connection": connect refused or timed
# out, connection lost, pool closed, another operation in progress, and the protocol
# state errors asyncpg raises on a connection that broke mid-statement (e.g. "cannot
# switch to state 15" at the COMMIT after a lost COPY).
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,  # includes ConnectionError and TimeoutError
)

# What asyncpg raises while encoding a value the column type cannot hold: an integer
# past int4/int8 (OverflowError), a str where a number goes (TypeError), a string its
# encoder refuses (UnicodeEncodeError, a ValueError), its own client-side DataError (an
# InterfaceError and a ValueError: checked before InterfaceError).
_ENCODING_ERRORS = (OverflowError, ValueError, TypeError)

_COPY_LINE = re.compile(r"\bCOPY \S+, line (\d+)")


async def _init_connection(conn: Any) -> None:
    """Run once for every connection the pool opens."""
    await conn.execute(_CREATE_STAGING)


def _describe(exc: BaseException) -> str:
    state = getattr(exc, "sqlstate", None)
    text = f"{type(exc).__name__}" + (f" ({state})" if state else "") + f": {exc}"
    detail = getattr(exc, "detail", None)
    if detail and detail not in str(exc):
        text += f" ({detail})"
    return text


def is_unavailable(exc: BaseException) -> bool:
    """True when `exc` says the store cannot be used now (retry), not that data is bad."""
    if isinstance(exc, asyncpg.PostgresError):
        return (exc.sqlstate or "XX").startswith(_UNAVAILABLE_STATES)
    if isinstance(exc, _ENCODING_ERRORS):
        return False
    return isinstance(exc, _UNAVAILABLE)


def _unique_by_event_id(rows: Sequence[EventRow]) -> list[EventRow]:
    """The rows with the first copy of each event_id, in order."""
    seen: set[str] = set()
    out: list[EventRow] = []
    for row in rows:
        if row.event_id not in seen:
            seen.add(row.event_id)
            out.append(row)
    return out


@contextlib.contextmanager
def map_errors(
    rows: Sequence[EventRow] | None = None, staged: Sequence[EventRow] = ()
) -> Iterator[None]:
    """Translate asyncpg/OS errors into StoreUnavailable / RowsRejected (the fakes in
    the tests map what they raise through this too).

    Data errors become RowsRejected(reason, rows) only where rows are written
    (`rows` given); elsewhere they propagate unchanged.
    """
    try:
        yield
    except (StoreUnavailable, RowsRejected):
        raise
    except (asyncpg.PostgresError, *_ENCODING_ERRORS, *_UNAVAILABLE) as exc:
        if is_unavailable(exc):
            raise StoreUnavailable(_describe(exc)) from exc
        if rows is None:
            raise
        reason = _describe(exc)
        context = getattr(exc, "context", None) or ""
        match = _COPY_LINE.search(context)
        if match and 1 <= int(match.group(1)) <= len(staged):
            reason += f" [{context}; event_id={staged[int(match.group(1)) - 1].event_id!r}]"
        raise RowsRejected(reason, tuple(rows)) from exc


def _letter_args(letters: Sequence[DeadLetter]) -> tuple[list[Any], ...]:
    def text(value: str | None) -> str | None:  # text cannot hold NUL; never lose a letter
        return None if value is None else value.replace("\x00", "\ufffd")

    return (
        [text(d.source) for d in letters],
        [text(d.reason) for d in letters],
        [d.payload for d in letters],
        [max(-(2**31), min(d.attempts, 2**31 - 1)) for d in letters],
        [text(d.event_id) for d in letters],
        [text(d.correlation_id) for d in letters],
    )


async def _insert(conn: Any, rows: Sequence[EventRow]) -> set[str]:
    """COPY `rows` into the staging table and insert the new ones (in a transaction)."""
    staged = _unique_by_event_id(rows)
    records = [astuple(r) for r in staged]  # fields in COLUMNS order (checked above)
    with map_errors(rows, staged):
        await conn.copy_records_to_table(STAGING_TABLE, records=records, columns=COLUMNS)
        new = await conn.fetch(_INSERT_NEW)
    return {rec[0] for rec in new}


class PgTransaction:
    """A `sluice.ports.StoreTransaction`: each insert runs in its own savepoint."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def insert(self, rows: Sequence[EventRow]) -> set[str]:
        if not rows:
            return set()
        with map_errors(rows):
            async with self._conn.transaction():  # nested: a savepoint
                new = await _insert(self._conn, rows)
                # ON COMMIT DELETE ROWS empties staging at the commit only; the next
                # insert in this transaction must not see these rows again.
                await self._conn.execute(f"DELETE FROM {STAGING_TABLE}")
        return new

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        if letters:
            with map_errors(rows=()):
                await self._conn.execute(_INSERT_DEAD_LETTERS, *_letter_args(letters))


class PgEventStore:
    """The PostgreSQL event store, over an asyncpg pool. Create it with `open()`."""

    ping_timeout: float = 5.0  # seconds

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 2,
        migrate: bool = False,
    ) -> AsyncIterator[PgEventStore]:
        """Open a pool to `url` (and apply pending migrations when `migrate`).

        Raises StoreUnavailable when the server cannot be reached (with min_size >= 1)
        and sluice.sql.migrate.MigrationError when a migration fails.
        """
        with map_errors():
            pool = await asyncpg.create_pool(
                url,
                min_size=min_size,
                max_size=max_size,
                init=_init_connection,
                server_settings=SERVER_SETTINGS,
            )
        try:
            store = cls(pool)
            if migrate:
                await store._run(run_migrations)
            yield store
        finally:
            await pool.close()

    async def _run(
        self, work: Callable[[Any], Awaitable[T]], rows: Sequence[EventRow] | None = None
    ) -> T:
        with map_errors(rows):
            async with self._pool.acquire() as conn:
                return await work(conn)

    async def write_batch(
        self, rows: Sequence[EventRow], letters: Sequence[DeadLetter] = ()
    ) -> set[str]:
        """Store `rows` and `letters` in one transaction; return the event ids that were new."""
        if not rows and not letters:
            return set()
        with map_errors(rows):
            async with self._pool.acquire() as conn, conn.transaction():
                new = await _insert(conn, rows) if rows else set()
                if letters:
                    await conn.execute(_INSERT_DEAD_LETTERS, *_letter_args(letters))
        return new

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[PgTransaction]:
        """One connection, one transaction: committed when the block ends cleanly."""
        with map_errors(rows=()):
            async with self._pool.acquire() as conn, conn.transaction():
                yield PgTransaction(conn)

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        """Record payloads that can never be stored (one statement, one transaction)."""
        await self.write_batch((), letters)

    async def stored_ids(self, event_ids: Sequence[str]) -> set[str]:
        """Which of `event_ids` are stored."""
        query = "SELECT event_id FROM events WHERE event_id = ANY($1::text[])"
        records = await self._run(lambda conn: conn.fetch(query, list(event_ids)))
        return {record[0] for record in records}

    # --- the dead-letter queue, for `sluice dlq` ---

    async def list_letters(
        self, *, source: str | None = None, ids: Sequence[int] | None = None, pending: bool = False
    ) -> list[dict[str, Any]]:
        """Letters oldest first (all columns), by `source`, `ids`, not yet replayed."""
        query = (
            "SELECT id, source, reason, payload, attempts, event_id, correlation_id,"
            " first_seen, last_seen, replayed_at FROM dead_letters"
            " WHERE ($1::text IS NULL OR source = $1)"
            " AND ($2::bigint[] IS NULL OR id = ANY($2))"
            " AND (NOT $3 OR replayed_at IS NULL)"
            " ORDER BY id"
        )
        wanted = list(ids) if ids is not None else None
        records = await self._run(lambda conn: conn.fetch(query, source, wanted, pending))
        return [dict(record) for record in records]

    async def mark_replayed(self, ids: Sequence[int]) -> None:
        query = "UPDATE dead_letters SET replayed_at = now() WHERE id = ANY($1::bigint[])"
        await self._run(lambda conn: conn.execute(query, list(ids)))

    async def purge_letters(self, before: datetime) -> int:
        """Delete the letters last seen before `before`; returns how many."""
        query = "DELETE FROM dead_letters WHERE last_seen < $1"
        status: str = await self._run(lambda conn: conn.execute(query, before))
        return int(status.split()[-1])

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers within `ping_timeout`."""
        with map_errors():
            async with self._pool.acquire(timeout=self.ping_timeout) as conn:
                await conn.fetchval("SELECT 1", timeout=self.ping_timeout)

    async def migrations_pending(self) -> list[str]:
        """File names of the migrations not applied yet."""
        return await self._run(pending)

    async def count_events(self) -> int:
        count: int = await self._run(lambda conn: conn.fetchval("SELECT count(*) FROM events"))
        return count

    async def stored_rows(self) -> dict[str, int]:
        """Rows in `events`, by source. Read from the daily rollups, which the writers
        update in the same transaction as the rows (a count(*) would scan the table)."""
        query = "SELECT source, sum(events)::bigint FROM rollup_events_d GROUP BY source"
        records = await self._run(lambda conn: conn.fetch(query))
        return {record[0]: int(record[1]) for record in records}

    async def count_dead_letters_pending(self) -> int:
        """Dead letters not replayed yet (the DLQ size; uses the partial index)."""
        query = "SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL"
        count: int = await self._run(lambda conn: conn.fetchval(query))
        return count


if TYPE_CHECKING:

    def _implements_the_port(store: PgEventStore) -> EventStore:
        return store  # mypy checks PgEventStore against the EventStore protocol
