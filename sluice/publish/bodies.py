"""Request bodies for `sluice publish`, made cheaply enough to drive 50k+ events/s.

Building every event from scratch (`make_event` and a JSON encode) costs ~30 us; at the
rates a benchmark needs that would make the load client the bottleneck. Instead a pool
of realistic events is made once, each encoded with its eventId first, and every event
sent is a pool entry's bytes with a fresh eventId spliced in: unique ids, realistic
values, ~0.3 us each. The pool is remade every few minutes so timestamps stay recent.

Duplicates are exact re-sends of events the server already acknowledged (so they are
known to be duplicates); invalid events are pool events broken in one of several ways.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import msgspec

from sluice.publish.events import make_events, override

_ID_HEAD = b'{"eventId":"'
_encoder = msgspec.json.Encoder()


def _template(event: dict[str, Any]) -> bytes:
    """The event's JSON after its eventId: `_ID_HEAD + id + template` is the event."""
    event = dict(event)
    event.pop("eventId")
    rest = _encoder.encode(event)  # b'{"timestamp":...}'
    return b'",' + rest[1:]


def _spoil(event: dict[str, Any], kind: int) -> dict[str, Any]:
    """A copy of `event` that fails validation, in one of five ways."""
    bad: dict[str, Any] = msgspec.json.decode(_encoder.encode(event))  # a deep copy
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
    return bad


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
    """Makes request bodies of realistic events; not thread-safe (one per event loop)."""

    def __init__(
        self,
        *,
        duplicates: float = 0.0,
        invalid: float = 0.0,
        seed: int | None = None,
        pool_size: int = 2048,
        refresh_seconds: float = 300.0,
        remember: int = 20_000,
    ) -> None:
        if not 0 <= duplicates < 1 or not 0 <= invalid < 1 or duplicates + invalid >= 1:
            raise ValueError("duplicates and invalid are ratios in [0, 1) with a sum below 1")
        self._rng = random.Random(seed)
        self._duplicates = duplicates
        self._invalid = invalid
        self._pool_size = pool_size
        self._refresh_seconds = refresh_seconds
        # Unique per run: a random UUID-shaped prefix, then a counter.
        prefix = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))[:24]
        self._prefix = prefix.encode()
        self._counter = 0
        self._acked: deque[bytes] = deque(maxlen=remember)
        self._valid: list[bytes] = []
        self._bad: list[bytes] = []
        self._made_at = 0.0
        self._refresh()

    def _refresh(self) -> None:
        seed = self._rng.getrandbits(32)
        events = make_events(self._pool_size, seed=seed)
        self._valid = [_template(e) for e in events]
        self._bad = [_template(_spoil(e, i % 5)) for i, e in enumerate(events[:256])]
        self._made_at = time.monotonic()

    def _next_id(self) -> bytes:
        self._counter += 1
        return b"%s%012x" % (self._prefix, self._counter)

    def make(self, n: int, *, bare: bool = False) -> Batch:
        """A body of `n` events: a JSON array, or with `bare` and n == 1 the object alone."""
        if time.monotonic() - self._made_at > self._refresh_seconds:
            self._refresh()
        rnd = self._rng.random
        valid, bad, acked = self._valid, self._bad, self._acked
        n_valid, n_bad = len(valid), len(bad)
        dup_p, bad_p = self._duplicates, self._duplicates + self._invalid
        parts: list[bytes] = []
        fresh: list[bytes] = []
        invalid = duplicates = 0
        for _ in range(n):
            r = rnd() if bad_p else 1.0
            if r < dup_p and acked:
                parts.append(acked[int(rnd() * len(acked))])
                duplicates += 1
            elif dup_p <= r < bad_p:
                parts.append(_ID_HEAD + self._next_id() + bad[int(rnd() * n_bad)])
                invalid += 1
            else:
                event = _ID_HEAD + self._next_id() + valid[int(rnd() * n_valid)]
                parts.append(event)
                fresh.append(event)
        body = parts[0] if bare and n == 1 else b"[" + b",".join(parts) + b"]"
        return Batch(body, n, len(fresh), invalid, duplicates, fresh)

    def acknowledged(self, batch: Batch) -> None:
        """Remember `batch`'s fresh events as stored: later duplicates re-send them."""
        if self._duplicates:
            self._acked.extend(batch.fresh)
        batch.fresh = []
