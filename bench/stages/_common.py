"""Timing helpers shared by the stage benchmarks."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil


def timed(fn: Callable[[], Any], *, repeat: int = 5) -> tuple[float, float]:
    """Best wall and CPU seconds of `repeat` calls (the best is the least disturbed)."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        best_wall = min(best_wall, time.perf_counter() - w)
        best_cpu = min(best_cpu, time.process_time() - c)
    return best_wall, best_cpu


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (a server and its backends)."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                t = proc.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total


def us(seconds: float, n: int) -> float:
    return round(seconds / n * 1e6, 2)


def show(name: str, result: dict[str, Any]) -> None:
    print(f"{name}: {json.dumps(result)}", file=sys.stdout, flush=True)
