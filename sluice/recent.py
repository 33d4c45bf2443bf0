"""A bounded set of recently seen event ids (the dedup guard's and the webhook's)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["RecentIds"]


class RecentIds:
    """A bounded set: two generations, the older dropped whole when the newer fills.

    Holds between capacity/2 and capacity ids, so memory stays bounded (~130 bytes an
    id for uuid-sized ids).
    """

    def __init__(self, capacity: int) -> None:
        self._half = max(1, capacity // 2)
        self._new: set[str] = set()
        self._old: set[str] = set()

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._new or event_id in self._old

    def __len__(self) -> int:
        return len(self._new) + len(self._old)

    def any_of(self, event_ids: Iterable[str]) -> bool:
        """Whether any of `event_ids` is here (one C-level pass: the common, all-new case)."""
        return not (self._new.isdisjoint(event_ids) and self._old.isdisjoint(event_ids))

    def add_all(self, event_ids: Iterable[str]) -> None:
        ids = event_ids if isinstance(event_ids, list | tuple) else list(event_ids)
        start = 0
        while start < len(ids):  # in slices that fit the newer generation, each in C
            room = self._half - len(self._new)
            self._new.update(ids[start : start + room])
            start += room
            if len(self._new) >= self._half:
                self._old, self._new = self._new, set()
