"""Stage: report latency over a small load (the full-size run is bench/reports.py).

Loads N events through `PgEventStore.write_batch` (so the rollups are built as in
production) into a scratch embedded PostgreSQL, then times every report over the full
range through the Quart app: p50/p95 per report, in ms.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench._support import BenchPostgres
from bench.reports import load, time_reports
from bench.stages._common import show


async def _measure(url: str, events: int, repeat: int) -> dict[str, Any]:
    loaded = await load(url, events, days=30)
    timings = await time_reports(url, repeat, quiet=True)
    full = {name[5:]: t for name, t in timings.items() if name.startswith("all: ")}
    return {
        "events": loaded["events"],
        "load_events_per_s": loaded["load_events_per_s"],
        "full_range_ms_p50_p95": {name: [t["p50_ms"], t["p95_ms"]] for name, t in full.items()},
    }


def run(quick: bool = False) -> dict[str, Any]:
    events = 50_000 if quick else 300_000
    with tempfile.TemporaryDirectory(prefix="sluice-stage-") as tmp:
        server = BenchPostgres(Path(tmp))
        url = server.start()
        try:
            return asyncio.run(_measure(url, events, repeat=5 if quick else 20))
        finally:
            server.stop()


if __name__ == "__main__":
    show("report", run("--quick" in sys.argv))
