"""The JetStream message format: an envelope of one source's events.

An envelope is JSON `{"v":1,"source":...,"receivedAt":...,"events":[...]}` whose events
are the publisher's bytes, spliced in without re-encoding. An envelope that holds the
events of several requests (group commit) adds `"requests":[["<correlation id>",n],...]`:
runs in event order, so each event keeps its own request's correlation id. Readers that
predate the field ignore it and use the message's X-Correlation-ID header for all.
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
_REQUESTS_FIELD = len(b',"requests":[]')
_RUN_OVERHEAD = 14  # a run's brackets, commas and count (up to 10 digits)


class Envelope(msgspec.Struct, frozen=True):
    v: int
    source: str
    receivedAt: datetime
    events: list[msgspec.Raw]
    requests: list[tuple[str, int]] | None = None  # (correlation id, events) runs


_decoder = msgspec.json.Decoder(Envelope)


class BadEnvelope(Exception):
    """A message that is not a sluice envelope (it can only be dead-lettered)."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """One message to publish: payload, the digest used as Nats-Msg-Id, and event count."""

    payload: bytes
    msg_id: str
    event_ids: tuple[str, ...]
    correlation_id: str | None = None  # its first request's, when `requests` was given
    requests: int = 1  # how many requests' events it holds


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
    requests: Sequence[tuple[str, int]] | None = None,
) -> Iterator[Chunk]:
    """Pack (event_id, raw JSON) pairs into envelopes of at most `max_bytes` each.

    `requests`, when given, are (correlation id, event count) runs covering `events` in
    order; an envelope holding events of more than one run says which in `requests`.
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
    if requests is not None:
        yield from _encode_runs(head, budget, events, requests)
        return
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


def _encode_runs(
    head: bytes,
    budget: int,
    events: Sequence[tuple[str, bytes]],
    requests: Sequence[tuple[str, int]],
) -> Iterator[Chunk]:
    """`encode` for events of several requests: the `requests` field's bytes count
    against the budget only once an envelope holds more than one run."""
    owners = [cid for cid, count in requests for _ in range(count)]
    if len(owners) != len(events):
        raise ValueError("requests do not cover the events")
    ids: list[str] = []
    raws: list[bytes] = []
    cids: list[str] = []  # one per run, with its count in `counts`
    counts: list[int] = []
    size = runs_size = 0
    for (event_id, raw), cid in zip(events, owners, strict=True):
        if len(raw) > budget:
            raise ValueError(f"event {event_id!r} is larger than a message may be")
        new_run = not cids or cids[-1] != cid
        if raws:
            runs = len(cids) + new_run
            extra = _run_size(cid) if new_run else 0
            field = _REQUESTS_FIELD + runs_size + extra if runs > 1 else 0
            if size + len(raw) + 1 + field > budget:
                yield _run_chunk(head, ids, raws, cids, counts)
                ids, raws, cids, counts, size, runs_size = [], [], [], [], 0, 0
                new_run = True
        if new_run:
            cids.append(cid)
            counts.append(0)
            runs_size += _run_size(cid)
        counts[-1] += 1
        ids.append(event_id)
        raws.append(raw)
        size += len(raw) + 1
    if raws:
        yield _run_chunk(head, ids, raws, cids, counts)


def _run_size(cid: str) -> int:
    return len(msgspec.json.encode(cid)) + _RUN_OVERHEAD


def _run_chunk(
    head: bytes, ids: list[str], raws: list[bytes], cids: list[str], counts: list[int]
) -> Chunk:
    tail = b"}"
    if len(cids) > 1:
        tail = b',"requests":' + msgspec.json.encode(list(zip(cids, counts, strict=True))) + tail
    payload = head + b",".join(raws) + b"]" + tail
    return Chunk(payload, msg_id_for(ids), tuple(ids), cids[0], len(cids))


def decode(payload: bytes) -> Envelope:
    """Raises BadEnvelope when `payload` is not a version-1 envelope."""
    try:
        envelope = _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise BadEnvelope(f"undecodable envelope: {exc}") from exc
    if envelope.v != VERSION:
        raise BadEnvelope(f"unknown envelope version {envelope.v}")
    return envelope
