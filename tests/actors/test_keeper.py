"""The keeper alone, on a fake consumer that redelivers like JetStream."""

from __future__ import annotations

import anyio
import pytest
import trio.testing

from sluice.actors.keeper import MAX_HOLD, Keeper
from sluice.engine.testing import run_actor
from sluice.inflight import HeldMessages, HoldingSubscription
from sluice.metrics import Metrics
from tests.fakes import RedeliveringSubscription

ACK_WAIT = 5.0


def held_subscription() -> tuple[RedeliveringSubscription, HeldMessages, HoldingSubscription]:
    fake = RedeliveringSubscription(ack_wait=ACK_WAIT)
    held = HeldMessages()
    return fake, held, HoldingSubscription(fake, held)


@pytest.mark.trio
async def test_the_fake_redelivers_what_is_held_past_ack_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """What the keeper prevents: no keeper, the message comes again after ack_wait."""
    fake, _, subscription = held_subscription()
    fake.put(b"m")
    [_first] = await subscription.fetch(10, 1.0)
    started = anyio.current_time()
    [again] = await subscription.fetch(10, 60.0)
    assert again.num_delivered == 2
    assert anyio.current_time() - started == pytest.approx(ACK_WAIT)


@pytest.mark.trio
async def test_a_message_held_through_a_slow_flush_is_not_redelivered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake, held, subscription = held_subscription()
    fake.put(b"m")
    async with run_actor(Keeper(held, ack_wait=ACK_WAIT)) as keeper:
        [delivery] = await subscription.fetch(10, 1.0)
        assert await subscription.fetch(10, 10 * ACK_WAIT) == []  # a minute held: no copy
        await delivery.ack()
        keeper.stop()
    assert len(held) == 0 and fake.messages[0].delivered == 1


@pytest.mark.trio
async def test_on_stop_what_is_held_is_given_back_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake, held, subscription = held_subscription()
    fake.put(b"m")
    fake.put(b"n")
    async with run_actor(Keeper(held, ack_wait=ACK_WAIT)) as keeper:
        fetched = await subscription.fetch(10, 1.0)
        assert len(held) == 2
        keeper.stop()
    stopped = anyio.current_time()
    again = await fake.fetch(10, 60.0)  # the next worker
    assert [d.num_delivered for d in again] == [2, 2]
    assert anyio.current_time() == stopped  # no ack_wait to wait out
    assert len(fetched) == 2 and len(held) == 0


@pytest.mark.trio
async def test_a_message_lost_in_a_crashed_actor_is_signalled_no_longer_than_max_hold(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake, held, subscription = held_subscription()
    fake.put(b"m")
    async with run_actor(Keeper(held, ack_wait=ACK_WAIT)) as keeper:
        await subscription.fetch(10, 1.0)  # and then dropped on the floor
        fetched = anyio.current_time()
        [again] = await subscription.fetch(10, 2 * MAX_HOLD)
        assert again.num_delivered == 2
        assert MAX_HOLD <= anyio.current_time() - fetched <= MAX_HOLD + ACK_WAIT
        await again.ack()
        keeper.stop()


@pytest.mark.trio
async def test_a_message_held_past_max_hold_is_let_go_and_leaves_the_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Lost in a crashed actor, it would otherwise stay in memory, and take the byte
    budget, for as long as the process lives."""
    fake = RedeliveringSubscription(ack_wait=ACK_WAIT)
    held = HeldMessages(max_bytes=10)
    subscription = HoldingSubscription(fake, held)
    fake.put(b"12345678")
    await subscription.fetch(10, 1.0)  # and then dropped on the floor
    assert held.bytes == 8 and held.room() == 2
    autojump_clock.jump(MAX_HOLD - 1)
    assert await held.signal_progress(older_than=1.0, at_most=MAX_HOLD) == 1
    assert len(held) == 1
    autojump_clock.jump(1)
    assert await held.signal_progress(older_than=1.0, at_most=MAX_HOLD) == 0
    assert len(held) == 0 and held.bytes == 0 and held.room() == 10


@pytest.mark.trio
async def test_the_budget_wakes_a_waiter_when_a_message_held_is_finished(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = RedeliveringSubscription(ack_wait=ACK_WAIT)
    held = HeldMessages(max_bytes=10)
    subscription = HoldingSubscription(fake, held)
    fake.put(b"12345")
    fake.put(b"67890")
    first, second = await subscription.fetch(10, 1.0)
    assert held.bytes == 10 and held.room() == 0
    woken = []
    async with trio.open_nursery() as nursery:

        async def waiter() -> None:
            await held.wait_for_room()
            woken.append(held.room())

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert woken == []
        await first.ack()
    assert woken == [5]
    await second.nak()
    assert held.room() == 10 and HeldMessages().room() is None


@pytest.mark.trio
async def test_the_keeper_reports_what_is_held_in_messages_and_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake, held, subscription = held_subscription()
    fake.put(b"12345678")
    metrics = Metrics()
    async with run_actor(Keeper(held, ack_wait=ACK_WAIT, metrics=metrics)) as keeper:
        [delivery] = await subscription.fetch(10, 1.0)
        autojump_clock.jump(ACK_WAIT)  # past a period: the keeper samples
        await trio.testing.wait_all_tasks_blocked()
        assert metrics.registry.get_sample_value("messages_held") == 1
        assert metrics.registry.get_sample_value("messages_held_bytes") == 8
        await delivery.ack()
        keeper.stop()
