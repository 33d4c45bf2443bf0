"""Drain one child at a time (`ChildSpec.wait_on_drain`) and the current-actor context."""

from functools import partial

import anyio
import anyio.abc
import pytest

from sluice.engine import Actor, ChildSpec, Restart, Supervisor, current_actor
from sluice.engine.testing import StubActor


class SlowToStop(Actor):
    """Stands for HTTP ingress: after `request_stop()` it finishes work in hand first."""

    def __init__(self, name: str, log: list[str], finish: anyio.Event) -> None:
        self.name = name
        self.log = log
        self.finish = finish
        self.stop = anyio.Event()

    def request_stop(self) -> None:
        self.log.append(f"{self.name}:stop")
        self.stop.set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        await self.stop.wait()
        await self.finish.wait()  # "in-flight requests"
        self.log.append(f"{self.name}:returned")


@pytest.mark.anyio
async def test_a_waited_child_returns_before_the_earlier_children_are_asked_to_stop() -> None:
    log: list[str] = []
    finish = anyio.Event()
    sup = Supervisor(
        [
            ChildSpec("consumer", partial(StubActor, "consumer", log=log)),
            ChildSpec("ingress", lambda: SlowToStop("ingress", log, finish), wait_on_drain=True),
            ChildSpec("metrics", partial(StubActor, "metrics", log=log)),
        ]
    )
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        results: list[bool] = []

        async def drain() -> None:
            results.append(await sup.drain(10))

        tg.start_soon(drain)
        await anyio.wait_all_tasks_blocked()
        stops = [entry for entry in log if entry.endswith(":stop")]
        assert stops == ["metrics:stop", "ingress:stop"]  # consumer not yet: ingress is busy
        finish.set()
    assert results == [True]
    assert log.index("ingress:returned") < log.index("consumer:stop")


@pytest.mark.trio
async def test_a_waited_child_that_never_returns_is_cancelled_at_the_deadline(
    autojump_clock: object,
) -> None:
    log: list[str] = []
    never = anyio.Event()
    sup = Supervisor(
        [
            ChildSpec("consumer", partial(StubActor, "consumer", log=log)),
            ChildSpec("ingress", lambda: SlowToStop("ingress", log, never), wait_on_drain=True),
        ]
    )
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        start = anyio.current_time()
        assert await sup.drain(4.0) is False
        assert anyio.current_time() - start == pytest.approx(4.0)
    assert "consumer:stop" not in log  # force cancelled it instead
    assert log[-1] == "consumer:cancelled"


@pytest.mark.anyio
async def test_wait_on_drain_for_a_child_never_started_does_not_block() -> None:
    log: list[str] = []
    gate = anyio.Event()

    class StartsSlowly(StubActor):
        async def run(
            self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
        ) -> None:
            with anyio.CancelScope() as self.scope:
                await gate.wait()
            task_status.started()

        def request_stop(self) -> None:
            self.scope.cancel()

    sup = Supervisor(
        [
            ChildSpec("a", lambda: StartsSlowly("a", log=log)),
            ChildSpec("b", partial(StubActor, "b", log=log), wait_on_drain=True),
        ]
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(sup.run)
        await anyio.wait_all_tasks_blocked()
        with anyio.fail_after(5):
            assert await sup.drain(10) is True
    assert not any(entry.startswith("b:") for entry in log)


class NamesItself(Actor):
    def __init__(self, name: str, seen: dict[str, str | None]) -> None:
        self.name = name
        self.seen = seen

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        async def helper() -> None:
            self.seen[f"{self.name}/helper"] = current_actor.get()

        async with anyio.create_task_group() as tg:
            tg.start_soon(helper)
        self.seen[self.name] = current_actor.get()
        task_status.started()


@pytest.mark.anyio
async def test_current_actor_names_the_child_in_its_tasks_only() -> None:
    seen: dict[str, str | None] = {}
    sup = Supervisor(
        [
            ChildSpec("writer[0]", lambda: NamesItself("writer[0]", seen), Restart.TRANSIENT),
            ChildSpec("ingress", lambda: NamesItself("ingress", seen), Restart.TRANSIENT),
        ]
    )
    await sup.run()
    assert seen == {
        "writer[0]": "writer[0]",
        "writer[0]/helper": "writer[0]",
        "ingress": "ingress",
        "ingress/helper": "ingress",
    }
    assert current_actor.get() is None
