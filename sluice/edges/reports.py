"""PostgreSQL adapter for the reports (asyncpg): implements `sluice.reports.ReportStore`.

Each call runs its statements in one read-only REPEATABLE READ transaction, so a report
is one consistent snapshot however the writers go on. It first reads the stored events'
time extent and drops the ends of the range that lie beyond it: a range that covers every
event is answered like "all time", from the widest rollups (and the all-time entity
totals for top-N and distinct users); otherwise the range is split over the rollup grains
with raw events for the edges (`sluice.reports.plan`). The SQL is in sluice/sql/queries.

Distinct users and the top users and videos over a partial range read raw events: one
answer per (entity, sources, range) serves all of them (`report_entities_range`, one
index-only scan per source, run side by side in one exported snapshot), and the requests
that need the same one while it runs share it (`SingleFlight`), so the dashboard's five
such requests cost two answers. A shared answer is one snapshot, taken after the first of
those requests arrived; a report that also reads rollups (demographics) reads them in a
snapshot of its own.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg

from sluice.edges.store import SERVER_SETTINGS, map_errors
from sluice.reports import (
    GRAINS,
    INTERVAL_GRAIN,
    MAX_LIMIT,
    AccountTotals,
    Audience,
    AudienceRow,
    CampaignRow,
    EntityTotal,
    GroupRow,
    Scope,
    SeriesRow,
    SingleFlight,
    StoredEvent,
    Totals,
    Window,
    plan,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from decimal import Decimal

    from sluice.reports import ReportStore

__all__ = ["PgReportStore", "query"]

QUERIES_DIR = Path(__file__).resolve().parent.parent / "sql" / "queries"
AUDIENCE_GRAINS = ("d", "h")  # rollup_audience has no minute grain
STATEMENT_TIMEOUT_MS = 30_000  # a report that takes longer is a bug or an abuse
# A scan of users or videos over a week hashes ~100k keys per source: in memory, not in
# batches spilled to disk (PostgreSQL's default work_mem is 4 MB).
ENTITY_SCAN_SETTINGS = "SET LOCAL work_mem = '64MB'"
SPARE_CONNECTION_WAIT_S = 0.25  # for a second connection; past it, one scans all sources
_SNAPSHOT_ID = re.compile(r"[0-9A-F]{1,16}(-[0-9A-F]{1,16}){1,2}")


@functools.cache
def query(name: str) -> str:
    """The text of sluice/sql/queries/<name>.sql."""
    return (QUERIES_DIR / f"{name}.sql").read_text(encoding="utf-8")


def _window_args(window: Window) -> tuple[list[Any], ...]:
    return (
        [g for g, _, _ in window.rollup],
        [lo for _, lo, _ in window.rollup],
        [hi for _, _, hi in window.rollup],
        [lo for lo, _ in window.raw],
        [hi for _, hi in window.raw],
    )


@dataclass(frozen=True, slots=True)
class _Entities:
    """Users or videos in a range: how many distinct per source (read for users only),
    and the top MAX_LIMIT by events and by revenue (each top-N is a prefix of these)."""

    distinct: dict[str, int]
    by_events: list[EntityTotal]
    by_revenue: list[EntityTotal]


# (entity, sources, lo, hi) as the request gave them (before clamping to the extent)
_EntitiesKey = tuple[str, tuple[str, ...], datetime | None, datetime | None]


class PgReportStore:
    """Reports over an asyncpg pool of their own. Create it with `open()`."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._entities: SingleFlight[_EntitiesKey, _Entities] = SingleFlight()

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, url: str, *, min_size: int = 1, max_size: int = 4
    ) -> AsyncIterator[PgReportStore]:
        """Open a pool to `url` (migrations are the event store's job).

        Raises StoreUnavailable when the server cannot be reached.
        """
        settings = {**SERVER_SETTINGS, "statement_timeout": str(STATEMENT_TIMEOUT_MS)}
        with map_errors():
            pool = await asyncpg.create_pool(
                url, min_size=min_size, max_size=max_size, server_settings=settings
            )
        try:
            yield cls(pool)
        finally:
            await pool.close()

    @contextlib.asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[Any]:
        with map_errors():
            async with (
                self._pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                yield conn

    async def _clamp(
        self, conn: Any, lo: datetime | None, hi: datetime | None
    ) -> tuple[datetime | None, datetime | None]:
        """[lo, hi) with the ends beyond the stored events opened (None)."""
        first, last = await conn.fetchrow(query("report_extent"))
        if first is None:  # no events at all
            return lo, hi
        first, last = _aware(first), _aware(last)
        if lo is not None and lo <= first:
            lo = None
        if hi is not None and hi > last:
            hi = None
        return lo, hi

    # --- ReportStore -------------------------------------------------------------------

    async def totals(self, scope: Scope, *, interval: str | None, campaigns: bool) -> Totals:
        async with self._snapshot() as conn:
            lo, hi = await self._clamp(conn, scope.lo, scope.hi)
            widest = _window_args(plan(lo, hi, GRAINS))
            # A series reads grains no wider than its buckets (more rows: only then).
            fitting = (
                widest if interval is None else _window_args(plan(lo, hi, _grains_for(interval)))
            )
            filters = (list(scope.sources), scope.funnel_stage, scope.event_type)
            groups: list[GroupRow] = []
            series: list[SeriesRow] = []
            if scope.campaign_id is None:
                rows = await conn.fetch(query("report_totals"), *widest, *filters)
                groups = [
                    GroupRow(
                        r["source"],
                        r["funnel_stage"],
                        r["event_type"],
                        r["country"],
                        r["events"],
                        r["revenue"],
                        r["transactions"],
                    )
                    for r in rows
                ]
                if interval is not None:
                    rows = await conn.fetch(
                        query("report_series"),
                        *fitting,
                        *filters,
                        interval,
                        INTERVAL_GRAIN[interval],
                    )
                    series = [_series(r) for r in rows]
            campaign_rows = []
            by_campaign = (list(scope.sources), scope.campaign_id)
            if campaigns or scope.campaign_id is not None:
                rows = await conn.fetch(query("report_campaigns"), *widest, *by_campaign, None)
                campaign_rows = [r for r in rows if not r["series"]]
            if scope.campaign_id is not None and interval is not None:
                rows = await conn.fetch(query("report_campaigns"), *fitting, *by_campaign, interval)
                series = [_series(r) for r in rows if r["series"]]
        campaign_totals = [
            CampaignRow(r["source"], r["campaign_id"], r["events"], r["revenue"], r["transactions"])
            for r in campaign_rows
        ]
        if scope.campaign_id is not None:  # only this campaign's events, by source
            groups = [
                GroupRow(c.source, None, None, None, c.events, c.revenue, c.transactions)
                for c in campaign_totals
            ]
        return Totals(groups=groups, campaigns=campaign_totals, series=series)

    async def audience(self, scope: Scope) -> Audience:
        sources = list(scope.sources)
        users: dict[str, int] = {}
        rows: list[Any] = []

        async def from_rollups() -> None:
            nonlocal rows
            async with self._snapshot() as conn:
                lo, hi = await self._clamp(conn, scope.lo, scope.hi)
                rows = await conn.fetch(
                    query("report_audience"),
                    *_window_args(plan(lo, hi, AUDIENCE_GRAINS)),
                    sources,
                )
                if scope.lo is None and scope.hi is None:
                    found = await conn.fetch(query("report_users_all"), sources)
                    users.update((r["source"], r["users"]) for r in found)

        async def distinct_users_in_range() -> None:
            users.update((await self._entities_in(scope, "user")).distinct)

        if scope.lo is None and scope.hi is None:
            await from_rollups()
        else:  # the shared scan starts now, to be shared with the top lists asked with it
            await _concurrently(from_rollups, distinct_users_in_range)
        return Audience(
            rows=[
                AudienceRow(
                    r["source"],
                    r["dimension"],
                    r["value"],
                    r["country"],
                    r["events"],
                    _int(r["followers_sum"]),
                    r["followers_min"],
                    r["followers_max"],
                )
                for r in rows
            ],
            users=users,
        )

    async def top(self, scope: Scope, *, entity: str, by: str, limit: int) -> list[EntityTotal]:
        if by not in ("events", "revenue") or entity not in ("user", "video"):
            raise ValueError(f"cannot rank {entity!r} by {by!r}")
        if scope.lo is None and scope.hi is None:  # all time: an index walk, no sharing
            async with self._snapshot() as conn:
                return await _top_all(conn, entity, list(scope.sources), by, limit)
        found = await self._entities_in(scope, entity)
        ranked = found.by_revenue if by == "revenue" else found.by_events
        return ranked[:limit]

    async def _entities_in(self, scope: Scope, entity: str) -> _Entities:
        """Users or videos in scope's range, shared with the concurrent requests for the
        same (entity, sources, range)."""
        sources, lo, hi = scope.sources, scope.lo, scope.hi
        return await self._entities.run(
            (entity, sources, lo, hi), lambda: self._scan_entities(entity, sources, lo, hi)
        )

    async def _scan_entities(
        self, entity: str, sources: tuple[str, ...], lo: datetime | None, hi: datetime | None
    ) -> _Entities:
        """One scan per source, at once on as many connections as the pool can spare
        (else one after the other), all in one snapshot (exported to the others)."""
        parts: dict[str, list[Any]] = {}
        async with self._snapshot() as conn:
            start, end = await self._clamp(conn, lo, hi)
            if start is None and end is None:  # the range covers every event
                counted = await conn.fetch(query("report_users_all"), list(sources))
                return _Entities(
                    distinct={r["source"]: r["users"] for r in counted},
                    by_events=await _top_all(conn, entity, list(sources), "events", MAX_LIMIT),
                    by_revenue=await _top_all(conn, entity, list(sources), "revenue", MAX_LIMIT),
                )
            await conn.execute(ENTITY_SCAN_SETTINGS)

            async def scan(source: str, on: Any) -> None:
                parts[source] = await on.fetch(
                    query("report_entities_range"), entity, source, start, end, MAX_LIMIT
                )

            async def scan_beside(source: str, snapshot: str) -> None:
                try:
                    spare = await self._pool.acquire(timeout=SPARE_CONNECTION_WAIT_S)
                except TimeoutError:  # the pool is busy: the first connection does it
                    return
                try:
                    async with spare.transaction(isolation="repeatable_read", readonly=True):
                        await spare.execute(
                            f"SET TRANSACTION SNAPSHOT {_snapshot_literal(snapshot)}"
                        )
                        await spare.execute(ENTITY_SCAN_SETTINGS)
                        await scan(source, spare)
                finally:
                    await self._pool.release(spare)

            if len(sources) > 1:
                snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
                await _concurrently(
                    *(functools.partial(scan_beside, source, snapshot) for source in sources[1:]),
                    functools.partial(scan, sources[0], conn),
                )
            for source in sources:
                if source not in parts:
                    await scan(source, conn)
        distinct: dict[str, int] = {}
        by_events: list[list[EntityTotal]] = []
        by_revenue: list[list[EntityTotal]] = []
        for source in sources:
            lists: dict[str, list[EntityTotal]] = {"events": [], "revenue": []}
            for r in sorted(parts[source], key=lambda r: r["rank"]):
                if r["list"] == "distinct":
                    distinct[source] = r["events"]
                else:
                    lists[r["list"]].append(_entity(r, source))
            by_events.append(lists["events"])
            by_revenue.append(lists["revenue"])
        # Each list is in the database's order within its source; between sources the
        # source breaks every tie, so a merge gives the order one query over all would.
        return _Entities(
            distinct={s: n for s, n in distinct.items() if n},
            by_events=list(
                heapq.merge(*by_events, key=lambda t: (-t.events, -t.revenue, t.source))
            )[:MAX_LIMIT],
            by_revenue=list(
                heapq.merge(*by_revenue, key=lambda t: (-t.revenue, -t.events, t.source))
            )[:MAX_LIMIT],
        )

    async def account(self, account_id: str, lo: datetime, hi: datetime) -> AccountTotals:
        async with self._snapshot() as conn:
            rows = await conn.fetch(query("report_account"), account_id, lo, hi)
        by_type = {r["event_type"]: r["events"] for r in rows if not r["overall"]}
        users = next((r["users"] for r in rows if r["overall"]), 0)
        return AccountTotals(by_type=by_type, active_users=users)

    async def extent(self) -> tuple[datetime | None, datetime | None]:
        async with self._snapshot() as conn:
            first, last = await conn.fetchrow(query("report_extent"))
        return first, last

    async def event(self, event_id: str) -> bytes | None:
        with map_errors():
            async with self._pool.acquire() as conn:
                text = await conn.fetchval(query("event_get"), event_id)
        return None if text is None else text.encode()

    async def events(
        self,
        *,
        sources: tuple[str, ...],
        event_type: str | None,
        lo: datetime | None,
        hi: datetime | None,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[StoredEvent]:
        cursor_at, cursor_id = after if after is not None else (None, None)
        with map_errors():
            async with self._pool.acquire() as conn:
                rows = await conn.fetch(
                    query("event_page"),
                    cursor_at,
                    cursor_id,
                    lo,
                    hi,
                    list(sources),
                    event_type,
                    limit,
                )
        return [
            StoredEvent(_aware(r["occurred_at"]), r["event_id"], r["json"].encode()) for r in rows
        ]


async def _top_all(
    conn: Any, entity: str, sources: list[str], by: str, limit: int
) -> list[EntityTotal]:
    rows = await conn.fetch(query(f"report_top_all_{by}"), entity, sources, limit)
    return [_entity(r) for r in rows]


def _entity(record: Any, source: str | None = None) -> EntityTotal:
    return EntityTotal(
        source or record["source"],
        record["key"],
        record["events"],
        record["revenue"],
        record["transactions"],
    )


async def _concurrently(*works: Callable[[], Awaitable[None]]) -> None:
    """Runs the works side by side; raises the first one's Exception as itself (not in
    an ExceptionGroup), after all have ended."""
    errors: list[Exception] = []

    async def guarded(work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        except Exception as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for work in works:
            tg.start_soon(guarded, work)
    if errors:
        raise errors[0]


def _snapshot_literal(snapshot: str) -> str:
    """The quoted id of an exported snapshot (what `pg_export_snapshot()` returns, e.g.
    00000003-0000001B-1): SET TRANSACTION SNAPSHOT takes no parameters, so the id is
    written into the statement, and only in this shape (hex digits and dashes).

    Raises ValueError for anything else.
    """
    if not _SNAPSHOT_ID.fullmatch(snapshot):
        raise ValueError(f"not a snapshot id: {snapshot!r}")
    return f"'{snapshot}'"


def _grains_for(interval: str | None) -> tuple[str, ...]:
    """The grains whose buckets fit in one series bucket (all of them without a series)."""
    if interval is None:
        return GRAINS
    return GRAINS[GRAINS.index(INTERVAL_GRAIN[interval]) :]


def _series(record: Any) -> SeriesRow:
    return SeriesRow(
        _aware(record["bucket"]), record["events"], record["revenue"], record["transactions"]
    )


def _aware(moment: datetime) -> datetime:
    """asyncpg reads PostgreSQL's +-infinity as a naive datetime.max/min; the webhook no
    longer accepts those instants, but rows stored before it refused them may hold them."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _int(value: Decimal | None) -> int | None:
    return None if value is None else int(value)


if TYPE_CHECKING:

    def _implements_the_port(store: PgReportStore) -> ReportStore:
        return store  # mypy checks PgReportStore against the ReportStore protocol
