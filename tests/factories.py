"""Realistic events as the reference publisher sends them (docs/events.md).

    make_event("tiktok", "bottom", eventType="purchase", data__user__followers=12)
    make_event("facebook", "top", data__engagement__videoId=MISSING)   # drop a field
    make_events(500, seed=7)   # every source, stage and event type, in a seeded order

Overrides name a top-level field (`eventType=...`) or a nested one with `__` between the
parts; the value MISSING removes the field instead. `override(event, "data.user.age", 3)`
does the same on an event already made (and can also change `source`).

The generator lives in `sluice.publish.events`, where `sluice publish` uses it too.
"""

from __future__ import annotations

from sluice.publish.events import (
    EVENT_TYPES,
    MISSING,
    PURCHASE_TYPES,
    SOURCES,
    STAGES,
    make_event,
    make_events,
    override,
)

__all__ = [
    "EVENT_TYPES",
    "MISSING",
    "PURCHASE_TYPES",
    "SOURCES",
    "STAGES",
    "make_event",
    "make_events",
    "override",
]
