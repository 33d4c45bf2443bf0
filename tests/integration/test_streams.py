"""The work stream and its history on a real nats-server: retention, and the migration
of a stream of limits retention that still holds unconsumed messages."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import anyio
import nats
import nats.js.errors
import pytest
from nats.js import api

from sluice.config import Settings
from sluice.edges.bus import JetStreamBus

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@pytest.fixture
def settings(nats_url: str, nats_prefix: str) -> Settings:
    return Settings(
        nats_url=nats_url,
        stream=f"{nats_prefix}_EVENTS",
        subject_prefix=nats_prefix,
        sources=("facebook", "tiktok"),
        ack_wait=2.0,
        fetch_timeout=0.5,
    )


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[Any]:
    nc = await nats.connect(nats_url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


async def drained(js: Any, stream: str) -> int:
    """The messages left in `stream` once its acks are applied (the server applies
    them from a queue of its own): waits until it holds none, for up to 10 s."""
    with anyio.move_on_after(10):
        while (messages := (await js.stream_info(stream)).state.messages) > 0:
            await anyio.sleep(0.05)
    return int(messages)


async def history_payloads(js: Any, settings: Settings) -> list[bytes]:
    info = await js.stream_info(settings.history_stream_name)
    out = []
    for seq in range(int(info.state.first_seq), int(info.state.last_seq) + 1):
        out.append((await js.get_msg(settings.history_stream_name, seq=seq)).data)
    return out


async def take_all(bus: JetStreamBus, source: str, count: int) -> list[bytes]:
    """Fetch and ack `count` messages of `source`."""
    sub = await bus.subscribe(source)
    taken: list[bytes] = []
    try:
        while len(taken) < count:
            for delivery in await sub.fetch(count - len(taken), 1.0):
                taken.append(delivery.data)
                await delivery.ack()
    finally:
        await sub.close()
    return taken


async def test_an_acked_message_leaves_the_work_stream_and_stays_in_the_history(
    settings: Settings, js: Any
) -> None:
    async with JetStreamBus.connect(settings) as bus:
        for i in range(5):
            await bus.publish("facebook", b"m%d" % i, msg_id=f"m{i}", headers={})
        assert await take_all(bus, "facebook", 5) == [b"m%d" % i for i in range(5)]
        assert await drained(js, settings.stream) == 0
        work = await js.stream_info(settings.stream)
        assert work.config.retention == api.RetentionPolicy.WORK_QUEUE
        assert await history_payloads(js, settings) == [b"m%d" % i for i in range(5)]
        history = await js.stream_info(settings.history_stream_name)
        assert history.config.retention == api.RetentionPolicy.LIMITS
        assert history.config.discard == api.DiscardPolicy.OLD
        assert history.config.mirror.name == settings.stream  # a mirror: no copy of its own
        assert history.config.sources is None


async def test_more_than_max_bytes_goes_through_once_written(settings: Settings, js: Any) -> None:
    """The old wall: limits retention refused new messages once max_bytes of history had
    accumulated. A work queue only counts what is not yet acked (and, for about a
    second, what is acked and not yet confirmed copied to the history)."""
    small = dataclasses.replace(settings, stream_max_bytes=64 * 1024)
    payload = b"x" * 4000
    async with JetStreamBus.connect(small) as bus:
        sub = await bus.subscribe("facebook")
        try:
            for round_ in range(5):  # 5 x 40 kB through a 64 kB stream
                for i in range(10):
                    await bus.publish("facebook", payload, msg_id=f"m{round_}.{i}", headers={})
                taken = 0
                while taken < 10:
                    for delivery in await sub.fetch(10, 1.0):
                        await delivery.ack()
                        taken += 1
                assert await drained(js, small.stream) == 0
        finally:
            await sub.close()
        assert len(await history_payloads(js, small)) == 50


async def test_a_limits_stream_is_migrated_keeping_unacked_messages_and_history(
    settings: Settings, js: Any
) -> None:
    """A stream as sluice created it before: limits retention, a facebook consumer
    that acked the first 4 of its 6 messages, a tiktok source never consumed."""
    await js.add_stream(
        api.StreamConfig(
            name=settings.stream,
            subjects=[f"{settings.subject_prefix}.>"],
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.NEW,
        )
    )
    facebook, tiktok = settings.subject("facebook"), settings.subject("tiktok")
    for i in range(6):
        await js.publish(facebook, b"f%d" % i, headers={"Nats-Msg-Id": f"f{i}"})
    for i in range(3):
        await js.publish(tiktok, b"t%d" % i, headers={"Nats-Msg-Id": f"t{i}"})
    await js.add_consumer(
        settings.stream,
        api.ConsumerConfig(
            durable_name="sluice-facebook",
            filter_subject=facebook,
            ack_policy=api.AckPolicy.EXPLICIT,
        ),
    )
    old = await js.pull_subscribe_bind(durable="sluice-facebook", stream=settings.stream)
    for msg in await old.fetch(4, timeout=2):
        await msg.ack_sync()
    await old.unsubscribe()

    async with JetStreamBus.connect(settings) as bus:
        work = await js.stream_info(settings.stream)
        assert work.config.retention == api.RetentionPolicy.WORK_QUEUE
        assert work.config.subjects == [f"{settings.subject_prefix}.>"]
        assert work.state.messages == 5  # f4, f5, t0-t2
        assert work.state.first_seq > 9  # numbering goes on
        history = await history_payloads(js, settings)
        assert history[:9] == [b"f%d" % i for i in range(6)] + [b"t%d" % i for i in range(3)]
        with pytest.raises(nats.js.errors.NotFoundError):
            await js.stream_info(f"{settings.stream}_MIGRATION")

        assert await take_all(bus, "facebook", 2) == [b"f4", b"f5"]
        assert await take_all(bus, "tiktok", 3) == [b"t0", b"t1", b"t2"]
        ack = await bus.publish("facebook", b"new", msg_id="new", headers={})
        assert await take_all(bus, "facebook", 1) == [b"new"]
        assert ack.seq > work.state.last_seq
        assert await drained(js, settings.stream) == 0
        assert (await history_payloads(js, settings))[-1] == b"new"

    # A second start finds nothing to migrate and changes nothing.
    async with JetStreamBus.connect(settings):
        assert (await js.stream_info(settings.stream)).state.last_seq == ack.seq


async def test_a_history_that_sources_the_work_stream_is_kept_and_keeps_working(
    settings: Settings, js: Any
) -> None:
    """The layout sluice created before the history became a mirror: JetStream cannot
    turn a sourcing stream into a mirror, so it stays as it is, limits updated."""
    await js.add_stream(
        api.StreamConfig(
            name=settings.stream,
            subjects=[f"{settings.subject_prefix}.>"],
            retention=api.RetentionPolicy.WORK_QUEUE,
            discard=api.DiscardPolicy.NEW,
        )
    )
    await js.add_stream(
        api.StreamConfig(
            name=settings.history_stream_name,
            sources=[api.StreamSource(name=settings.stream)],
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.OLD,
            max_age=60.0,
        )
    )
    async with JetStreamBus.connect(settings) as bus:
        for i in range(3):
            await bus.publish("facebook", b"m%d" % i, msg_id=f"m{i}", headers={})
        assert await take_all(bus, "facebook", 3) == [b"m%d" % i for i in range(3)]
        assert await drained(js, settings.stream) == 0
        with anyio.fail_after(10):
            while len(await history_payloads(js, settings)) < 3:
                await anyio.sleep(0.05)
        assert await history_payloads(js, settings) == [b"m%d" % i for i in range(3)]
    history = await js.stream_info(settings.history_stream_name)
    assert history.config.mirror is None
    assert [x.name for x in history.config.sources] == [settings.stream]
    assert history.config.max_age == settings.history_max_age


async def test_processes_starting_together_both_get_the_streams(
    settings: Settings, js: Any
) -> None:
    """An ingress and a worker of a fresh deployment start at once."""

    async def start() -> None:
        async with JetStreamBus.connect(settings) as bus:
            await bus.publish("facebook", b"m", msg_id="m", headers={})

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(start)
    work = await js.stream_info(settings.stream)
    assert work.config.subjects == [f"{settings.subject_prefix}.>"]
    assert work.state.messages == 1


async def test_a_migration_cut_short_after_the_old_stream_was_deleted_is_finished(
    settings: Settings, js: Any
) -> None:
    """The process died after step 4: no work stream, the unacked messages aside in
    the migration stream, which also says where the old numbering ended."""
    moving = f"sluice_migration.{settings.stream}"
    await js.add_stream(
        api.StreamConfig(
            name=f"{settings.stream}_MIGRATION",
            subjects=[f"{moving}.>"],
            metadata={"sluice_first_seq": "100"},
        )
    )
    for i in range(2):
        await js.publish(
            f"{moving}.{settings.subject('facebook')}", b"f%d" % i, headers={"Nats-Msg-Id": f"f{i}"}
        )
    async with JetStreamBus.connect(settings) as bus:
        work = await js.stream_info(settings.stream)
        assert (work.state.first_seq, work.state.messages) == (100, 2)
        assert await take_all(bus, "facebook", 2) == [b"f0", b"f1"]
        with pytest.raises(nats.js.errors.NotFoundError):
            await js.stream_info(f"{settings.stream}_MIGRATION")
    assert await drained(js, settings.stream) == 0
    assert await history_payloads(js, settings) == [b"f0", b"f1"]
