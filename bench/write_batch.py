"""write_batch throughput: rows/s through PgEventStore.write_batch (COPY + INSERT + rollups).

    .venv/bin/python bench/write_batch.py DATABASE_URL [--rows 200000] [--batch 5000]
        [--writers 2] [--duplicates 0.1] [--spread 3600] [--users 0]

Creates (and afterwards drops) a scratch database on the server at DATABASE_URL, migrates it,
then writes `rows` realistic events (every source, 10% re-sent by default) in batches of
`batch` rows from `writers` concurrent tasks, as the batch writers do. Prints rows/s.

The defaults are the worst case for the rollups (tests/factories.py events: timestamps
over the last hour, a new user and video id on every event); `--spread 10 --users
100000` is closer to live traffic (timestamps within seconds, a user population).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import msgspec

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sluice.edges.store import PgEventStore
from sluice.ports import EventRow
from sluice.sources import parse_event
from tests.conftest import with_database
from tests.factories import make_event, make_events


def rows_for(n: int, seed: int, now: datetime, spread: float, users: int) -> list[EventRow]:
    """`n` events over the last `spread` seconds; `users` > 0 draws user and video ids
    from populations of that size (else every event has its own, the worst case)."""
    rng = random.Random(seed)
    out = []
    templates = make_events(14, seed=seed, now=now)
    received = datetime.now(UTC)
    for i in range(n):
        t = templates[i % 14]
        at = now - timedelta(seconds=rng.uniform(0, spread))
        event = make_event(
            t["source"], t["funnelStage"], rng=rng, now=now, eventType=t["eventType"]
        )
        event["timestamp"] = at.isoformat()
        if users:
            user = event["data"]["user"]
            # Log-uniform: a few very active ids and a long tail (as bench/reports.py).
            user["userId"] = f"{t['source'][:2]}_{int(users ** rng.random())}"
            engagement = event["data"]["engagement"]
            if engagement.get("videoId"):
                engagement["videoId"] = f"v{int((users // 4 or 1) ** rng.random())}"
        out.append(
            parse_event(
                event["source"],
                msgspec.json.encode(event),
                received_at=received,
                correlation_id=None,
            )
        )
    return out


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("database_url")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=5000)
    p.add_argument("--writers", type=int, default=2)
    p.add_argument("--duplicates", type=float, default=0.1)
    p.add_argument("--spread", type=float, default=3600, help="seconds of event timestamps")
    p.add_argument("--users", type=int, default=0, help="user population (0: one per event)")
    args = p.parse_args()
    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = with_database(args.database_url, name)
        rows = rows_for(args.rows, 1, datetime.now(UTC), args.spread, args.users)
        rng = random.Random(2)
        resent = rng.sample(rows, int(len(rows) * args.duplicates))
        stream = rows + resent
        rng.shuffle(stream)
        batches = [stream[i : i + args.batch] for i in range(0, len(stream), args.batch)]
        async with PgEventStore.open(url, max_size=args.writers, migrate=True) as store:
            queue: asyncio.Queue[list[EventRow]] = asyncio.Queue()
            for b in batches:
                queue.put_nowait(b)
            new = 0

            async def writer() -> None:
                nonlocal new
                while not queue.empty():
                    fresh = await store.write_batch(queue.get_nowait())
                    new += len(fresh)

            started = time.perf_counter()
            await asyncio.gather(*(writer() for _ in range(args.writers)))
            elapsed = time.perf_counter() - started
        print(
            f"{len(stream)} rows ({new} new) in {elapsed:.2f} s:"
            f" {len(stream) / elapsed:,.0f} rows/s"
            f" (batch {args.batch}, writers {args.writers}, spread {args.spread:g} s,"
            f" users {args.users or 'one per event'})"
        )
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
