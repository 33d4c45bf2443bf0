import logging
from functools import partial

import anyio
import anyio.abc
import pytest

from sluice.engine import (
    Actor,
    ChildSpec,
    Restart,
    RestartBudgetExceeded,
    RestartPolicy,
    Supervisor,
)
from sluice.engine.testing import CrashingFactory, InjectedFault, RecordingClock, StubActor

NO_BACKOFF = RestartPolicy(backoff_initial=0, jitter=0)


class GatedStart(Actor):
    """Calls started() only once the test opens the gate."""

    def __init__(self, name: str, log: list[str], gate: anyio.Event) -> None:
        self.name = name
        self.log = log
        self.gate = gate
        self.stop = anyio.Event()

    def request_stop(self) -> None:
        self.stop.set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        self.log.append(f"{self.name}:run")
        await self.gate.wait()
        task_status.started()
        self.log.append(f"{self.name}:started")
        await self.stop.wait()


@pytest.mark.anyio
async def test_children_start_in_order_each_after_the_previous_started() -> None:
    log: list[str] = []
    gate = anyio.Event()
    sup = Supervisor(
        [
            ChildSpec("a", lambda: GatedStart("a", log, gate)),
            ChildSpec("b", lambda: StubActor("b", log=log)),
        ]
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(sup.run)
        await anyio.wait_all_tasks_blocked()
        assert log == ["a:run"]  # b waits for a's started()
        assert sup.children_alive() == {"a": False, "b": False}
        gate.set()
        await anyio.wait_all_tasks_blocked()
        assert log == ["a:run", "a:started", "b:run", "b:started"]
        assert sup.children_alive() == {"a": True, "b": True}
        assert await sup.drain(5)


@pytest.mark.anyio
async def test_run_reports_started_once_every_child_started() -> None:
    log: list[str] = []
    sup = Supervisor([ChildSpec(n, partial(StubActor, n, log=log)) for n in "abc"])
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        assert log == ["a:run", "a:started", "b:run", "b:started", "c:run", "c:started"]
        assert await sup.drain(5)
    with pytest.raises(RuntimeError, match="once"):
        await sup.run()


@pytest.mark.anyio
async def test_crash_before_started_is_restarted_before_next_child_starts() -> None:
    log: list[str] = []
    a = CrashingFactory("a", crashes=2, before_started=True, log=log)
    sup = Supervisor(
        [ChildSpec("a", a, policy=NO_BACKOFF), ChildSpec("b", lambda: StubActor("b", log=log))]
    )
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        assert log == [
            "a:run", "a:crashed", "a:run", "a:crashed", "a:run", "a:started", "b:run", "b:started"
        ]  # fmt: skip
        assert sup.restarts == {"a": 2, "b": 0}
        assert await sup.drain(5)


@pytest.mark.trio
async def test_crashed_child_restarts_alone_after_backoff_on_the_clock(
    autojump_clock: object, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []
    a = CrashingFactory("a", crashes=3, log=log)
    b = StubActor("b", log=log)
    restarted: list[tuple[str, BaseException]] = []
    clock = RecordingClock()
    policy = RestartPolicy(max_restarts=5, window=30, backoff_initial=1.0, jitter=0)
    sup = Supervisor(
        [ChildSpec("a", a, policy=policy), ChildSpec("b", lambda: b)],
        clock=clock,
        on_restart=lambda name, error: restarted.append((name, error)),
    )
    with caplog.at_level(logging.WARNING, logger="sluice.engine"):
        async with anyio.create_task_group() as tg:
            await tg.start(sup.run)
            await a.survivor_started.wait()
            gaps = [t1 - t0 for t0, t1 in zip(a.created_at, a.created_at[1:], strict=False)]
            assert gaps == pytest.approx([1.0, 2.0, 4.0])  # really elapsed on the mock clock
            assert clock.sleeps == pytest.approx([1.0, 2.0, 4.0])
            assert log.count("b:run") == 1  # the sibling was left alone
            assert sup.restarts == {"a": 3, "b": 0}
            assert [name for name, _ in restarted] == ["a", "a", "a"]
            assert all(isinstance(error, InjectedFault) for _, error in restarted)
            assert sup.children_alive() == {"a": True, "b": True}
            assert await sup.drain(5)
    assert sum("restart" in r.getMessage() for r in caplog.records) == 3


class CrashAfter(Actor):
    """Runs `seconds` on the clock after starting, then crashes (unless stopped first)."""

    name = "slow"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.stop = anyio.Event()

    def request_stop(self) -> None:
        self.stop.set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        with anyio.move_on_after(self.seconds):
            await self.stop.wait()
            return
        raise InjectedFault("late crash")


@pytest.mark.trio
async def test_restarts_outside_the_window_do_not_count(autojump_clock: object) -> None:
    clock = RecordingClock()
    fourth_restart = anyio.Event()

    def on_restart(name: str, error: BaseException) -> None:
        if sup.restarts[name] == 4:
            fourth_restart.set()

    policy = RestartPolicy(max_restarts=1, window=10, backoff_initial=1.0, jitter=0)
    sup = Supervisor(
        [ChildSpec("slow", lambda: CrashAfter(20), policy=policy)],
        clock=clock,
        on_restart=on_restart,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        await fourth_restart.wait()
        assert clock.sleeps == [1.0] * 4  # backoff starts over once the window is quiet
        assert await sup.drain(5)


@pytest.mark.trio
async def test_budget_exceeded_escalates_and_cancels_siblings(autojump_clock: object) -> None:
    log: list[str] = []
    a = CrashingFactory("a", crashes=100, log=log)
    policy = RestartPolicy(max_restarts=2, window=60, backoff_initial=1.0, jitter=0)
    sup = Supervisor(
        [ChildSpec("b", lambda: StubActor("b", log=log)), ChildSpec("a", a, policy=policy)]
    )
    start = anyio.current_time()
    with pytest.raises(RestartBudgetExceeded) as info:
        await sup.run()
    assert info.value.child == "a"
    assert isinstance(info.value.__cause__, InjectedFault)
    assert info.value.error is info.value.__cause__
    assert len(a.instances) == 3  # the first run and max_restarts restarts
    assert anyio.current_time() - start == pytest.approx(1.0 + 2.0)
    assert log[-1] == "b:cancelled"
    assert sup.children_alive() == {"b": False, "a": False}


@pytest.mark.anyio
async def test_budget_exceeded_is_raised_unwrapped_on_both_backends() -> None:
    log: list[str] = []
    a = CrashingFactory("a", crashes=100, log=log)
    sup = Supervisor(
        [ChildSpec("a", a, policy=RestartPolicy(max_restarts=3, backoff_initial=0)),
         ChildSpec("b", lambda: StubActor("b", log=log))]
    )  # fmt: skip
    with anyio.fail_after(5), pytest.raises(RestartBudgetExceeded, match="'a'"):
        await sup.run()
    assert sup.restarts == {"a": 3, "b": 0}
    assert log[-1] == "b:cancelled"


@pytest.mark.anyio
async def test_budget_exceeded_while_starting_stops_the_start(anyio_backend: str) -> None:
    log: list[str] = []
    a = CrashingFactory("a", crashes=100, before_started=True, log=log)
    policy = RestartPolicy(max_restarts=1, backoff_initial=0, jitter=0)
    sup = Supervisor(
        [ChildSpec("b", lambda: StubActor("b", log=log)), ChildSpec("a", a, policy=policy),
         ChildSpec("c", lambda: StubActor("c", log=log))]
    )  # fmt: skip
    async with anyio.create_task_group() as tg:
        with pytest.raises(RestartBudgetExceeded):
            await tg.start(sup.run)
    assert log == ["b:run", "b:started", "a:run", "a:crashed", "a:run", "a:crashed", "b:cancelled"]


@pytest.mark.anyio
async def test_transient_restarts_on_crash_only() -> None:
    log: list[str] = []
    a = CrashingFactory("a", crashes=1, log=log)
    done = StubActor("done", log=log, return_at_once=True)
    sup = Supervisor(
        [
            ChildSpec("a", a, restart=Restart.TRANSIENT, policy=NO_BACKOFF),
            ChildSpec("done", lambda: done, restart=Restart.TRANSIENT),
        ]
    )
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        await a.survivor_started.wait()
        await anyio.wait_all_tasks_blocked()
        assert sup.restarts == {"a": 1, "done": 0}
        assert sup.children_alive() == {"a": True, "done": False}
        assert log.count("done:run") == 1
        assert await sup.drain(5)


@pytest.mark.anyio
async def test_temporary_is_never_restarted_and_never_escalates() -> None:
    log: list[str] = []
    a = CrashingFactory("a", crashes=1, log=log)
    sup = Supervisor(
        [
            ChildSpec("a", a, restart=Restart.TEMPORARY, policy=RestartPolicy(max_restarts=0)),
            ChildSpec("b", lambda: StubActor("b", log=log)),
        ]
    )
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        await anyio.wait_all_tasks_blocked()
        assert len(a.instances) == 1
        assert sup.restarts == {"a": 0, "b": 0}
        assert sup.children_alive() == {"a": False, "b": True}
        assert await sup.drain(5)


@pytest.mark.anyio
async def test_permanent_child_returning_before_drain_is_restarted() -> None:
    log: list[str] = []
    actors = iter([StubActor("a", log=log, return_at_once=True), StubActor("a", log=log)])
    restarted: list[BaseException] = []
    sup = Supervisor(
        [ChildSpec("a", lambda: next(actors), policy=NO_BACKOFF)],
        on_restart=lambda _, error: restarted.append(error),
    )
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        await anyio.wait_all_tasks_blocked()
        assert sup.restarts == {"a": 1}
        assert isinstance(restarted[0], RuntimeError)
        assert sup.children_alive() == {"a": True}
        assert await sup.drain(5)
    assert log == ["a:run", "a:started", "a:returned", "a:run", "a:started", "a:stop", "a:returned"]


@pytest.mark.anyio
async def test_run_returns_when_every_child_is_done() -> None:
    sup = Supervisor(
        [
            ChildSpec(n, partial(StubActor, n, return_at_once=True), restart=Restart.TRANSIENT)
            for n in "ab"
        ]
    )
    with anyio.fail_after(5):
        await sup.run()
    assert sup.restarts == {"a": 0, "b": 0}
    assert await sup.drain(5)  # nothing left to drain


@pytest.mark.anyio
async def test_failing_on_restart_hook_does_not_break_supervision() -> None:
    a = CrashingFactory("a", crashes=1)

    def hook(name: str, error: BaseException) -> None:
        raise ValueError("metrics down")

    sup = Supervisor([ChildSpec("a", a, policy=NO_BACKOFF)], on_restart=hook)
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        await a.survivor_started.wait()
        assert await sup.drain(5)
