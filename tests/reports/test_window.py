"""plan(): a range split over the rollup grains covers it exactly, with whole buckets."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from sluice.reports import plan
from sluice.reports._window import ceil, floor

T = datetime(2025, 3, 10, tzinfo=UTC)
D, H, M = timedelta(days=1), timedelta(hours=1), timedelta(minutes=1)

instants = st.datetimes(
    min_value=datetime(2025, 1, 1), max_value=datetime(2025, 6, 1), timezones=st.just(UTC)
)


def test_open_range_is_one_day_scan() -> None:
    window = plan(None, None, ("d", "h", "m"))
    assert window.rollup == [("d", None, None)]
    assert window.raw == []


def test_unaligned_range() -> None:
    lo = T + 2 * H + 3 * M + timedelta(seconds=4)
    hi = T + 2 * D + 5 * H + 6 * M + timedelta(seconds=7)
    window = plan(lo, hi, ("d", "h", "m"))
    assert window.rollup == [
        ("d", T + D, T + 2 * D),
        ("h", T + 3 * H, T + D),
        ("m", T + 2 * H + 4 * M, T + 3 * H),
        ("h", T + 2 * D, T + 2 * D + 5 * H),
        ("m", T + 2 * D + 5 * H, T + 2 * D + 5 * H + 6 * M),
    ]
    assert window.raw == [
        (lo, T + 2 * H + 4 * M),
        (T + 2 * D + 5 * H + 6 * M, hi),
    ]


def test_half_open_and_empty_ranges() -> None:
    assert plan(T + H, None, ("d", "h")).rollup == [("d", T + D, None), ("h", T + H, T + D)]
    assert plan(None, T + H, ("d", "h")).rollup == [("d", None, T), ("h", T, T + H)]
    assert plan(T, T, ("d", "h", "m")).rollup == []
    assert plan(T, T, ("d", "h", "m")).raw == []


def test_a_range_inside_one_minute_is_raw() -> None:
    lo, hi = T + timedelta(seconds=1), T + timedelta(seconds=59)
    assert plan(lo, hi, ("d", "h", "m")).raw == [(lo, hi)]


def test_the_last_representable_day_has_no_ceiling() -> None:
    last = datetime(9999, 12, 31, 12, tzinfo=UTC)
    assert ceil(last, "d") is None
    window = plan(last, None, ("d", "h", "m"))
    assert window.rollup == [("h", last, None)]


def test_from_in_the_last_minute_of_9999_reads_raw_events_to_the_end() -> None:
    lo = datetime(9999, 12, 31, 23, 59, 30, tzinfo=UTC)
    for grains in ("dhm", "dh", "m"):
        window = plan(lo, None, tuple(grains))
        assert window.rollup == []
        assert window.raw == [(lo, None)]  # None: open, past the last representable instant


# Near both ends of datetime's range, and in ordinary years.
edges = st.datetimes(
    min_value=datetime(9999, 12, 30), max_value=datetime.max, timezones=st.just(UTC)
) | st.datetimes(max_value=datetime(1, 1, 3), timezones=st.just(UTC))


@given(
    lo=st.none() | instants | edges,
    hi=st.none() | instants | edges,
    grains=st.sampled_from(["dhm", "dh", "hm", "m"]),
)
def test_parts_tile_the_range_exactly(
    lo: datetime | None, hi: datetime | None, grains: str
) -> None:
    window = plan(lo, hi, tuple(grains))
    width = {"d": D, "h": H, "m": M}
    spans: list[tuple[datetime | None, datetime | None]] = []
    for grain, a, b in window.rollup:
        assert grain in grains
        for bound in (a, b):
            assert bound is None or floor(bound, grain) == bound  # whole buckets only
        if a is not None and b is not None:
            assert a < b and (b - a) % width[grain] == timedelta(0)
        spans.append((a, b))
    spans += window.raw
    if lo is not None and hi is not None and hi <= lo:
        assert spans == []
        return
    low = datetime.min.replace(tzinfo=UTC)
    high = datetime.max.replace(tzinfo=UTC)
    ordered = sorted((a or low, b or high) for a, b in spans)
    assert ordered[0][0] == (lo or low)
    assert ordered[-1][1] == (hi or high)
    for (_, end), (start, _) in itertools.pairwise(ordered):
        assert end == start  # no gap, no overlap
