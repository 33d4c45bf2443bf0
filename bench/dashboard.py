"""The dashboard's first render at scale: the reports bench data, a real server, Chromium.

    .venv/bin/python bench/dashboard.py --keep DIR           # load 5M events (~8 min), time
    .venv/bin/python bench/dashboard.py --keep DIR --reuse   # time an already loaded DIR
    .venv/bin/python bench/dashboard.py --database-url postgresql://...   # a loaded database

Loads events exactly as `bench/reports.py` does (same generator, `write_batch`, rollups),
then runs `sluice` in role `reports` on that database (`open_engine`: the HTTP server
users get) and opens /dashboard in headless Chromium (Debian's `chromium`, driven by
Playwright) `--repeat` times per view, each in a new browser context (no cache). The
first render is the page's own mark "sluice:refreshed" (every panel drawn, after all of
its report requests answered), in ms since navigation start; each panel's own mark
("sluice:panel:<id>") says when it was drawn. Each load also counts the CPU seconds
spent from navigation to render by Chromium (all its processes), PostgreSQL (the embedded
server's processes; not counted with --database-url) and this process (sluice's server and
the bench's own Playwright client): on two cores they compete for the same second.
Results go to bench/results/<date>-dashboard.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from bench._support import BenchPostgres, machine, process_tree, write_result
from bench.reports import load
from sluice.app import open_engine
from sluice.config import Settings

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PANELS = ("totals", "events", "funnel", "revenue", "demographics", "top")
VIEWS = [
    ("all time, both sources (the default view)", ""),
    ("all time, tiktok", "?range=all&source=tiktok"),
    ("last 24 hours", "?range=24h"),
    ("last 7 days", "?range=7d"),
]


CPU_GROUPS = ("chromium", "postgres", "sluice")


def cpu_seconds(postgres_pid: int | None) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) so far of each process of interest, by pid."""
    me = os.getpid()
    postgres = {p.pid for p in process_tree(postgres_pid)} if postgres_pid else set()
    found: dict[int, tuple[str, float]] = {}
    for proc in process_tree(me):
        try:
            times = proc.cpu_times()
            group = (
                "sluice"
                if proc.pid == me
                else "postgres"
                if proc.pid in postgres
                else "chromium"
                if "chrom" in proc.name()
                else None
            )
        except psutil.NoSuchProcess:
            continue
        if group is not None:
            found[proc.pid] = (group, times.user + times.system)
    return found


def cpu_used(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds per group between two readings (a process that ended in between is
    counted up to the first reading only: a slight undercount)."""
    used = dict.fromkeys(CPU_GROUPS, 0.0)
    for pid, (group, seconds) in after.items():
        used[group] += seconds - before.get(pid, (group, 0.0))[1]
    return used


async def time_views(base: str, repeat: int, postgres_pid: int | None = None) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    results: dict[str, Any] = {}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=FLAGS
        )
        try:
            for name, query in VIEWS:
                timings = []
                panels: dict[str, list[float]] = {panel: [] for panel in PANELS}
                requests = 0
                cpu: dict[str, list[float]] = {group: [] for group in CPU_GROUPS}
                for _ in range(repeat + 1):  # the first one warms the server's caches
                    context = await browser.new_context(viewport={"width": 1280, "height": 1000})
                    page = await context.new_page()
                    asked: list[str] = []
                    page.on("request", lambda r, asked=asked: asked.append(r.url))
                    before = cpu_seconds(postgres_pid)
                    await page.goto(f"{base}/dashboard{query}")
                    await page.wait_for_selector('body[data-refreshes="1"]', timeout=120_000)
                    used = cpu_used(before, cpu_seconds(postgres_pid))
                    for group in CPU_GROUPS:
                        cpu[group].append(used[group])
                    assert (
                        await page.eval_on_selector_all(
                            "section[data-state=error]", "s => s.length"
                        )
                        == 0
                    ), (name, await page.text_content("main"))
                    rendered = await page.evaluate(
                        "performance.getEntriesByName('sluice:refreshed')[0].startTime"
                    )
                    timings.append(rendered)
                    for panel in PANELS:
                        panels[panel].append(
                            await page.evaluate(
                                f"performance.getEntriesByName('sluice:panel:{panel}')[0].startTime"
                            )
                        )
                    requests = len(asked)
                    await context.close()
                timings = sorted(timings[1:])
                results[name] = {
                    "p50_ms": round(statistics.median(timings), 1),
                    "max_ms": round(timings[-1], 1),
                    "n": len(timings),
                    "requests": requests,
                    "panels_p50_ms": {
                        panel: round(statistics.median(sorted(times[1:])), 1)
                        for panel, times in panels.items()
                    },
                    "cpu_seconds_p50": {
                        group: round(statistics.median(times[1:]), 2)
                        for group, times in cpu.items()
                    },
                }
                row = results[name]
                print(
                    f"  {name:45s} p50 {row['p50_ms']:8.1f} ms  max {row['max_ms']:8.1f} ms"
                    f"  ({requests} requests); panels p50 {row['panels_p50_ms']};"
                    f" CPU s p50 {row['cpu_seconds_p50']}",
                    flush=True,
                )
        finally:
            await browser.close()
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--database-url", help="an already loaded database")
    parser.add_argument("--keep", type=Path, help="data directory to keep the loaded server in")
    parser.add_argument("--reuse", action="store_true", help="time an already loaded --keep DIR")
    args = parser.parse_args()
    if args.repeat < 1:  # checked before loading: the medians need at least one timed load
        parser.error("--repeat must be at least 1")
    info = machine()
    print(f"machine: {info['cores']} cores, {info['memory_gb']} GiB, {info['cpu']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="sluice-dashboard-") as tmp:
        server = None
        url = args.database_url
        if url is None:
            server = BenchPostgres(args.keep or Path(tmp))
            url = server.start()
        try:
            loaded: dict[str, Any] = {"reused": True}
            if not (args.reuse or args.database_url):
                print(f"loading {args.events:,} events over {args.days} days ...", flush=True)
                loaded = await load(url, args.events, args.days)
                print(f"loaded: {loaded}", flush=True)
            settings = Settings(database_url=url, http_port=0)
            async with open_engine(settings, role="reports") as engine:
                timings = await time_views(
                    engine.http_url, args.repeat, server.pid if server is not None else None
                )
        finally:
            if server is not None:
                server.stop()
    result = {"machine": info, "load": loaded, "repeat": args.repeat, "views": timings}
    print(f"written {write_result('dashboard', result)}")


if __name__ == "__main__":
    asyncio.run(main())
