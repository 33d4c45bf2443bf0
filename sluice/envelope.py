"""The JetStream message format: one envelope per source per request.

An envelope is JSON `{"v":1,"source":...,"receivedAt":...,"events":[...]}` whose events
are the publisher's bytes, spliced in without re-encoding.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

VERSION = 1
_HEAD_OVERHEAD = 160  # bytes for the envelope's own fields, generously


class Envelope(msgspec.Struct, frozen=True):
    v: int
    source: str
    receivedAt: datetime
    events: list[msgspec.Raw]


_decoder = msgspec.json.Decoder(Envelope)


class BadEnvelope(Exception):
    """A message that is not a sluice envelope (it can only be dead-lettered)."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """One message to publish: payload, the digest used as Nats-Msg-Id, and event count."""

    payload: bytes
    msg_id: str
    event_ids: tuple[str, ...]


def msg_id_for(event_ids: Sequence[str]) -> str:
    """A digest of the envelope's event ids: a re-sent envelope gets the same id."""
    digest = hashlib.blake2b(digest_size=16)
    for event_id in event_ids:
        digest.update(event_id.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def encode(
    source: str,
    events: Sequence[tuple[str, bytes]],
    *,
    received_at: datetime,
    max_bytes: int,
) -> Iterator[Chunk]:
    """Pack (event_id, raw JSON) pairs into envelopes of at most `max_bytes` each.

    Raises ValueError for an event that cannot fit in any envelope; callers check
    sizes with `fits` first.
    """
    head = (
        b'{"v":%d,"source":' % VERSION
        + msgspec.json.encode(source)
        + b',"receivedAt":'
        + msgspec.json.encode(received_at)
        + b',"events":['
    )
    budget = max_bytes - len(head) - 2
    ids: list[str] = []
    raws: list[bytes] = []
    size = 0
    for event_id, raw in events:
        if len(raw) > budget:
            raise ValueError(f"event {event_id!r} is larger than a message may be")
        if raws and size + len(raw) + 1 > budget:
            yield _chunk(head, ids, raws)
            ids, raws, size = [], [], 0
        ids.append(event_id)
        raws.append(raw)
        size += len(raw) + 1
    if raws:
        yield _chunk(head, ids, raws)


def fits(raw: bytes, max_bytes: int) -> bool:
    return len(raw) + _HEAD_OVERHEAD <= max_bytes


def _chunk(head: bytes, ids: list[str], raws: list[bytes]) -> Chunk:
    return Chunk(head + b",".join(raws) + b"]}", msg_id_for(ids), tuple(ids))


def decode(payload: bytes) -> Envelope:
    """Raises BadEnvelope when `payload` is not a version-1 envelope."""
    try:
        envelope = _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise BadEnvelope(f"undecodable envelope: {exc}") from exc
    if envelope.v != VERSION:
        raise BadEnvelope(f"unknown envelope version {envelope.v}")
    return envelope
