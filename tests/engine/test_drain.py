from functools import partial

import anyio
import anyio.abc
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from sluice.engine import Actor, ChildSpec, RestartPolicy, Supervisor, open_channel
from sluice.engine.testing import CrashingFactory, InjectedFault, StubActor


class Producer(Actor):
    """A source of work: sends 0, 1, 2, ... until asked to stop, then closes its output."""

    name = "producer"

    def __init__(self, out: MemoryObjectSendStream[int]) -> None:
        self.out = out
        self.sent = 0
        self._stop = anyio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while not self._stop.is_set():
            await self.out.send(self.sent)
            self.sent += 1
        await self.out.aclose()


class Relay(Actor):
    """Forwards its inbox; ends by end-of-stream (no request_stop)."""

    name = "relay"

    def __init__(self, inbox: MemoryObjectReceiveStream[int], out: MemoryObjectSendStream[int]):
        self.inbox = inbox
        self.out = out

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        async for item in self.inbox:
            await self.out.send(item)
        await self.out.aclose()
        await self.inbox.aclose()


class Sink(Actor):
    name = "sink"

    def __init__(self, inbox: MemoryObjectReceiveStream[int]) -> None:
        self.inbox = inbox
        self.items: list[int] = []
        self.got_some = anyio.Event()
        self.ended = False

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        async for item in self.inbox:
            self.items.append(item)
            if len(self.items) >= 10:
                self.got_some.set()
        await self.inbox.aclose()
        self.ended = True


@pytest.mark.anyio
async def test_drain_cascades_through_a_pipeline_by_end_of_stream() -> None:
    to_relay, relay_inbox = open_channel[int](4)
    to_sink, sink_inbox = open_channel[int](4)
    with to_relay, relay_inbox, to_sink, sink_inbox:
        producer = Producer(to_relay)
        sink = Sink(sink_inbox)
        sup = Supervisor(
            [  # downstream first, so the source starts last and stops first
                ChildSpec("sink", lambda: sink),
                ChildSpec("relay", lambda: Relay(relay_inbox, to_sink)),
                ChildSpec("producer", lambda: producer),
            ]
        )
        async with anyio.create_task_group() as tg:
            await tg.start(sup.run)
            await sink.got_some.wait()
            assert await sup.drain(10) is True
        assert sink.ended
        assert sink.items == list(range(producer.sent))  # nothing in flight was lost
        assert sup.restarts == {"sink": 0, "relay": 0, "producer": 0}
        assert sup.children_alive() == {"sink": False, "relay": False, "producer": False}


@pytest.mark.anyio
async def test_drain_requests_stop_in_reverse_start_order() -> None:
    log: list[str] = []
    sup = Supervisor([ChildSpec(n, partial(StubActor, n, log=log)) for n in "abc"])
    assert not sup.draining
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        assert await sup.drain(5) is True
        assert sup.draining
    assert [entry for entry in log if entry.endswith(":stop")] == ["c:stop", "b:stop", "a:stop"]
    assert await sup.drain(5) is True  # after the fact: the outcome again


@pytest.mark.trio
async def test_drain_timeout_cancels_a_stuck_actor(autojump_clock: object) -> None:
    log: list[str] = []
    sup = Supervisor(
        [ChildSpec("ok", lambda: StubActor("ok", log=log)),
         ChildSpec("stuck", lambda: StubActor("stuck", log=log, stuck=True))]
    )  # fmt: skip
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        start = anyio.current_time()
        assert await sup.drain(3.0) is False
        assert anyio.current_time() - start == pytest.approx(3.0)
    assert "ok:returned" in log
    assert log[-1] == "stuck:cancelled"


@pytest.mark.anyio
async def test_force_cancels_everything_and_drain_reports_it() -> None:
    log: list[str] = []
    sup = Supervisor([ChildSpec("stuck", lambda: StubActor("stuck", log=log, stuck=True))])
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        results: list[bool] = []

        async def drain() -> None:
            results.append(await sup.drain(1000))

        tg.start_soon(drain)
        await anyio.wait_all_tasks_blocked()
        assert results == []
        sup.force()
    assert results == [False]
    assert log[-1] == "stuck:cancelled"


@pytest.mark.trio
async def test_second_drain_cancels_at_once(autojump_clock: object) -> None:
    sup = Supervisor([ChildSpec("stuck", lambda: StubActor("stuck", stuck=True))])
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        results: list[bool] = []

        async def drain() -> None:
            results.append(await sup.drain(1000))

        tg.start_soon(drain)
        await anyio.wait_all_tasks_blocked()
        start = anyio.current_time()
        assert await sup.drain(1000) is False
        assert anyio.current_time() == start
    assert results == [False]


@pytest.mark.trio
async def test_drain_ends_a_restart_backoff_and_restarts_nothing(autojump_clock: object) -> None:
    crashed = anyio.Event()
    a = CrashingFactory("a", crashes=1)
    policy = RestartPolicy(backoff_initial=50, backoff_max=50, jitter=0)
    sup = Supervisor(
        [ChildSpec("a", a, policy=policy)], on_restart=lambda name, error: crashed.set()
    )
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        await crashed.wait()
        start = anyio.current_time()
        assert await sup.drain(100) is True
        assert anyio.current_time() == start  # did not wait the 50 s out
    assert len(a.instances) == 1


class CrashOnStop(Actor):
    name = "a"

    def __init__(self) -> None:
        self.stop = anyio.Event()

    def request_stop(self) -> None:
        self.stop.set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        await self.stop.wait()
        raise InjectedFault("crash while draining")


@pytest.mark.anyio
async def test_crash_during_drain_is_not_restarted_and_drain_is_not_clean() -> None:
    made: list[CrashOnStop] = []

    def factory() -> CrashOnStop:
        made.append(CrashOnStop())
        return made[-1]

    sup = Supervisor([ChildSpec("a", factory)])
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        assert await sup.drain(5) is False
    assert len(made) == 1
    assert sup.restarts == {"a": 0}


class StopsBeforeStarting(Actor):
    """A source asked to stop while still starting: returns without calling started()."""

    name = "slow-start"

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.stop = anyio.Event()

    def request_stop(self) -> None:
        self.log.append("slow-start:stop")
        self.stop.set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        self.log.append("slow-start:run")
        await self.stop.wait()


@pytest.mark.anyio
async def test_drain_while_starting_stops_the_starting_child_and_starts_no_more() -> None:
    log: list[str] = []
    sup = Supervisor(
        [ChildSpec("a", lambda: StubActor("a", log=log)),
         ChildSpec("slow-start", lambda: StopsBeforeStarting(log)),
         ChildSpec("c", lambda: StubActor("c", log=log))]
    )  # fmt: skip
    reported = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def start() -> None:
            await tg.start(sup.run)
            reported.set()

        tg.start_soon(start)
        await anyio.wait_all_tasks_blocked()
        assert log == ["a:run", "a:started", "slow-start:run"]
        assert await sup.drain(5) is True
        assert reported.is_set()  # run() still reports started, then returns
    assert log[3:] == ["slow-start:stop", "a:stop", "a:returned"]  # c never ran


@pytest.mark.anyio
async def test_drain_before_run_makes_run_start_nothing() -> None:
    log: list[str] = []
    sup = Supervisor([ChildSpec("a", lambda: StubActor("a", log=log))])
    assert await sup.drain(5) is True
    with anyio.fail_after(5):
        await sup.run()
    assert log == []
