"""`sluice run` tunes CPython's cyclic garbage collector (in a child process: the
collector's settings are process-wide)."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import gc
from sluice.cli import GC_GEN0_THRESHOLD, tune_gc

before = gc.get_threshold()
cycle = []
cycle.append(cycle)  # built before: frozen, never scanned again
tune_gc()
after = gc.get_threshold()
print(after[0] == GC_GEN0_THRESHOLD > before[0], after[1:] == before[1:], gc.get_freeze_count() > 0)
"""


def test_tune_gc_freezes_start_up_objects_and_raises_the_young_threshold() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.split() == ["True", "True", "True"]
