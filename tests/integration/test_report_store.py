"""Rollups kept by write_batch, and PgReportStore, against a real PostgreSQL."""

from __future__ import annotations

import random
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import msgspec
import pytest

from sluice.edges.reports import PgReportStore
from sluice.edges.store import PgEventStore
from sluice.ports import EventRow
from sluice.reports import Audience, EntityTotal, Scope
from sluice.sources import parse_event
from sluice.sql.migrate import MIGRATIONS_DIR, migrate
from tests.factories import make_event, make_events

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

NOW = datetime(2025, 3, 10, 12, 30, tzinfo=UTC)
RECEIVED = datetime(2025, 3, 10, 13, tzinfo=UTC)

# Each rollup as it must be: recomputed from the stored events (what migration 002's
# backfill does), compared with what the writers kept incrementally.
RECOMPUTED = {
    "rollup_events": """
        SELECT g.grain, date_trunc(g.unit, e.occurred_at, 'UTC') AS bucket, e.source,
               e.funnel_stage, e.event_type, e.country, count(*) AS events,
               coalesce(sum(e.revenue), 0) AS revenue, count(e.revenue) AS transactions
        FROM events e CROSS JOIN (VALUES ('m'::"char", 'minute'), ('h', 'hour'), ('d', 'day'))
            g (grain, unit)
        GROUP BY 1, 2, 3, 4, 5, 6""",
    "rollup_series": """
        SELECT g.grain, date_trunc(g.unit, e.occurred_at, 'UTC') AS bucket, e.source,
               e.funnel_stage, e.event_type, count(*) AS events,
               coalesce(sum(e.revenue), 0) AS revenue, count(e.revenue) AS transactions
        FROM events e CROSS JOIN (VALUES ('m'::"char", 'minute'), ('h', 'hour'), ('d', 'day'))
            g (grain, unit)
        GROUP BY 1, 2, 3, 4, 5""",
    "rollup_campaigns": """
        SELECT g.grain, date_trunc(g.unit, e.occurred_at, 'UTC') AS bucket, e.source,
               e.campaign_id, count(*), coalesce(sum(e.revenue), 0), count(e.revenue)
        FROM events e CROSS JOIN (VALUES ('m'::"char", 'minute'), ('h', 'hour'), ('d', 'day'))
            g (grain, unit)
        WHERE e.campaign_id IS NOT NULL
        GROUP BY 1, 2, 3, 4""",
    "rollup_audience": """
        SELECT g.grain, date_trunc(g.unit, e.occurred_at, 'UTC'), e.source, a.dimension,
               a.value, a.city_country, count(*),
               sum(e.followers) FILTER (WHERE a.dimension = 'followers'),
               min(e.followers) FILTER (WHERE a.dimension = 'followers'),
               max(e.followers) FILTER (WHERE a.dimension = 'followers')
        FROM events e
        CROSS JOIN LATERAL sluice_audience(sluice_age_range(e.age), e.gender, e.country,
                                           e.city, sluice_followers_range(e.followers),
                                           e.device) a
        CROSS JOIN (VALUES ('h'::"char", 'hour'), ('d', 'day')) g (grain, unit)
        GROUP BY 1, 2, 3, 4, 5, 6""",
    "entity_totals": """
        SELECT x.entity, x.source, x.key, count(*), coalesce(sum(x.revenue), 0),
               count(x.revenue)
        FROM (SELECT 'user' AS entity, source, user_id AS key, revenue FROM events
              WHERE user_id IS NOT NULL
              UNION ALL
              SELECT 'video', source, video_id, revenue FROM events
              WHERE video_id IS NOT NULL) x
        GROUP BY 1, 2, 3""",
    "entity_counts": """
        SELECT x.entity, x.source, count(DISTINCT x.key)
        FROM (SELECT 'user' AS entity, source, user_id AS key FROM events
              WHERE user_id IS NOT NULL
              UNION ALL
              SELECT 'video', source, video_id FROM events WHERE video_id IS NOT NULL) x
        GROUP BY 1, 2""",
}


def rows_of(events: list[dict[str, object]]) -> list[EventRow]:
    return [
        parse_event(
            str(e.get("source", "generic")),
            msgspec.json.encode(e),
            received_at=RECEIVED,
            correlation_id=None,
        )
        for e in events
    ]


def generic(i: int, rng: random.Random) -> dict[str, object]:
    return {
        "event_id": f"g-{i}",
        "account_id": rng.choice(["a1", "a2"]),
        "user_id": f"u{rng.randrange(4)}",
        "type": rng.choice(["login", "view"]),
        "timestamp": (NOW - timedelta(minutes=rng.randrange(3000))).isoformat(),
        "metadata": {},
    }


@pytest.fixture
async def store(fresh_database_url: str) -> AsyncIterator[PgEventStore]:
    async with PgEventStore.open(fresh_database_url, max_size=4, migrate=True) as opened:
        yield opened


@pytest.fixture
async def reports(store: PgEventStore, fresh_database_url: str) -> AsyncIterator[PgReportStore]:
    async with PgReportStore.open(fresh_database_url) as opened:
        yield opened


def _normal(records: list[asyncpg.Record]) -> list[tuple[object, ...]]:
    """Rows comparable whatever the numeric scale (10.5 vs 10.50), in a fixed order."""
    rows = [
        tuple(v.normalize() if isinstance(v, Decimal) else v for v in record) for record in records
    ]
    return sorted(rows, key=repr)


async def assert_rollups_exact(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for table, recompute in RECOMPUTED.items():
            kept = _normal(await conn.fetch(f"SELECT * FROM {table}"))
            assert kept == _normal(await conn.fetch(recompute)), table
    finally:
        await conn.close()


async def test_rollups_count_each_event_once_whatever_the_duplicates(
    store: PgEventStore, fresh_database_url: str
) -> None:
    rng = random.Random(5)
    rows = rows_of(make_events(600, seed=5, now=NOW) + [generic(i, rng) for i in range(40)])
    batches = [rng.sample(rows, 150) for _ in range(12)] + [rows]
    async with anyio.create_task_group() as tg:  # concurrent writers, overlapping batches
        for batch in batches:
            tg.start_soon(store.write_batch, batch)
    assert await store.write_batch(rows) == set()  # all stored already: nothing new
    await assert_rollups_exact(fresh_database_url)


async def migrate_up_to(conn: Any, directory: Path, last: int) -> None:
    """Apply the migrations numbered up to `last` only (copied into `directory`)."""
    for path in MIGRATIONS_DIR.glob("[0-9][0-9][0-9]_*.sql"):
        if int(path.name[:3]) <= last:
            shutil.copy(path, directory)
    await migrate(conn, directory=directory)


async def test_the_report_migrations_backfill_what_was_stored_before_them(
    fresh_database_url: str, tmp_path: Path
) -> None:
    rows = rows_of(
        make_events(200, seed=8, now=NOW) + [generic(i, random.Random(1)) for i in range(9)]
    )
    conn = await asyncpg.connect(fresh_database_url)
    try:
        await migrate_up_to(conn, tmp_path, 1)
        await conn.executemany(
            "INSERT INTO events (event_id, source, funnel_stage, event_type, occurred_at,"
            " received_at, user_id, country, campaign_id, purchase_amount, data)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            [
                (r.event_id, r.source, r.funnel_stage, r.event_type, r.occurred_at,
                 r.received_at, r.user_id, r.country, r.campaign_id, r.purchase_amount, r.data)
                for r in rows
            ],
        )  # fmt: skip
        await migrate(conn)
        hot = await conn.fetch(
            "SELECT event_id, revenue, account_id, age, gender, city, followers, device,"
            " video_id FROM events"
        )
    finally:
        await conn.close()
    by_id = {r.event_id: r for r in rows}
    for record in hot:
        row = by_id[record["event_id"]]
        assert tuple(record)[1:] == (
            row.revenue, row.account_id, row.age, row.gender, row.city, row.followers,
            row.device, row.video_id,
        )  # fmt: skip
    await assert_rollups_exact(fresh_database_url)


async def test_a_range_covering_everything_reads_like_all_time(
    store: PgEventStore, reports: PgReportStore
) -> None:
    await store.write_batch(rows_of(make_events(300, seed=2, now=NOW)))
    sources = ("facebook", "tiktok")
    everything = Scope(None, None, sources)
    covering = Scope(NOW - timedelta(days=3), NOW + timedelta(days=3), sources)
    unaligned = Scope(NOW - timedelta(days=3, seconds=1), NOW + timedelta(seconds=1), sources)
    for scope in (covering, unaligned):
        assert await reports.totals(scope, interval="hour", campaigns=True) == await reports.totals(
            everything, interval="hour", campaigns=True
        )
        assert await reports.audience(scope) == await reports.audience(everything)
        for entity in ("user", "video"):
            assert await reports.top(scope, entity=entity, by="revenue", limit=5) == (
                await reports.top(everything, entity=entity, by="revenue", limit=5)
            )
    empty = await reports.totals(Scope(NOW, NOW, sources), interval="day", campaigns=True)
    assert (empty.groups, empty.campaigns, empty.series) == ([], [], [])


async def test_extent_spans_the_stored_events(store: PgEventStore, reports: PgReportStore) -> None:
    assert await reports.extent() == (None, None)
    rows = rows_of(make_events(50, seed=4, now=NOW))
    await store.write_batch(rows)
    stamps = [row.occurred_at for row in rows]
    assert await reports.extent() == (min(stamps), max(stamps))


async def test_an_event_comes_back_with_received_at(
    store: PgEventStore, reports: PgReportStore
) -> None:
    [row] = rows_of([make_event("tiktok", "bottom", "e-1", extra={"kept": 1})])
    await store.write_batch([row])
    stored = msgspec.json.decode(await reports.event("e-1") or b"")
    assert stored.pop("receivedAt") == "2025-03-10T13:00:00.000000Z"
    assert stored == msgspec.json.decode(row.data)
    assert await reports.event("nope") is None


async def test_pages_neither_repeat_nor_skip_under_concurrent_inserts(
    store: PgEventStore, reports: PgReportStore
) -> None:
    first = rows_of(make_events(120, seed=3, now=NOW))
    await store.write_batch(first)
    seen: list[str] = []
    keys: list[tuple[datetime, str]] = []
    after = None
    extra = 0
    while True:
        page = await reports.events(
            sources=("facebook", "tiktok", "generic"),
            event_type=None,
            lo=None,
            hi=None,
            after=after,
            limit=7,
        )
        seen += [e.event_id for e in page]
        keys += [(e.occurred_at, e.event_id) for e in page]
        if not page:
            break
        after = (page[-1].occurred_at, page[-1].event_id)
        # Meanwhile: new events, before and after the cursor, some with tied timestamps.
        new = make_events(3, seed=100 + extra, now=NOW)
        extra += 1
        new[0]["timestamp"] = page[-1].occurred_at.isoformat()
        await store.write_batch(rows_of(new))
    assert len(seen) == len(set(seen)), "an event came twice"
    assert {r.event_id for r in first} <= set(seen), "an event was skipped"
    assert keys == sorted(keys)


def pooled_rows(n: int, seed: int) -> list[EventRow]:
    """Events over three days from small user and video pools (so rankings tie and
    collide), amounts on the revenue types."""
    rng = random.Random(seed)
    events = make_events(n, seed=seed, now=NOW)
    for e in events:
        e["timestamp"] = (NOW - timedelta(seconds=rng.uniform(0, 3 * 86400))).isoformat()
        e["data"]["user"]["userId"] = f"{e['source'][:2]}_{rng.randrange(25)}"
        if e["data"]["engagement"].get("videoId") is not None:
            e["data"]["engagement"]["videoId"] = f"v{rng.randrange(12)}"
    return rows_of(events)


def plain_entities(
    rows: list[EventRow], scope: Scope, entity: str
) -> tuple[dict[str, int], dict[str, list[EntityTotal]]]:
    """Distinct keys per source and both rankings, computed from the rows in scope."""
    acc: dict[tuple[str, str], list[Any]] = {}
    for r in rows:
        key = r.user_id if entity == "user" else r.video_id
        if r.source not in scope.sources or key is None:
            continue
        if (scope.lo is not None and r.occurred_at < scope.lo) or (
            scope.hi is not None and r.occurred_at >= scope.hi
        ):
            continue
        entry = acc.setdefault((r.source, key), [0, Decimal(0), 0])
        entry[0] += 1
        if r.revenue is not None:
            entry[1] += r.revenue
            entry[2] += 1
    totals = [EntityTotal(s, k, v[0], v[1], v[2]) for (s, k), v in acc.items()]
    distinct: dict[str, int] = {}
    for t in totals:
        distinct[t.source] = distinct.get(t.source, 0) + 1
    by_events = sorted(totals, key=lambda t: (-t.events, -t.revenue, t.source, t.key))
    by_revenue = sorted(
        (t for t in totals if t.transactions),
        key=lambda t: (-t.revenue, -t.events, t.source, t.key),
    )
    return distinct, {"events": by_events, "revenue": by_revenue}


async def test_partial_range_users_and_videos_asked_at_once_equal_a_plain_computation(
    store: PgEventStore, reports: PgReportStore
) -> None:
    rows = pooled_rows(900, seed=11)
    await store.write_batch(rows)
    mid = NOW - timedelta(days=1, minutes=17, seconds=3)
    scopes = [
        Scope(mid - timedelta(hours=30), mid, ("facebook", "tiktok")),
        Scope(mid, None, ("tiktok",)),
        Scope(None, mid, ("facebook",)),
        Scope(mid, mid + timedelta(minutes=1), ("facebook", "tiktok")),  # a few events
        Scope(NOW + timedelta(days=1), None, ("facebook", "tiktok")),  # none
    ]
    asked: list[tuple[Scope, str, str, int]] = [
        (scope, entity, by, limit)
        for scope in scopes
        for entity in ("user", "video")
        for by in ("events", "revenue")
        for limit in (1, 3, 1000)
    ]
    tops: dict[tuple[Scope, str, str, int], list[EntityTotal]] = {}
    audiences: dict[Scope, Audience] = {}

    async def top(scope: Scope, entity: str, by: str, limit: int) -> None:
        tops[scope, entity, by, limit] = await reports.top(scope, entity=entity, by=by, limit=limit)

    async def audience(scope: Scope) -> None:
        audiences[scope] = await reports.audience(scope)

    for _ in range(2):  # all at once (they share scans), then again (fresh scans)
        async with anyio.create_task_group() as tg:
            for args in asked:
                tg.start_soon(top, *args)
            for scope in scopes:
                tg.start_soon(audience, scope)
        for scope, entity, by, limit in asked:
            distinct, ranked = plain_entities(rows, scope, entity)
            got = tops[scope, entity, by, limit]
            assert _money(got) == _money(ranked[by][:limit]), (scope, entity, by, limit)
            if entity == "user":
                assert audiences[scope].users == distinct, scope
    assert any(len(t) == 3 for t in tops.values()) and any(len(t) > 3 for t in tops.values())
    assert any(a.users for a in audiences.values())


@pytest.mark.parametrize("connections", [1, 2])
async def test_with_no_spare_connection_the_sources_are_scanned_one_after_the_other(
    store: PgEventStore, fresh_database_url: str, connections: int
) -> None:
    rows = pooled_rows(400, seed=12)
    await store.write_batch(rows)
    scope = Scope(NOW - timedelta(days=2, minutes=5), NOW, ("facebook", "tiktok"))
    async with PgReportStore.open(fresh_database_url, max_size=connections) as reports:
        for entity in ("user", "video"):
            _, ranked = plain_entities(rows, scope, entity)
            for by in ("events", "revenue"):
                got = await reports.top(scope, entity=entity, by=by, limit=1000)
                assert _money(got) == _money(ranked[by]), (entity, by)
                if entity == "user":  # both sources, merged
                    assert {t.source for t in got} == {"facebook", "tiktok"}
        distinct, _ = plain_entities(rows, scope, "user")
        assert (await reports.audience(scope)).users == distinct


async def test_demographics_start_the_shared_scan_without_waiting_for_their_rollups(
    store: PgEventStore, reports: PgReportStore, fresh_database_url: str
) -> None:
    """Over a partial range demographics' distinct users come from the scan the top lists
    share: it must start with the request, not after its rollups are read, or a top list
    asked at the same time has ended its scan by then and a second one runs."""
    rows = pooled_rows(400, seed=13)
    await store.write_batch(rows)
    scope = Scope(NOW - timedelta(days=2, minutes=5), NOW, ("facebook", "tiktok"))
    scan_asked = anyio.Event()
    shared = reports._entities
    run = shared.run

    async def spied(key: Any, work: Any) -> Any:
        scan_asked.set()
        return await run(key, work)

    shared.run = spied  # type: ignore[method-assign]
    locker = await asyncpg.connect(fresh_database_url)
    answers: list[Audience] = []

    async def ask() -> None:
        answers.append(await reports.audience(scope))

    try:
        async with anyio.create_task_group() as tg:
            async with locker.transaction():
                await locker.execute("LOCK TABLE rollup_audience IN ACCESS EXCLUSIVE MODE")
                tg.start_soon(ask)
                with anyio.fail_after(10):  # the rollups cannot be read until the lock goes
                    await scan_asked.wait()
                assert not answers
    finally:
        await locker.close()
    distinct, _ = plain_entities(rows, scope, "user")
    assert [a.users for a in answers] == [distinct]


def _money(totals: list[EntityTotal]) -> list[tuple[object, ...]]:
    return [(t.source, t.key, t.events, t.revenue.normalize(), t.transactions) for t in totals]


async def test_the_covering_index_can_be_built_beforehand_without_a_lock(
    fresh_database_url: str, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(fresh_database_url)
    try:
        await migrate_up_to(conn, tmp_path, 6)
        await conn.execute(
            "CREATE INDEX CONCURRENTLY events_source_occurred_at_covering_idx"
            " ON events (source, occurred_at) INCLUDE (user_id, video_id, revenue)"
        )
        assert await migrate(conn) == ["007_events_covering_index.sql"]
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes"
            " WHERE tablename = 'events' AND indexname LIKE 'events_source%'"
        )
    finally:
        await conn.close()
    assert [(i["indexname"], i["indexdef"].split(" USING ")[1]) for i in indexes] == [
        (
            "events_source_occurred_at_covering_idx",
            "btree (source, occurred_at) INCLUDE (user_id, video_id, revenue)",
        )
    ]
