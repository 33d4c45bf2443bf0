"""JetStream publish-to-ack latency with `sync_interval: always`, alone and while
PostgreSQL writes to the same disk: where the webhook's latency tail comes from.

    .venv/bin/python bench/publish_latency.py                  # 2 rounds of 15 s each way
    .venv/bin/python bench/publish_latency.py --rounds 3 --seconds 20 --rate 200

Starts the embedded nats-server (fsync before every ack, as sluice ships it) and the
embedded PostgreSQL, both under one temporary directory (so on one disk). Each round
publishes `--size`-byte messages (an envelope of ~100 events) at `--rate` messages/s with
`--concurrency` in flight, first with nothing else running, then while
`bench/write_batch.py` stores rows into PostgreSQL; prints p50/p99/max of the
publish-to-ack time for each.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar

import asyncpg
import nats

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._support import BenchNats
from sluice.edges.embedded import EmbeddedPostgres

WRITE_BATCH = Path(__file__).with_name("write_batch.py")


async def publish_for(url: str, args: argparse.Namespace) -> list[float]:
    """Publish at `args.rate` for `args.seconds`; every publish-to-ack time, sorted."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        await js.add_stream(name="LATENCY", subjects=["latency.>"])
        payload = b"x" * args.size
        slots = asyncio.Semaphore(args.concurrency)
        times: list[float] = []

        async def one() -> None:
            async with slots:
                started = time.perf_counter()
                await js.publish("latency.a", payload)
                times.append(time.perf_counter() - started)

        tasks = []
        start = time.monotonic()
        sent = 0
        while time.monotonic() - start < args.seconds:
            tasks.append(asyncio.create_task(one()))
            sent += 1
            await asyncio.sleep(max(0.0, start + sent / args.rate - time.monotonic()))
        await asyncio.gather(*tasks)
        await js.delete_stream("LATENCY")
    finally:
        await nc.close()
    return sorted(times)


def summary(times: list[float]) -> str:
    def ms(q: float) -> float:
        return 1000 * times[int(q * (len(times) - 1))]

    return (
        f"{len(times)} publishes: p50 {ms(0.5):.1f} ms, p99 {ms(0.99):.1f} ms, max {ms(1):.1f} ms"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--rate", type=float, default=120, help="messages/s")
    p.add_argument("--size", type=int, default=70_000, help="bytes per message")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rows", type=int, default=400_000, help="rows write_batch stores")
    p.add_argument(
        "--pg-setting", action="append", default=[], help="K=V for PostgreSQL (repeatable)"
    )
    args = p.parse_args()
    pg_settings = dict(kv.split("=", 1) for kv in args.pg_setting)

    class Postgres(EmbeddedPostgres):
        settings: ClassVar[dict[str, str]] = {**EmbeddedPostgres.settings, **pg_settings}

    with tempfile.TemporaryDirectory(prefix="sluice-latency-") as tmp:
        root = Path(tmp)
        nats_server = BenchNats(root / "nats", sync="always")
        postgres = Postgres(root / "pg", port=0, database="sluice")
        url = nats_server.start()
        try:
            database_url = postgres.start()
            for round_ in range(args.rounds):
                alone = asyncio.run(publish_for(url, args))
                print(f"round {round_}, alone:              {summary(alone)}")
                writer = subprocess.Popen(
                    [
                        *(sys.executable, str(WRITE_BATCH), database_url),
                        *("--rows", str(args.rows), "--spread", "10", "--users", "100000"),
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                assert writer.stdout is not None
                # write_batch prints nothing until it is done; its rows are made first
                # (several seconds), so wait for its database to appear.
                _wait_for_writes(database_url)
                busy = asyncio.run(publish_for(url, args))
                print(f"round {round_}, PostgreSQL writing: {summary(busy)}")
                print(f"          ({writer.communicate()[0].strip()})")
        finally:
            postgres.stop()
            nats_server.stop()


def _wait_for_writes(database_url: str, timeout: float = 120) -> None:
    """Until write_batch has started storing rows (its `bench_` database has inserts)."""

    async def inserted() -> int:
        conn = await asyncpg.connect(database_url)
        try:
            query = (
                "SELECT coalesce(sum(tup_inserted), 0) FROM pg_stat_database"
                " WHERE datname LIKE 'bench_%'"
            )
            return int(await conn.fetchval(query))
        finally:
            await conn.close()

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if asyncio.run(inserted()) > 0:
            return
        time.sleep(0.2)
    raise TimeoutError("write_batch did not start writing")


if __name__ == "__main__":
    main()
