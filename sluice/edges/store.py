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

    from sluice.ports import EventStore

__all__ = ["PgEventStore"]

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

_INSERT_DEAD_LETTERS = """
INSERT INTO dead_letters (source, reason, payload, attempts)
SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::integer[])
"""

# SQLSTATE classes meaning "these values are wrong": data exception, integrity
# constraint violation, program limit exceeded (e.g. an event_id too long to index).
_REJECT_CLASSES = ("22", "23", "54")

# asyncpg/OS failures meaning "no usable connection": connect refused or timed out,
# connection lost, pool closed, server shutting down or not accepting connections yet.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.InterfaceError,
    OSError,  # includes ConnectionError and TimeoutError
)

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
def _mapped(
    rows: Sequence[EventRow] | None = None, staged: Sequence[EventRow] = ()
) -> Iterator[None]:
    """Translate asyncpg/OS errors into StoreUnavailable / RowsRejected.

    Data errors become RowsRejected(reason, rows) only where rows are written
    (`rows` given); elsewhere they propagate unchanged.
    """
    try:
        yield
    except (StoreUnavailable, RowsRejected):
        raise
    except asyncpg.exceptions._base.DataError as exc:  # client side: a value won't encode
        if rows is None:
            raise
        raise RowsRejected(_describe(exc), tuple(rows)) from exc
    except _UNAVAILABLE as exc:
        raise StoreUnavailable(_describe(exc)) from exc
    except asyncpg.PostgresError as exc:
        state = exc.sqlstate or ""
        if not state.startswith(_REJECT_CLASSES):
            # Anything else (missing table, serialization failure, disk full, ...) is not
            # the rows' fault: retrying later may succeed, so never drop them.
            raise StoreUnavailable(_describe(exc)) from exc
        if rows is None:
            raise
        reason = _describe(exc)
        context = getattr(exc, "context", None) or ""
        match = _COPY_LINE.search(context)
        if match and 1 <= int(match.group(1)) <= len(staged):
            reason += f" [{context}; event_id={staged[int(match.group(1)) - 1].event_id!r}]"
        raise RowsRejected(reason, tuple(rows)) from exc
    except (TypeError, ValueError) as exc:  # binary COPY: a value of the wrong type
        if rows is None:
            raise
        raise RowsRejected(f"{type(exc).__name__}: {exc}", tuple(rows)) from exc


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
        with _mapped():
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
        with _mapped(rows):
            async with self._pool.acquire() as conn:
                return await work(conn)

    async def write_batch(self, rows: Sequence[EventRow]) -> set[str]:
        """Store `rows` in one transaction; return the event ids that were new."""
        if not rows:
            return set()
        staged = _unique_by_event_id(rows)
        records = [astuple(r) for r in staged]  # fields in COLUMNS order (checked below)
        with _mapped(rows, staged):
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.copy_records_to_table(STAGING_TABLE, records=records, columns=COLUMNS)
                new = await conn.fetch(_INSERT_NEW)
        return {rec[0] for rec in new}

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        """Record payloads that can never be stored (one statement, one transaction)."""
        if not letters:
            return

        def text(value: str) -> str:  # PostgreSQL text cannot hold NUL; never lose a letter
            return value.replace("\x00", "\ufffd")

        args = (
            [text(d.source) for d in letters],
            [text(d.reason) for d in letters],
            [d.payload for d in letters],
            [d.attempts for d in letters],
        )
        # A refusal here (e.g. attempts out of range) is RowsRejected with no rows.
        await self._run(lambda conn: conn.execute(_INSERT_DEAD_LETTERS, *args), rows=())

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers within `ping_timeout`."""
        with _mapped():
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
