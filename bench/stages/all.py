"""Every stage benchmark; results to bench/results/<date>-stages.json."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench._support import machine, write_result
from bench.stages import bus, report, validation, write
from bench.stages._common import show


def main() -> None:
    quick = "--quick" in sys.argv
    results = {"machine": machine(), "quick": quick}
    for name, module in (
        ("validation", validation),
        ("publish_consume", bus),
        ("write", write),
        ("report", report),
    ):
        results[name] = module.run(quick)
        show(name, results[name])
    path = write_result("stages" + ("-quick" if quick else ""), results)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
