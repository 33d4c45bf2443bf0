"""The envelope format: one request's events, or several requests' with their runs."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from sluice import envelope

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def pairs(n: int, size: int = 40) -> list[tuple[str, bytes]]:
    return [
        (f"e{i}", msgspec.json.encode({"eventId": f"e{i}", "pad": "x" * size})) for i in range(n)
    ]


def test_one_request_gives_the_envelope_it_always_did() -> None:
    events = pairs(3)
    [chunk] = envelope.encode("tiktok", events, received_at=NOW, max_bytes=1 << 20)
    expected = b'{"v":1,"source":"tiktok","receivedAt":"2026-11-23T12:00:00Z","events":['
    assert chunk.payload == expected + b",".join(raw for _, raw in events) + b"]}"
    assert chunk.msg_id == envelope.msg_id_for(["e0", "e1", "e2"])
    assert chunk.correlation_id is None and chunk.requests == 1
    assert envelope.decode(chunk.payload).requests is None


@pytest.mark.parametrize("max_bytes", [400, 700, 1500, 1 << 20])
def test_requests_runs_follow_the_events_across_split_envelopes(max_bytes: int) -> None:
    events = pairs(40)
    runs = [(f"request-{i}", n) for i, n in enumerate([1, 7, 3, 1, 1, 12, 5, 10])]
    chunks = list(
        envelope.encode("facebook", events, received_at=NOW, max_bytes=max_bytes, requests=runs)
    )
    owners = [cid for cid, n in runs for _ in range(n)]
    seen: list[tuple[str, str]] = []
    for chunk in chunks:
        assert len(chunk.payload) <= max_bytes
        decoded = envelope.decode(chunk.payload)
        ids = [msgspec.json.decode(raw)["eventId"] for raw in decoded.events]
        assert ids == list(chunk.event_ids)
        cids = [
            cid
            for cid, n in decoded.requests or [(chunk.correlation_id, len(ids))]
            for _ in range(n)
        ]
        assert chunk.correlation_id == cids[0]
        assert chunk.requests == len(decoded.requests or [None])
        seen.extend(zip(ids, cids, strict=True))
    assert seen == list(zip([i for i, _ in events], owners, strict=True))
    if max_bytes == 1 << 20:
        assert len(chunks) == 1 and chunks[0].requests == len(runs)


def test_a_chunk_of_one_request_inside_a_combined_batch_has_no_runs_field() -> None:
    events = pairs(4, size=300)
    runs = [("a", 4)]
    chunks = list(
        envelope.encode("facebook", events, received_at=NOW, max_bytes=800, requests=runs)
    )
    assert len(chunks) > 1
    assert all(b'"requests"' not in c.payload and c.correlation_id == "a" for c in chunks)


def test_runs_must_cover_the_events() -> None:
    with pytest.raises(ValueError, match="cover"):
        list(
            envelope.encode(
                "facebook", pairs(3), received_at=NOW, max_bytes=1 << 20, requests=[("a", 2)]
            )
        )


def test_old_readers_ignore_the_runs_field() -> None:
    class V1(msgspec.Struct):
        v: int
        source: str
        events: list[msgspec.Raw]

    [chunk] = envelope.encode(
        "facebook", pairs(2), received_at=NOW, max_bytes=1 << 20, requests=[("a", 1), ("b", 1)]
    )
    assert len(msgspec.json.decode(chunk.payload, type=V1).events) == 2
