"""Stage: the batch writer's store call (COPY to staging, INSERT ... ON CONFLICT).

Rows as the consumer makes them, in transactions of `flush_rows`, against the embedded
PostgreSQL with sluice's migrations; then the same rows again (all duplicates).
Client CPU is this process; server CPU is the postgres backends'.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench._support import BenchPostgres
from bench.stages._common import show, tree_cpu, us
from sluice.edges.store import PgEventStore
from sluice.publish.bodies import BodyMaker
from sluice.sources import parse_event, validate_body


def _rows(n: int) -> list[Any]:
    maker = BodyMaker(seed=3)
    now = datetime.now(UTC)
    rows = []
    while len(rows) < n:
        for source, events in validate_body(maker.make(100).body).by_source.items():
            rows += [
                parse_event(source, e.raw, received_at=now, correlation_id="c") for e in events
            ]
    return rows[:n]


async def _measure(url: str, server_pid: int, n: int, flush_rows: int) -> dict[str, Any]:
    rows = _rows(n)
    batches = [rows[i : i + flush_rows] for i in range(0, n, flush_rows)]
    out: dict[str, Any] = {"rows": n, "flush_rows": flush_rows}
    async with PgEventStore.open(url, max_size=2, migrate=True) as store:
        for label in ("new", "duplicates"):
            s0, c0, w0 = tree_cpu(server_pid), time.process_time(), time.perf_counter()
            for batch in batches:
                await store.write_batch(batch)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            server = tree_cpu(server_pid) - s0
            out[label] = {
                "rows_per_s": round(n / wall),
                "client_cpu_us_per_row": us(cpu, n),
                "server_cpu_us_per_row": us(server, n),
            }
    return out


def run(quick: bool = False) -> dict[str, Any]:
    n = 50_000 if quick else 200_000
    with tempfile.TemporaryDirectory(prefix="sluice-stage-") as tmp:
        server = BenchPostgres(Path(tmp))
        url = server.start()
        try:
            assert server.pid is not None
            return asyncio.run(_measure(url, server.pid, n, flush_rows=5000))
        finally:
            server.stop()


if __name__ == "__main__":
    show("write", run("--quick" in sys.argv))
