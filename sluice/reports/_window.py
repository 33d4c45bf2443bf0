"""Splitting a time range into the parts each rollup grain can answer exactly.

A range [lo, hi) is read from the widest grain whose whole buckets fit inside it, its
remaining edges from the next grain down, and so on; what no grain covers (the sub-minute
edges) is read from raw events. So a report reads a few thousand rollup rows at most, and
raw events only within a minute of an unaligned `from`/`to`.

    plan(lo, hi, ("d", "h", "m"))
    -> Window(rollup=[("d", day1, day9), ("h", ...), ...], raw=[(lo, minute1), ...])

None stands for an open end (before or after every event).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["GRAINS", "INTERVAL_GRAIN", "Window", "ceil", "floor", "plan"]

# Rollup grains, widest first: day, hour, minute.
GRAINS: tuple[str, ...] = ("d", "h", "m")
INTERVAL_GRAIN = {"day": "d", "hour": "h", "minute": "m"}
_WIDTH = {"d": timedelta(days=1), "h": timedelta(hours=1), "m": timedelta(minutes=1)}


@dataclass(frozen=True, slots=True)
class Window:
    rollup: list[tuple[str, datetime | None, datetime | None]] = field(default_factory=list)
    # hi is None only past the last bucket any grain can hold (the end of year 9999)
    raw: list[tuple[datetime, datetime | None]] = field(default_factory=list)


def floor(moment: datetime, grain: str) -> datetime:
    """The start of the UTC bucket of `grain` holding `moment`."""
    moment = moment.astimezone(UTC)
    if grain == "d":
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if grain == "h":
        return moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(second=0, microsecond=0)


def ceil(moment: datetime, grain: str) -> datetime | None:
    """The first bucket start at or after `moment`; None past the last representable one."""
    start = floor(moment, grain)
    if start == moment:
        return start
    try:
        return start + _WIDTH[grain]
    except OverflowError:
        return None


def plan(lo: datetime | None, hi: datetime | None, grains: Sequence[str]) -> Window:
    """Split [lo, hi) into whole buckets of `grains` (widest first) and raw edges."""
    window = Window()
    if lo is None or hi is None or lo < hi:
        _split(lo, hi, tuple(grains), window)
    return window


def _split(lo: datetime | None, hi: datetime | None, grains: tuple[str, ...], out: Window) -> None:
    if not grains:
        assert lo is not None, "the widest grain takes the open start"
        out.raw.append((lo, hi))
        return
    grain, finer = grains[0], grains[1:]
    start = None if lo is None else ceil(lo, grain)
    end = None if hi is None else floor(hi, grain)
    if (lo is not None and start is None) or (
        start is not None and end is not None and start >= end
    ):
        _split(lo, hi, finer, out)  # no whole bucket of this grain fits
        return
    out.rollup.append((grain, start, end))
    if lo is not None and start is not None and lo < start:
        _split(lo, start, finer, out)
    if hi is not None and end is not None and end < hi:
        _split(end, hi, finer, out)
