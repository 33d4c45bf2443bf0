"""Realistic facebook/tiktok events, as the reference publisher sends them (docs/events.md).

    make_event("tiktok", "bottom", eventType="purchase", data__user__followers=12)
    make_event("facebook", "top", data__engagement__videoId=MISSING)   # drop a field
    make_events(500, seed=7)   # every source, stage and event type, in a seeded order
    Traffic().events(500, seed=7)   # the same, with live traffic's users/videos/timestamps

Overrides name a top-level field (`eventType=...`) or a nested one with `__` between the
parts; the value MISSING removes the field instead. `override(event, "data.user.age", 3)`
does the same on an event already made (and can also change `source`).

`make_event` and `make_events` are the worst case for a database: a new user and video on
every event, timestamps spread over the last hour. `Traffic` describes live traffic
instead (users and videos repeat, timestamps are near now); `sluice publish` builds its
request bodies from it. `tests/factories.py` re-exports these.
"""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec

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


#: Purchase amounts: lognormal around a median of AMOUNT_MEDIAN (most in the tens, a
#: long tail of larger baskets), within AMOUNT_MIN..AMOUNT_MAX, 2 places.
AMOUNT_MEDIAN = 30.0
AMOUNT_SIGMA = 1.0  # about 1 in 100 over 300
AMOUNT_MIN, AMOUNT_MAX = 0.5, 5_000.0


def _amount(rng: random.Random) -> str:
    value = rng.lognormvariate(math.log(AMOUNT_MEDIAN), AMOUNT_SIGMA)
    return f"{min(max(value, AMOUNT_MIN), AMOUNT_MAX):.2f}"


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


# --------------------------------------------------------------------------- live traffic

USER_SPACE: Final = 10**9  # userId digits; a new user draws from the whole space
VIDEO_SPACE: Final = 10**12
_FIRST = ("Ada", "Kofi", "Lena", "Ravi", "Mei", "Joao", "Sara", "Omar", "Ines", "Yuki")
_LAST = ("Byrne", "Mensah", "Vogel", "Iyer", "Tanaka", "Silva", "Novak", "Haddad", "Costa")
_FULL_NAMES = tuple(f"{first} {last}".encode() for first in _FIRST for last in _LAST)
_GENDERS = (b"male",) * 12 + (b"female",) * 12 + (b"non-binary",)
_PLACES = tuple((code.encode(), city.encode()) for code, cs in COUNTRIES.items() for city in cs)
_HANDLES = tuple(h.encode() for h in ("dance", "chef", "gamer", "cat", "travel", "diy", "fit"))
_MASK = (1 << 64) - 1
_SALT = {"facebook": 271_828_182, "tiktok": 314_159_265}


@dataclass(frozen=True, slots=True)
class Traffic:
    """What live traffic looks like to the database: who, which video, and when.

    Users come from a pool of `users` per source and videos from a pool of `videos` per
    source, both drawn log-uniformly: the k most active make up log(k+1)/log(N+1) of the
    draws (of 100,000 users the first sends ~6% of a source's events, the first 100 ~40%,
    the first 10,000 ~80%, and most are seen rarely). A user's attributes (facebook:
    name, age, gender, country, city; tiktok: username, followers) are a function of
    the user, so they never change. 0 draws a new user (video) on every event.
    A timestamp is now minus up to `jitter` seconds (uniform), except for a `late` ratio
    of events, up to `late_by` seconds old (out of order).
    """

    users: int = 100_000  # per source; 0: a new user on every event
    videos: int = 50_000  # per source; 0: a new video on every event
    jitter: float = 5.0  # seconds
    late: float = 0.02  # ratio of late events
    late_by: float = 3600.0  # seconds

    def __post_init__(self) -> None:
        if self.users < 0 or self.videos < 0:
            raise ValueError("users and videos must not be negative")
        if self.jitter < 0 or self.late_by < 0 or not 0 <= self.late <= 1:
            raise ValueError("jitter and late_by must not be negative, late is a ratio")

    @classmethod
    def worst_case(cls) -> Traffic:
        """What `make_events` sends: a new user and video on every event, timestamps
        uniform over the last hour (60 minute buckets, two new entities per event)."""
        return cls(users=0, videos=0, jitter=3600.0, late=0.0)

    def user_index(self, rng: random.Random) -> int:
        """A user (0 the most active), or a fresh random one when `users` is 0."""
        if not self.users:
            return rng.randrange(USER_SPACE)
        return _log_uniform(self.users, rng.random())

    def video_index(self, rng: random.Random) -> int:
        if not self.videos:
            return rng.randrange(VIDEO_SPACE)
        return _log_uniform(self.videos, rng.random())

    def age(self, rng: random.Random) -> float:
        """Seconds before now for one event's timestamp."""
        if self.late and rng.random() < self.late:
            return rng.random() * self.late_by
        return rng.random() * self.jitter

    def event(
        self,
        source: str = "facebook",
        stage: str = "top",
        *,
        rng: random.Random,
        now: datetime | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """`make_event` with this traffic's user, video and timestamp."""
        now = now or datetime.now(UTC)
        wanted = {"eventType": overrides["eventType"]} if "eventType" in overrides else {}
        event = make_event(source, stage, rng=rng, now=now, **wanted)  # fields fit the type
        occurred = _iso(now - timedelta(seconds=self.age(rng)))
        event["timestamp"] = occurred
        engagement = event["data"]["engagement"]
        if "actionTime" in engagement:
            engagement["actionTime"] = occurred
        if engagement.get("videoId") is not None:
            engagement["videoId"] = pool_video_id(source, self.video_index(rng))
        event["data"]["user"] = pool_user(source, self.user_index(rng))
        for key, value in overrides.items():
            override(event, key.replace("__", "."), value)
        return event

    def events(self, n: int, seed: int = 0, *, now: datetime | None = None) -> list[dict[str, Any]]:
        """`n` valid events with unique ids; the first 14 cover every (source, stage, type)."""
        rng = random.Random(seed)
        now = now or datetime.now(UTC)
        combos = [(src, stage, t) for (src, stage), types in EVENT_TYPES.items() for t in types]
        events = []
        for i in range(n):
            source, stage, event_type = combos[i] if i < len(combos) else rng.choice(combos)
            events.append(self.event(source, stage, rng=rng, now=now, eventType=event_type))
        return events


def _log_uniform(n: int, u: float) -> int:
    """An index in [0, n): P(index < k) = log(k+1) / log(n+1)."""
    return min(int(math.exp(u * math.log(n + 1))), n) - 1


def pool_user(source: str, index: int) -> dict[str, Any]:
    """User `index` of `source` (any int in [0, 10**9)): always the same attributes."""
    user: dict[str, Any] = msgspec.json.decode(pool_user_json(source, index))
    return user


def pool_user_json(source: str, index: int) -> bytes:
    """`pool_user` as JSON, made directly (the publisher's path, once per user: ~0.3 us)."""
    if source not in _ID_PREFIX:
        raise ValueError(f"no users for source {source!r}")
    salt = _SALT[source]
    # A bijection of [0, 10**9) (3**18 is prime to 10): ids look random, never collide.
    number = (index * 387_420_489 + salt) % USER_SPACE
    h = ((index + salt) * 0x9E3779B97F4A7C15) & _MASK  # Fibonacci hashing: top bits mix
    profiles = _PROFILES.get(source) or _profiles(source)
    return b'{"userId":"%s_%09d",%s' % (_ID_PREFIX[source], number, profiles[h >> 52])


_ID_PREFIX: Final = {"facebook": b"fb", "tiktok": b"tt"}
_PROFILES: dict[str, tuple[bytes, ...]] = {}


def _profiles(source: str) -> tuple[bytes, ...]:
    """4,096 sets of a user's other attributes (the JSON after userId), made once."""
    rng = random.Random(f"profiles:{source}")
    out = []
    for _ in range(4096):
        if source == "facebook":
            country, city = rng.choice(_PLACES)
            out.append(
                b'"name":"%s","age":%d,"gender":"%s","location":{"country":"%s","city":"%s"}}'
                % (
                    rng.choice(_FULL_NAMES),
                    rng.randint(18, 75),
                    rng.choice(_GENDERS),
                    country,
                    city,
                )
            )
        else:
            # Followers log-uniform in [1, 2M): most accounts are small, a few are large.
            out.append(
                b'"username":"@%s%d","followers":%d}'
                % (rng.choice(_HANDLES), rng.randrange(10**4), int(2_000_000 ** rng.random()))
            )
    _PROFILES[source] = profiles = tuple(out)
    return profiles


VIDEO_IDS: Final = {"facebook": "vid_%d", "tiktok": "v%d"}  # % video index


def pool_video_id(source: str, index: int) -> str:
    """Video `index` of `source`'s pool (facebook `vid_N`, tiktok `vN`)."""
    return VIDEO_IDS[source] % index
