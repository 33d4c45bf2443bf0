"""Realistic facebook/tiktok events, as the reference publisher sends them (EVENTS.md).

    make_event("tiktok", "bottom", eventType="purchase", data__user__followers=12)
    make_event("facebook", "top", data__engagement__videoId=MISSING)   # drop a field
    make_events(500, seed=7)   # every source, stage and event type, in a seeded order

Overrides name a top-level field (`eventType=...`) or a nested one with `__` between the
parts; the value MISSING removes the field instead. `override(event, "data.user.age", 3)`
does the same on an event already made (and can also change `source`).

`sluice publish` builds its request bodies from these; `tests/factories.py` re-exports them.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Final

SOURCES: Final = ("facebook", "tiktok")
STAGES: Final = ("top", "bottom")
EVENT_TYPES: Final[dict[tuple[str, str], tuple[str, ...]]] = {
    ("facebook", "top"): ("ad.view", "page.like", "comment", "video.view"),
    ("facebook", "bottom"): ("ad.click", "form.submission", "checkout.complete"),
    ("tiktok", "top"): ("video.view", "like", "share", "comment"),
    ("tiktok", "bottom"): ("profile.visit", "purchase", "follow"),
}
# The event types whose purchaseAmount is revenue.
PURCHASE_TYPES: Final = frozenset({"checkout.complete", "purchase"})


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()

COUNTRIES = {
    "US": ("New York", "Austin", "Seattle"),
    "DE": ("Berlin", "Hamburg", "Munich"),
    "BR": ("Sao Paulo", "Recife"),
    "IN": ("Mumbai", "Bengaluru", "Pune"),
    "FR": ("Paris", "Lyon"),
    "JP": ("Tokyo", "Osaka"),
}
_NAMES = ("Ada Byrne", "Kofi Mensah", "Lena Vogel", "Ravi Iyer", "Mei Tanaka", "Joao Silva")
_ITEMS = ("wireless earbuds", "phone case", "hoodie", "lip gloss", "desk lamp")


def make_event(
    source: str = "facebook",
    stage: str = "top",
    event_id: str | None = None,
    *,
    rng: random.Random | None = None,
    now: datetime | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """One valid event of `source` and `stage` with random realistic values."""
    rng = rng or random.Random()
    now = now or datetime.now(UTC)
    types = EVENT_TYPES[source, stage]
    wanted = overrides.get("eventType")  # still applied below, even when not valid
    event_type = wanted if wanted in types else rng.choice(types)
    occurred = now - timedelta(seconds=rng.uniform(0, 3600))
    if source == "facebook":
        data = {
            "user": _facebook_user(rng),
            "engagement": _facebook(stage, event_type, occurred, rng),
        }
    elif source == "tiktok":
        data = {"user": _tiktok_user(rng), "engagement": _tiktok(stage, event_type, occurred, rng)}
    else:
        raise ValueError(f"no factory for source {source!r}")
    event: dict[str, Any] = {
        "eventId": event_id or _uuid(rng),
        "timestamp": _iso(occurred),
        "source": source,
        "funnelStage": stage,
        "eventType": event_type,
        "data": data,
    }
    for key, value in overrides.items():
        override(event, key.replace("__", "."), value)
    return event


def make_events(n: int, seed: int = 0, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """`n` valid events with unique ids; the first 14 cover every (source, stage, type)."""
    rng = random.Random(seed)
    combos = [(src, stage, t) for (src, stage), types in EVENT_TYPES.items() for t in types]
    events = []
    for i in range(n):
        source, stage, event_type = combos[i] if i < len(combos) else rng.choice(combos)
        events.append(make_event(source, stage, rng=rng, now=now, eventType=event_type))
    return events


def _facebook_user(rng: random.Random) -> dict[str, Any]:
    country = rng.choice(list(COUNTRIES))
    return {
        "userId": f"fb_{rng.randrange(10**9):09d}",
        "name": rng.choice(_NAMES),
        "age": rng.randint(18, 75),
        "gender": rng.choice(("male", "female", "non-binary")),
        "location": {"country": country, "city": rng.choice(COUNTRIES[country])},
    }


def _facebook(stage: str, event_type: str, at: datetime, rng: random.Random) -> dict[str, Any]:
    if stage == "top":
        return {
            "actionTime": _iso(at),
            "referrer": rng.choice(("newsfeed", "marketplace", "groups")),
            "videoId": f"vid_{rng.randrange(10**6)}" if event_type == "video.view" else None,
        }
    return {
        "adId": f"ad_{rng.randrange(10**6)}",
        "campaignId": f"cmp_{rng.randrange(40)}",
        "clickPosition": rng.choice(("top_left", "bottom_right", "center")),
        "device": rng.choice(("mobile", "desktop")),
        "browser": rng.choice(("Chrome", "Firefox", "Safari")),
        "purchaseAmount": _amount(rng) if event_type in PURCHASE_TYPES else None,
    }


def _tiktok_user(rng: random.Random) -> dict[str, Any]:
    return {
        "userId": f"tt_{rng.randrange(10**9):09d}",
        "username": f"@{rng.choice(('dance', 'chef', 'gamer', 'cat'))}{rng.randrange(10**4)}",
        "followers": rng.randrange(2_000_000),
    }


def _tiktok(stage: str, event_type: str, at: datetime, rng: random.Random) -> dict[str, Any]:
    if stage == "top":
        return {
            "watchTime": round(rng.uniform(0.5, 180.0), 2),
            "percentageWatched": round(rng.uniform(1, 100), 1),
            "device": rng.choice(("Android", "iOS", "Desktop")),
            "country": rng.choice(list(COUNTRIES)),
            "videoId": f"v{rng.randrange(10**12)}",
        }
    purchase = event_type in PURCHASE_TYPES
    return {
        "actionTime": _iso(at),
        "profileId": f"prof_{rng.randrange(10**6)}" if event_type == "profile.visit" else None,
        "purchasedItem": rng.choice(_ITEMS) if purchase else None,
        "purchaseAmount": _amount(rng) if purchase else None,
    }


def override(event: dict[str, Any], path: str, value: Any) -> None:
    """Set the field at dotted `path` ("data.user.age") to `value`, or drop it if MISSING."""
    *parents, name = path.split(".")
    for part in parents:
        event = event[part]
    if value is MISSING:
        event.pop(name, None)
    else:
        event[name] = value


def _amount(rng: random.Random) -> str:
    return f"{rng.randrange(1, 50_000)}.{rng.randrange(100):02d}"


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))
