"""What `sluice publish` sends: live-like users, videos and timestamps, and the worst case."""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections import defaultdict
from datetime import datetime
from typing import Any

import msgspec
import pytest

from sluice.publish import Traffic, add_arguments, options_from
from sluice.publish.bodies import BodyMaker
from sluice.publish.events import EVENT_TYPES, pool_user, pool_user_json
from sluice.publish.http1 import Connection, HttpError, Target
from sluice.sources import validate_body


def events_of(maker: BodyMaker, batches: int, size: int) -> list[dict[str, Any]]:
    return [e for _ in range(batches) for e in msgspec.json.decode(maker.make(size).body)]


def unix(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def video_of(event: dict[str, Any]) -> str | None:
    video: str | None = event["data"]["engagement"].get("videoId")
    return video


# --------------------------------------------------------------------------- validity


@pytest.mark.parametrize(
    "traffic",
    [Traffic(), Traffic.worst_case(), Traffic(users=1, videos=1, jitter=0, late=1.0)],
    ids=["live", "worst-case", "one-user-all-late"],
)
def test_every_generated_event_passes_sluices_own_validator(traffic: Traffic) -> None:
    maker = BodyMaker(seed=11, traffic=traffic)
    for size in (1, 7, 500):
        for _ in range(4):
            batch = maker.make(size)
            validated = validate_body(batch.body)
            assert validated.accepted == size and not validated.rejected
    bare = maker.make(1, bare=True).body
    assert bare.startswith(b"{") and validate_body(bare).accepted == 1
    kinds = {(e["source"], e["funnelStage"], e["eventType"]) for e in events_of(maker, 4, 500)}
    assert kinds == {(s, stage, t) for (s, stage), ts in EVENT_TYPES.items() for t in ts}


def test_the_dict_level_generator_is_valid_and_uses_the_same_users() -> None:
    events = Traffic(users=50).events(300, seed=4)
    validated = validate_body(msgspec.json.encode(events))
    assert validated.accepted == 300 and not validated.rejected
    for event in events:
        user = event["data"]["user"]
        index = next(i for i in range(50) if pool_user(event["source"], i) == user)
        assert msgspec.json.decode(pool_user_json(event["source"], index)) == user


def test_templates_give_every_event_a_unique_id() -> None:
    maker = BodyMaker(seed=5, traffic=Traffic(users=3, videos=2))
    ids = [e["eventId"] for e in events_of(maker, 50, 200)]
    ids += [msgspec.json.decode(maker.make(1, bare=True).body)["eventId"] for _ in range(500)]
    assert len(ids) == len(set(ids)) == 10_500
    assert all(len(i) == 36 for i in ids)  # UUID-shaped


# --------------------------------------------------------------------------- distribution


def test_users_repeat_with_stable_attributes_and_a_few_are_very_active() -> None:
    events = events_of(BodyMaker(seed=1), 20, 500)
    seen: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        seen[event["data"]["user"]["userId"]].append(event["data"]["user"])
    assert all(u == users[0] for users in seen.values() for u in users)  # attributes stable
    counts = sorted((len(users) for users in seen.values()), reverse=True)
    assert len(seen) < len(events) * 0.6  # users repeat
    assert counts[0] > 200  # the most active user of a source: ~6% of its ~5,000 events
    assert counts.count(1) > 500  # and a long tail seen once
    videos = [v for e in events if (v := video_of(e)) is not None]
    assert len(set(videos)) < len(videos) * 0.8  # videos repeat too


def test_pools_bound_the_users_and_videos_per_source() -> None:
    events = events_of(BodyMaker(seed=2, traffic=Traffic(users=10, videos=3)), 10, 300)
    for source in ("facebook", "tiktok"):
        mine = [e for e in events if e["source"] == source]
        assert len({e["data"]["user"]["userId"] for e in mine}) == 10
        assert len({video_of(e) for e in mine} - {None}) == 3


def test_timestamps_are_near_now_with_a_few_late_ones() -> None:
    maker = BodyMaker(seed=3)  # jitter 5 s, 2% late by up to an hour
    before = time.time()
    events = events_of(maker, 20, 500)
    after = time.time()
    stamps = [unix(e["timestamp"]) for e in events]
    assert all(s <= after for s in stamps)  # never in the future
    on_time = sum(s >= before - 5.01 for s in stamps)
    late = sum(s < before - 60 for s in stamps)
    assert on_time >= 0.95 * len(events)
    assert 100 <= late <= 330  # ~2% of 10,000, almost all more than a minute old
    assert min(stamps) >= before - 3600.01
    for event in events:  # actionTime is the event's own time
        action = event["data"]["engagement"].get("actionTime")
        assert action is None or action == event["timestamp"]


def test_worst_case_has_a_new_user_and_video_on_every_event_over_the_last_hour() -> None:
    before = time.time()
    events = events_of(BodyMaker(seed=4, traffic=Traffic.worst_case()), 10, 300)
    users = [e["data"]["user"]["userId"] for e in events]
    videos = [v for e in events if (v := video_of(e)) is not None]
    assert len(set(users)) == len(users) and len(set(videos)) == len(videos)
    ages = [before - unix(e["timestamp"]) for e in events]
    assert sum(age > 1800 for age in ages) > len(events) / 3  # uniform over the hour


def test_the_same_seed_makes_the_same_events_apart_from_the_clock() -> None:
    def shape(events: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
        return [(e["eventId"], e["data"]["user"]["userId"], video_of(e)) for e in events]

    assert shape(events_of(BodyMaker(seed=9), 3, 100)) == shape(
        events_of(BodyMaker(seed=9), 3, 100)
    )


# --------------------------------------------------------------------------- duplicates, invalid


def test_duplicates_are_byte_for_byte_re_sends_of_acknowledged_events() -> None:
    maker = BodyMaker(duplicates=0.2, seed=6)
    first = maker.make(500)
    raws_first = msgspec.json.decode(first.body, type=list[msgspec.Raw])
    sent_bytes = {bytes(raw) for raw in raws_first}
    maker.acknowledged(first)
    batch = maker.make(1000)
    raws = [bytes(r) for r in msgspec.json.decode(batch.body, type=list[msgspec.Raw])]
    again = [raw for raw in raws if raw in sent_bytes]
    assert len(again) == batch.duplicates and 120 < batch.duplicates < 280
    ids = {msgspec.json.decode(raw)["eventId"] for raw in sent_bytes}
    fresh_ids = [msgspec.json.decode(raw)["eventId"] for raw in raws if raw not in sent_bytes]
    assert not ids & set(fresh_ids)  # anything not byte-equal is a new event


def test_the_invalid_ratio_is_honoured_and_each_reason_names_a_field() -> None:
    maker = BodyMaker(invalid=0.1, seed=8, traffic=Traffic(users=100))
    batches = [maker.make(1000) for _ in range(5)]
    made = sum(b.invalid for b in batches)
    assert 400 < made < 600
    rejected = [r for b in batches for r in validate_body(b.body).rejected]
    assert len(rejected) == made
    fields = {r.error.split(":", 1)[0] for r in rejected}
    assert fields == {"data.user.userId", "funnelStage", "timestamp", "eventType"}
    assert all(r.event_id for r in rejected)  # each still carries its id


# --------------------------------------------------------------------------- CLI


def parse(*argv: str) -> Traffic:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return options_from(parser.parse_args(["--url", "http://x/webhook", *argv])).traffic


def test_the_cli_flags_describe_the_traffic() -> None:
    assert parse() == Traffic()
    assert parse("--users", "0", "--videos", "7", "--jitter", "1", "--late", "0") == Traffic(
        users=0, videos=7, jitter=1.0, late=0.0
    )
    assert parse("--users", "5", "--worst-case") == Traffic.worst_case()
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert "log-uniformly" in parser.format_help() and "--worst-case" in parser.format_help()


def test_traffic_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        Traffic(users=-1)
    with pytest.raises(ValueError):
        Traffic(late=1.5)


def test_make_event_and_make_events_keep_their_worst_case_defaults() -> None:
    from tests.factories import make_event, make_events

    events = make_events(200, seed=1)
    assert len({e["data"]["user"]["userId"] for e in events}) == 200
    assert validate_body(msgspec.json.encode([*events, make_event()])).accepted == 201
    rng = random.Random(0)
    assert make_event("tiktok", "bottom", rng=rng, eventType="purchase")["eventType"] == "purchase"


# --------------------------------------------------------------------------- the client


@pytest.mark.parametrize(
    ("answer", "body"),
    [
        (
            b'HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{"a"\r\n'
            b"3\r\n:1}\r\n0\r\nX-Trailer: y\r\n\r\n",
            b'{"a":1}',
        ),
        (b'HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n\r\n{"b":2}', b'{"b":2}'),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
    ],
    ids=["chunked", "until-close", "no-body"],
)
def test_the_client_reads_chunked_unsized_and_empty_answers(answer: bytes, body: bytes) -> None:
    async def go() -> list[tuple[int, bytes]]:
        got: list[bytes] = []
        done: list[asyncio.Event] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            done.append(asyncio.Event())
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            got.append(await reader.readexactly(length))
            # Sent in two parts, so the client parses across reads.
            writer.write(answer[:20])
            await writer.drain()
            writer.write(answer[20:])
            await writer.drain()
            if b"Content-Length" in answer or b"chunked" in answer or b" 204 " in answer:
                await reader.read()  # until the client closes
            writer.close()  # (otherwise this ends the body)
            await writer.wait_closed()
            done[-1].set()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        results = []
        async with server:
            for _ in range(2):
                connection = Connection(Target.parse(f"http://127.0.0.1:{port}/webhook"))
                answered = await connection.post(b'{"x":1}', {"X-Test": "1"})
                results.append((answered.status, answered.body))
                await connection.close()
                await done[-1].wait()
        assert got == [b'{"x":1}', b'{"x":1}']
        return results

    status = 204 if b" 204 " in answer else 202
    assert asyncio.run(go()) == [(status, body)] * 2


def test_the_client_gives_up_on_an_answer_that_never_comes() -> None:
    async def go() -> str:
        release = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            await release.wait()  # never answers; ends when the test is done
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            target = Target.parse(f"http://127.0.0.1:{port}/webhook")
            connection = Connection(target, timeout=0.1)
            with pytest.raises(HttpError) as info:
                await connection.post(b"{}")
            await connection.close()
            release.set()
        return str(info.value)

    assert "no answer within 0.1 s" in asyncio.run(go())
