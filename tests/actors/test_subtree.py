"""The writing subtree: a nested supervisor whose spent budget never stops its siblings."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from sluice.actors.subtree import Subtree
from sluice.engine import ChildSpec, DrainDeadline, RestartPolicy, Supervisor
from sluice.engine.testing import CrashingFactory, StubActor

TIGHT = RestartPolicy(max_restarts=1, window=60.0, backoff_initial=0.1, jitter=0)
ENDLESS = RestartPolicy(max_restarts=2**31, window=1.0, backoff_initial=0.5, jitter=0)


@pytest.mark.trio
async def test_a_child_that_spends_its_budget_restarts_the_subtree_not_the_top(
    autojump_clock: trio.testing.MockClock,
) -> None:
    deadline = DrainDeadline()
    writer = CrashingFactory("writer", crashes=5)  # spends TIGHT twice, then runs
    ingress_log: list[str] = []
    subtrees: list[Subtree] = []

    def make_subtree() -> Subtree:
        subtree = Subtree("writing", [ChildSpec("writer", writer, policy=TIGHT)], deadline=deadline)
        subtrees.append(subtree)
        return subtree

    top = Supervisor(
        [
            ChildSpec("ingress", lambda: StubActor("ingress", log=ingress_log)),
            ChildSpec("writing", make_subtree, policy=ENDLESS, wait_on_drain=True),
        ],
        deadline=deadline,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(top.run)
        with trio.fail_after(60):
            await writer.survivor_started.wait()
        assert len(subtrees) == 3  # two subtrees ended by the spent budget, a third runs
        assert ingress_log == ["ingress:run", "ingress:started"]  # never restarted
        assert top.restarts.get("writing") == 2 and not top.restarts.get("ingress")
        assert subtrees[-1].children_alive() == {"writer": True}
        assert await top.drain(5.0)
    assert writer.instances[-1].log[-1] == "writer:returned"
