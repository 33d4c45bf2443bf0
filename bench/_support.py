"""Shared by the benchmarks: servers tuned for measuring, process sampling, machine facts.

Not part of sluice: nothing under sluice/ imports this.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from sluice.edges.embedded import EmbeddedNats, EmbeddedPostgres, nats_binary, postgres_bin_dir

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


class BenchNats(EmbeddedNats):
    """The embedded nats-server, with `sync_interval` as chosen.

    "always" is what sluice ships (fsync before every ack); "default" removes the line,
    so JetStream flushes on its own interval (2 minutes in NATS 2.10+).
    """

    def __init__(self, data_dir: Path, *, sync: str = "always") -> None:
        super().__init__(data_dir, port=0)
        self.sync = sync

    def config_text(self) -> str:
        text = super().config_text()
        line = re.compile(r"^\s*sync_interval:.*\n", re.M)
        if self.sync == "default":
            return line.sub("", text)
        return line.sub(f"  sync_interval: {self.sync}\n", text)


class BenchPostgres(EmbeddedPostgres):
    """The embedded PostgreSQL, plus commit timestamps so freshness can be measured
    exactly: pg_xact_commit_timestamp(xmin) is when each row's transaction committed."""

    settings = {**EmbeddedPostgres.settings, "track_commit_timestamp": "on"}

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, port=0, database="sluice")


def process_tree(pid: int) -> list[psutil.Process]:
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@dataclass
class Usage:
    cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0  # the largest single process of the group
    peak_rss_sum_mb: float = 0.0  # the group summed (shared memory counted per process)


@dataclass
class Sampler:
    """Samples CPU and RSS of named process groups (root pids and their children).

    A group is one root pid or several (the sluice processes of a multi-process run); a
    process may be in more than one group (e.g. "sluice" and "sluice-ingress"). CPU
    seconds are the difference between the first and the last sample of each process
    (children that live the whole run, as postgres backends do here).
    """

    groups: dict[str, int | tuple[int, ...]]
    interval: float = 0.25
    usage: dict[str, Usage] = field(default_factory=dict)
    _first: dict[int, float] = field(default_factory=dict)
    _last: dict[int, float] = field(default_factory=dict)
    _pids_of: dict[str, set[int]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self.usage = {name: Usage() for name in self.groups}
        self._pids_of = {name: set() for name in self.groups}
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, Usage]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        for name, pids in self._pids_of.items():
            self.usage[name].cpu_seconds = round(
                sum(self._last[pid] - self._first[pid] for pid in pids), 2
            )
        return self.usage

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        seen: dict[int, tuple[float, float] | None] = {}
        for name, roots in self.groups.items():
            total = 0.0
            usage = self.usage[name]
            for root in (roots,) if isinstance(roots, int) else roots:
                for proc in process_tree(root):
                    if proc.pid not in seen:
                        try:
                            with proc.oneshot():
                                times = proc.cpu_times()
                                rss = proc.memory_info().rss / 2**20
                        except psutil.Error:
                            seen[proc.pid] = None
                            continue
                        cpu = times.user + times.system
                        self._first.setdefault(proc.pid, cpu)
                        self._last[proc.pid] = cpu
                        seen[proc.pid] = (cpu, rss)
                    sample = seen[proc.pid]
                    if sample is None:
                        continue
                    self._pids_of[name].add(proc.pid)
                    total += sample[1]
                    usage.peak_rss_mb = round(max(usage.peak_rss_mb, sample[1]), 1)
            usage.peak_rss_sum_mb = round(max(usage.peak_rss_sum_mb, total), 1)


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "kernel": platform.release(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
        "versions": versions(),
    }


def versions() -> dict[str, str]:
    from importlib.metadata import version

    found = {"python": platform.python_version()}
    for package in (
        "msgspec",
        "nats-py",
        "asyncpg",
        "hypercorn",
        "h11",
        "quart",
        "uvloop",
        "anyio",
    ):
        with contextlib.suppress(Exception):
            found[package] = version(package)
    with contextlib.suppress(Exception):
        out = subprocess.run([str(nats_binary()), "--version"], capture_output=True, text=True)
        found["nats-server"] = out.stdout.strip().split()[-1]
    with contextlib.suppress(Exception):
        out = subprocess.run(
            [str(postgres_bin_dir() / "postgres"), "--version"], capture_output=True, text=True
        )
        found["postgresql"] = out.stdout.strip().split()[-1]
    with contextlib.suppress(Exception):
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        found["sluice_commit"] = out.stdout.strip()
    return found


def write_result(name: str, result: dict[str, Any], results_dir: Path = RESULTS) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    path = results_dir / f"{day}-{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


def python() -> str:
    return sys.executable


def now() -> float:
    return time.time()
