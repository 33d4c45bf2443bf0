"""Request bodies for `sluice publish`, made cheaply enough to drive 50k+ events/s.

Building every event as a dict and JSON-encoding it costs ~30 us; at the rates a
benchmark needs that would make the load client the bottleneck. Instead a pool of
realistic events (every source, stage and type) is encoded once into templates with
holes for what changes: eventId, timestamp (and actionTime), user and video. An event
is one `%` of a random template with a fresh id (a counter), a timestamp near now (from
a table of every millisecond of the last `jitter` seconds) and a user and video drawn
as `Traffic` says (a user's JSON is made once and cached).

Every event draws its own user and video: reusing pre-rendered (user, video) entries
would be cheaper but lowers the distinct users and videos per database batch (10-20%
fewer with 8-16k entries), which is what the database's cost depends on.

Duplicates are exact re-sends of events the server already acknowledged (so they are
known to be duplicates); invalid events are fresh events broken in one of five ways.
"""

from __future__ import annotations

import random
import re
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from sluice.publish.events import (
    SOURCES,
    USER_SPACE,
    VIDEO_IDS,
    VIDEO_SPACE,
    Traffic,
    make_events,
    override,
    pool_user_json,
)

_encoder = msgspec.json.Encoder()
_HOLE: Final = re.compile(rb"@@[ITUV]@@")
_TABLE_MAX_JITTER: Final = 60.0  # seconds; above, timestamps are formatted one by one
# A template's holes: eventId (prefix, counter), timestamp, user, then per shape
# engagement.actionTime (facebook top, tiktok bottom) and/or engagement.videoId.
_PLAIN, _VIDEO, _ACTION, _ACTION_VIDEO = range(4)

# (format, source index, shape): an event is `format % (prefix, counter, timestamp,
# user[, timestamp][, video index])`.
_Template = tuple[bytes, int, int]


def _template(event: dict[str, Any]) -> _Template:
    marked: dict[str, Any] = msgspec.json.decode(_encoder.encode(event))  # a deep copy
    source = marked["source"]
    marked["eventId"] = "@@I@@"
    marked["timestamp"] = "@@T@@"
    marked["data"]["user"] = "@@U@@"
    engagement = marked["data"]["engagement"]
    holes = [b"@@I@@", b"@@T@@", b"@@U@@"]
    action = "actionTime" in engagement
    if action:
        engagement["actionTime"] = "@@T@@"
        holes.append(b"@@T@@")
    video = engagement.get("videoId") is not None
    if video:
        engagement["videoId"] = "@@V@@"
        holes.append(b"@@V@@")
    text = _encoder.encode(marked).replace(b"%", b"%%")
    if _HOLE.findall(text) != holes:  # make_event's key order is what the shapes assume
        raise AssertionError(f"unexpected field order in {text!r}")
    fills = {b"@@I@@": b"%s%012x", b"@@T@@": b"%s", b"@@V@@": VIDEO_IDS[source].encode()}
    text = _HOLE.sub(lambda m: fills[m.group()], text.replace(b'"@@U@@"', b"%s"))
    shape = (_ACTION if action else _PLAIN) + (_VIDEO if video else 0)
    return text, SOURCES.index(source), shape


def _spoil(event: bytes, kind: int) -> bytes:
    """`event` broken so that validation names the field, in one of five ways."""
    bad: dict[str, Any] = msgspec.json.decode(event)
    if kind == 0:
        override(bad, "data.user.userId", 12345)
    elif kind == 1:
        bad["funnelStage"] = "middle"
    elif kind == 2:
        bad["timestamp"] = "yesterday"
    elif kind == 3:
        del bad["eventType"]
    else:
        bad["eventType"] = "teleport"
    return _encoder.encode(bad)


@dataclass
class Batch:
    """One request body and what it holds."""

    body: bytes
    events: int  # events in the body
    fresh_valid: int  # valid events with an id never sent before
    invalid: int
    duplicates: int  # exact re-sends of events already acknowledged
    fresh: list[bytes] = field(default_factory=list)  # the fresh valid events' bytes


class BodyMaker:
    """Makes request bodies of realistic events; not thread-safe (one per event loop).

    `traffic` says which users, videos and timestamps (default: `Traffic()`, live-like;
    `Traffic.worst_case()` for a new user and video on every event over the last hour).
    """

    def __init__(
        self,
        *,
        duplicates: float = 0.0,
        invalid: float = 0.0,
        seed: int | None = None,
        traffic: Traffic | None = None,
        pool_size: int = 512,
        remember: int = 20_000,
        cached_users: int = 100_000,
    ) -> None:
        if not 0 <= duplicates < 1 or not 0 <= invalid < 1 or duplicates + invalid >= 1:
            raise ValueError("duplicates and invalid are ratios in [0, 1) with a sum below 1")
        self._rng = random.Random(seed)
        self._duplicates = duplicates
        self._invalid = invalid
        self.traffic = traffic = traffic if traffic is not None else Traffic()
        # Unique per run: a random UUID-shaped prefix, then a counter (12 hex digits).
        prefix = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))[:24]
        self._prefix = prefix.encode()
        self._counter = 0
        self._acked: deque[bytes] = deque(maxlen=remember)
        self._template_bits = max(0, pool_size.bit_length() - 1)  # a power of two in all
        events = make_events(1 << self._template_bits, seed=self._rng.getrandbits(32))
        self._templates = [_template(e) for e in events]
        # Per source, the JSON of users 0..cached_users-1 (the most active), made on first use.
        cached = min(cached_users, traffic.users)
        self._users: list[list[bytes | None]] = [[None] * cached for _ in SOURCES]
        self._seconds: dict[int, bytes] = {}  # unix second -> b"2026-11-23T13:24:17"
        # Timestamps of every millisecond from _stamps_ms on, kept up to now as time
        # passes: with a small jitter an event's timestamp is one list index.
        self._stamps: list[bytes] = []
        self._stamps_ms = 0
        self._table = traffic.jitter <= _TABLE_MAX_JITTER

    def _user(self, source: int, index: int) -> bytes:
        data = pool_user_json(SOURCES[source], index)  # an argument of `%`: no escaping
        cache = self._users[source]
        if index < len(cache):
            cache[index] = data
        return data

    def _stamp(self, ms: int) -> bytes:
        """b"2026-11-23T13:24:17.123Z" for unix time `ms` (milliseconds)."""
        second, milli = divmod(ms, 1000)
        head = self._seconds.get(second)
        if head is None:
            if len(self._seconds) >= 8192:
                self._seconds.clear()
            head = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
            self._seconds[second] = head
        return b"%s.%03dZ" % (head, milli)

    def _stamps_until(self, now_ms: int) -> int:
        """Extend the table to `now_ms`; the index of `now_ms` in it."""
        span = int(self.traffic.jitter * 1000)
        stamps, first = self._stamps, self._stamps_ms
        if not stamps or now_ms < first + span or now_ms > first + 4 * span + 1000:
            stamps.clear()  # the first call, the clock went back, or a long pause
            first = self._stamps_ms = now_ms - span
        elif now_ms - first > 2 * span + 1000:
            drop = now_ms - span - first
            del stamps[:drop]
            first = self._stamps_ms = first + drop
        stamp = self._stamp
        stamps.extend(stamp(ms) for ms in range(first + len(stamps), now_ms + 1))
        return now_ms - first

    def make(self, n: int, *, bare: bool = False) -> Batch:
        """A body of `n` events: a JSON array, or with `bare` and n == 1 the object alone."""
        # One loop with everything in locals: this runs for every event sent.
        rng = self._rng
        rnd, bits = rng.random, rng.getrandbits
        templates, acked = self._templates, self._acked
        template_bits = self._template_bits
        dup_p, bad_p = self._duplicates, self._duplicates + self._invalid
        traffic = self.traffic
        late, late_ms = traffic.late, traffic.late_by * 1000
        # An event is late when a < late; otherwise (a - late) * on_time ms old.
        on_time = traffic.jitter * 1000 / (1 - late) if late < 1 else 0.0
        n_users, n_videos = traffic.users, traffic.videos
        users_base, videos_base = n_users + 1.0, n_videos + 1.0
        caches, cached = self._users, len(self._users[0])
        prefix, counter, stamp = self._prefix, self._counter, self._stamp
        now_ms = int(time.time() * 1000)
        table = self._table
        if table:
            stamps, now_at = self._stamps, self._stamps_until(now_ms)
        parts: list[bytes] = []
        fresh: list[bytes] = []  # kept only when duplicates will re-send them
        keep = dup_p > 0
        invalid = duplicates = 0
        for _ in range(n):
            r = rnd() if bad_p else 1.0
            if r < dup_p and acked:
                parts.append(acked[int(rnd() * len(acked))])
                duplicates += 1
                continue
            fmt, source, shape = templates[bits(template_bits)]
            counter += 1
            a = rnd()
            if a < late:
                at = stamp(now_ms - int(a / late * late_ms))
            elif table:
                at = stamps[now_at - int((a - late) * on_time)]
            else:
                at = stamp(now_ms - int((a - late) * on_time))
            if n_users:
                index = int(users_base ** rnd()) - 1  # (n + 1) ** u < n + 1: in [0, n)
                user = caches[source][index] if index < cached else None
            else:
                index, user = rng.randrange(USER_SPACE), None
            if user is None:
                user = self._user(source, index)
            if shape == _PLAIN:
                event = fmt % (prefix, counter, at, user)
            elif shape == _ACTION:
                event = fmt % (prefix, counter, at, user, at)
            else:
                video = int(videos_base ** rnd()) - 1 if n_videos else rng.randrange(VIDEO_SPACE)
                if shape == _VIDEO:
                    event = fmt % (prefix, counter, at, user, video)
                else:
                    event = fmt % (prefix, counter, at, user, at, video)
            if dup_p <= r < bad_p:
                parts.append(_spoil(event, int(rnd() * 5)))
                invalid += 1
            else:
                parts.append(event)
                if keep:
                    fresh.append(event)
        self._counter = counter
        body = parts[0] if bare and n == 1 else b"[" + b",".join(parts) + b"]"
        return Batch(body, n, n - invalid - duplicates, invalid, duplicates, fresh)

    def acknowledged(self, batch: Batch) -> None:
        """Remember `batch`'s fresh events as stored: later duplicates re-send them."""
        if self._duplicates:
            self._acked.extend(batch.fresh)
        batch.fresh = []
