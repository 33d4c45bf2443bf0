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

from typing import Any

from sluice.config import Settings
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


def engine_settings(nats_url: str, database_url: str, prefix: str, **changes: Any) -> Settings:
    """Settings for an engine on the test servers, on a stream of its own, quick to react
    (short flush, fetch and sampling intervals); `changes` override any field."""
    base: dict[str, Any] = {
        "nats_url": nats_url,
        "database_url": database_url,
        "http_port": 0,
        "stream": f"{prefix}_EVENTS",
        "subject_prefix": prefix,
        "flush_interval": 0.02,
        "fetch_timeout": 0.2,
        "metrics_interval": 0.2,
        "drain_timeout": 15,
    }
    return Settings(**(base | changes))
