"""Report latency at scale: load N events the way the writer stores them, time every report.

    .venv/bin/python bench/reports.py                      # 5,000,000 events over 30 days
    .venv/bin/python bench/reports.py --events 1000000 --repeat 20
    .venv/bin/python bench/reports.py --database-url postgresql://...  # an existing server
    .venv/bin/python bench/reports.py --keep DIR           # keep the loaded database in DIR

Events (facebook, tiktok and 5% generic; 200k users per ad source with a long-tailed
activity, 50k videos, 40 campaigns, 6 countries) with timestamps spread over the last
`--days` days are generated in memory and written through `PgEventStore.write_batch` in
transactions of 20,000 rows from two concurrent writers, so the rollups are built exactly
as in production. Then, after VACUUM ANALYZE, each report is requested `--repeat` times
through the real Quart app (test client, no network) over a PgReportStore, and p50/p95
are recorded to bench/results/<date>-reports.json. Ranges: "all" (no from/to: the full
range), "covering" (explicit from/to around every event: answered like all), "week" (7
unaligned days in the middle: rollups plus raw edges, raw events for distinct counts and
top users/videos).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._support import BenchPostgres, machine, write_result
from sluice.config import Settings
from sluice.edges.reports import PgReportStore
from sluice.edges.store import PgEventStore
from sluice.http.app import HttpDeps, create_app
from sluice.http.health import Health
from sluice.metrics import Metrics
from sluice.ports import EventRow
from sluice.publish.events import COUNTRIES, EVENT_TYPES

BATCH = 20_000
GENERIC_TYPES = ("login", "page.view", "signup", "export", "invite")
_encode = msgspec.json.Encoder().encode


class Maker:
    """Events as rows, with the hot columns parse_event would give them."""

    def __init__(self, seed: int, start: datetime, seconds: float) -> None:
        self.rng = random.Random(seed)
        self.start = start
        self.seconds = seconds
        self.received = datetime.now(UTC)
        self.n = 0

    def _id(self, population: int) -> int:
        """Log-uniform over [0, population): a few very active ids, a long tail."""
        return int(population ** self.rng.random()) - 1

    def row(self) -> EventRow:
        rng = self.rng
        self.n += 1
        event_id = f"e{self.n:09d}"
        at = self.start + timedelta(seconds=rng.uniform(0, self.seconds))
        pick = rng.random()
        if pick < 0.05:
            return self._generic(event_id, at)
        source = "facebook" if pick < 0.55 else "tiktok"
        stage = "top" if rng.random() < 0.7 else "bottom"
        types = EVENT_TYPES[source, stage]
        event_type = rng.choice(types)
        user_id = f"{source[:2]}_{self._id(200_000)}"
        amount = None
        if event_type in ("checkout.complete", "purchase"):
            amount = Decimal(f"{rng.randrange(1, 50_000)}.{rng.randrange(100):02d}")
        video = f"v{self._id(50_000)}" if stage == "top" and event_type == "video.view" else None
        if source == "tiktok" and stage == "top":
            video = f"v{self._id(50_000)}"
        country = rng.choice(list(COUNTRIES))
        if source == "facebook":
            city = rng.choice(COUNTRIES[country])
            campaign = f"cmp_{rng.randrange(40)}" if stage == "bottom" else None
            data = {
                "eventId": event_id,
                "timestamp": at.isoformat(),
                "source": source,
                "funnelStage": stage,
                "eventType": event_type,
                "data": {
                    "user": {
                        "userId": user_id,
                        "name": "Ada Byrne",
                        "age": rng.randint(16, 75),
                        "gender": rng.choice(("male", "female", "non-binary")),
                        "location": {"country": country, "city": city},
                    },
                    "engagement": {"campaignId": campaign, "purchaseAmount": str(amount)}
                    if stage == "bottom"
                    else {"referrer": "newsfeed", "videoId": video},
                },
            }
            user = data["data"]["user"]  # type: ignore[index]
            return EventRow(
                event_id, source, stage, event_type, at, self.received, user_id, country,
                campaign, amount, None, _encode(data).decode(), revenue=amount,
                age=user["age"], gender=user["gender"], city=city, video_id=video,
            )  # fmt: skip
        followers = int(rng.paretovariate(0.6) * 50) % 5_000_000
        device = rng.choice(("Android", "iOS", "Desktop")) if stage == "top" else None
        data = {
            "eventId": event_id,
            "timestamp": at.isoformat(),
            "source": source,
            "funnelStage": stage,
            "eventType": event_type,
            "data": {
                "user": {"userId": user_id, "username": "@cat12", "followers": followers},
                "engagement": {"device": device, "country": country, "videoId": video}
                if stage == "top"
                else {"purchaseAmount": None if amount is None else str(amount)},
            },
        }
        return EventRow(
            event_id, source, stage, event_type, at, self.received, user_id,
            country if stage == "top" else None, None, amount, None, _encode(data).decode(),
            revenue=amount if event_type == "purchase" else None, followers=followers,
            device=device, video_id=video,
        )  # fmt: skip

    def _generic(self, event_id: str, at: datetime) -> EventRow:
        rng = self.rng
        account = f"acc_{self._id(50)}"
        user = f"u{rng.randrange(5000)}"
        kind = rng.choice(GENERIC_TYPES)
        data = {
            "event_id": event_id,
            "account_id": account,
            "user_id": user,
            "type": kind,
            "timestamp": at.isoformat(),
            "metadata": {"plan": "pro"},
        }
        return EventRow(
            event_id, "generic", None, kind, at, self.received, user, None, None, None, None,
            _encode(data).decode(), account_id=account,
        )  # fmt: skip


async def load(url: str, events: int, days: int, *, quiet: bool = False) -> dict[str, Any]:
    end = datetime.now(UTC)
    maker = Maker(7, end - timedelta(days=days), days * 86400)
    queue: asyncio.Queue[list[EventRow] | None] = asyncio.Queue(maxsize=4)
    started = time.perf_counter()

    async def produce() -> None:
        left = events
        while left > 0:
            n = min(BATCH, left)
            await queue.put([maker.row() for _ in range(n)])
            left -= n
            await asyncio.sleep(0)
        for _ in range(2):
            await queue.put(None)

    stored = 0

    async def write(store: PgEventStore) -> None:
        nonlocal stored
        while (batch := await queue.get()) is not None:
            new = await store.write_batch(batch)
            stored += len(new)
            if not quiet and stored % 500_000 < BATCH:
                rate = stored / (time.perf_counter() - started)
                print(f"  loaded {stored:,} events ({rate:,.0f}/s)", flush=True)

    async with PgEventStore.open(url, max_size=2, migrate=True) as store:
        await asyncio.gather(produce(), write(store), write(store))
    seconds = time.perf_counter() - started
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("VACUUM ANALYZE")
        sizes = {
            table: await conn.fetchval(f"SELECT count(*) FROM {table}")
            for table in (
                "events",
                "rollup_events",
                "rollup_campaigns",
                "rollup_audience",
                "entity_totals",
            )
        }
        sizes["database_bytes"] = await conn.fetchval("SELECT pg_database_size(current_database())")
    finally:
        await conn.close()
    return {
        "events": stored,
        "days": days,
        "load_seconds": round(seconds, 1),
        "load_events_per_s": round(stored / seconds),
        "note": "generation and write_batch (2 writers, 20k-row transactions) in one process",
        "rows": sizes,
    }


def cases(
    first: datetime, last: datetime, some_event: str, mid_cursor: str
) -> list[tuple[str, str, dict[str, str]]]:
    covering = {
        "from": (first - timedelta(days=1)).isoformat(),
        "to": (last + timedelta(days=1)).isoformat(),
    }
    middle = first + (last - first) / 2
    week = {
        "from": (middle - timedelta(days=3, seconds=17)).isoformat(),
        "to": (middle + timedelta(days=4, seconds=29)).isoformat(),
    }
    reports: list[tuple[str, str, dict[str, str]]] = [
        ("events", "/reports/events", {}),
        ("events interval=day", "/reports/events", {"interval": "day"}),
        ("events interval=hour", "/reports/events", {"interval": "hour", "groupBy": "source"}),
        (
            "events groupBy=all 4",
            "/reports/events",
            {"groupBy": "source,funnelStage,eventType,country"},
        ),
        ("revenue interval=day", "/reports/revenue", {"interval": "day"}),
        ("revenue campaignId", "/reports/revenue", {"campaignId": "cmp_7"}),
        ("demographics", "/reports/demographics", {}),
        ("funnel", "/reports/funnel", {}),
        ("countries", "/reports/countries", {}),
        ("top campaigns by revenue", "/reports/top", {"entity": "campaigns", "by": "revenue"}),
        ("top users by events", "/reports/top", {"entity": "users"}),
        ("top users by revenue", "/reports/top", {"entity": "users", "by": "revenue"}),
        ("top videos by events", "/reports/top", {"entity": "videos"}),
    ]
    out = [(f"all: {name}", path, params) for name, path, params in reports]
    out += [(f"covering: {name}", path, {**params, **covering}) for name, path, params in reports]
    out += [(f"week: {name}", path, {**params, **week}) for name, path, params in reports]
    out += [
        ("account summary (24 h)", "/reports/accounts/acc_7/summary", {}),
        ("event by id", f"/events/{some_event}", {}),
        ("events page 1 (100)", "/events", {"limit": "100"}),
        ("events page in the middle (100)", "/events", {"limit": "100", "cursor": mid_cursor}),
    ]
    return out


async def time_reports(url: str, repeat: int, *, quiet: bool = False) -> dict[str, Any]:
    from sluice.reports import build

    conn = await asyncpg.connect(url)
    try:
        first, last = await conn.fetchrow("SELECT min(occurred_at), max(occurred_at) FROM events")
        some = await conn.fetchval("SELECT event_id FROM events ORDER BY event_id DESC LIMIT 1")
        mid = await conn.fetchrow(
            "SELECT occurred_at, event_id FROM events WHERE occurred_at >= $1"
            " ORDER BY occurred_at, event_id LIMIT 1",
            first + (last - first) / 2,
        )
    finally:
        await conn.close()
    cursor = build.encode_cursor(mid["occurred_at"], mid["event_id"])
    results: dict[str, Any] = {}
    async with PgReportStore.open(url) as reports:
        app = create_app(HttpDeps(Settings(), Metrics(), Health(), reports=reports))
        client = app.test_client()
        for name, path, params in cases(first, last, some, cursor):
            timings = []
            # Partial ranges that read raw events take seconds at full size: fewer runs.
            slow = name.startswith("week: ") and (
                "demographics" in name or "users" in name or "videos" in name
            )
            for i in range((max(5, repeat // 8) if slow else repeat) + 3):
                started = time.perf_counter()
                response = await client.get(path, query_string=params)
                elapsed = time.perf_counter() - started
                assert response.status_code == 200, (name, await response.get_data())
                if i >= 3:  # the first calls warm caches and prepare statements
                    timings.append(elapsed * 1000)
            timings.sort()
            results[name] = {
                "p50_ms": round(statistics.median(timings), 2),
                "p95_ms": round(timings[max(0, round(0.95 * len(timings)) - 1)], 2),
                "n": len(timings),
                "bytes": len(await response.get_data()),
            }
            row = results[name]
            if not quiet:
                print(
                    f"  {name:45s} p50 {row['p50_ms']:8.2f} ms  p95 {row['p95_ms']:8.2f} ms",
                    flush=True,
                )
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=40)
    parser.add_argument("--database-url", help="use this server (a scratch database is made)")
    parser.add_argument("--keep", type=Path, help="data directory to keep the loaded server in")
    parser.add_argument("--name", default="reports", help="results file: <date>-<name>.json")
    parser.add_argument("--reuse", action="store_true", help="time an already loaded --keep DIR")
    args = parser.parse_args()
    info = machine()
    print(f"machine: {info['cores']} cores, {info['memory_gb']} GiB, {info['cpu']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="sluice-reports-") as tmp:
        server = None
        if args.database_url:
            admin = await asyncpg.connect(args.database_url)
            name = f"bench_{uuid.uuid4().hex[:8]}"
            await admin.execute(f'CREATE DATABASE "{name}"')
            url = args.database_url.rsplit("/", 1)[0] + f"/{name}"
        else:
            server = BenchPostgres(args.keep or Path(tmp))
            url = server.start()
        try:
            loaded: dict[str, Any] = {"reused": True}
            if not args.reuse:
                print(f"loading {args.events:,} events over {args.days} days ...", flush=True)
                loaded = await load(url, args.events, args.days)
                print(f"loaded: {loaded}", flush=True)
            timings = await time_reports(url, args.repeat)
        finally:
            if server is not None:
                server.stop()
            if args.database_url:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                await admin.close()
    result = {"machine": info, "load": loaded, "repeat": args.repeat, "reports": timings}
    path = write_result(args.name, result)
    worst = max(
        timings.items(),
        key=lambda kv: kv[1]["p95_ms"] if kv[0].startswith(("all", "covering")) else 0,
    )
    print(f"written {path}; worst full-range p95: {worst[0]} {worst[1]['p95_ms']} ms")


if __name__ == "__main__":
    asyncio.run(main())
