"""The drain deadline: shares of one budget, and shields that never outlive it."""

from __future__ import annotations

import math

import anyio
import pytest
import trio
import trio.testing

from sluice.engine import DrainDeadline


@pytest.mark.anyio
async def test_before_the_drain_nothing_is_bounded() -> None:
    deadline = DrainDeadline()
    assert not deadline.started
    assert deadline.remaining() == math.inf
    assert deadline.share(0.4) == math.inf


@pytest.mark.trio
async def test_shares_are_fractions_of_the_budget_bounded_by_what_is_left(
    autojump_clock: trio.testing.MockClock,
) -> None:
    deadline = DrainDeadline()
    deadline.begin(10.0)
    assert deadline.share(0.4) == pytest.approx(4.0)
    assert deadline.share(1.0, reserve=0.25) == pytest.approx(7.5)
    await trio.sleep(8.0)
    assert deadline.remaining() == pytest.approx(2.0)
    assert deadline.share(0.4) == pytest.approx(2.0)  # less is left than the share
    assert deadline.share(1.0, reserve=0.25) == 0.0  # all of it is the flush's reserve
    deadline.begin(100.0)  # a drain begins once
    assert deadline.remaining() == pytest.approx(2.0)


@pytest.mark.trio
async def test_a_shield_ends_at_the_drain_deadline_set_after_it_began(
    autojump_clock: trio.testing.MockClock,
) -> None:
    deadline = DrainDeadline()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:

        async def step() -> None:
            with deadline.shield(60.0) as scope:
                await trio.sleep(50.0)  # a commit that hangs
            assert scope.cancelled_caught

        nursery.start_soon(step)
        await trio.sleep(1.0)
        deadline.begin(3.0)
        nursery.cancel_scope.cancel()  # an ordinary cancel does not cut the shield
    assert trio.current_time() - start == pytest.approx(4.0)


@pytest.mark.anyio
async def test_force_cuts_every_shield_at_once() -> None:
    deadline = DrainDeadline()
    cut = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def step() -> None:
            with deadline.shield(3600.0):
                await anyio.sleep_forever()
            cut.set()

        tg.start_soon(step)
        await anyio.wait_all_tasks_blocked()
        deadline.force()
        await cut.wait()
    with deadline.shield(3600.0) as scope:  # once forced, a new shield ends at once
        await anyio.sleep(3600.0)
    assert scope.cancelled_caught
