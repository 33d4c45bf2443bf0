import anyio
import anyio.abc
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from sluice.engine import Actor, open_channel
from sluice.engine.testing import (
    ActorDidNotReturn,
    CrashingFactory,
    InjectedFault,
    StubActor,
    run_actor,
)


class Doubler(Actor):
    name = "doubler"

    def __init__(self, inbox: MemoryObjectReceiveStream[int], out: MemoryObjectSendStream[int]):
        self.inbox = inbox
        self.out = out

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        async for item in self.inbox:
            await self.out.send(item * 2)
        await self.out.aclose()
        await self.inbox.aclose()


@pytest.mark.anyio
async def test_run_actor_against_in_memory_channels() -> None:
    send, inbox = open_channel[int](0)
    out, receive = open_channel[int](8)
    with send, inbox, out, receive:
        async with run_actor(Doubler(inbox, out)) as handle:
            for n in range(3):
                await send.send(n)
            await send.aclose()  # end of input: the actor returns by itself
        assert handle.returned
        assert [item async for item in receive] == [0, 2, 4]


@pytest.mark.anyio
async def test_run_actor_is_started_on_enter_and_stop_drains() -> None:
    log: list[str] = []
    async with run_actor(StubActor("a", log=log)) as handle:
        assert log == ["a:run", "a:started"]
        assert not handle.returned
        handle.stop()
        await handle.wait()
        assert handle.returned
    assert log == ["a:run", "a:started", "a:stop", "a:returned"]


@pytest.mark.anyio
async def test_run_actor_reraises_a_crash_unwrapped_and_cancels_the_block() -> None:
    reached_end = False
    with pytest.raises(InjectedFault, match="boom"):
        async with run_actor(StubActor(crash=InjectedFault("boom"))):
            await anyio.sleep_forever()
            reached_end = True
    assert not reached_end


@pytest.mark.anyio
async def test_run_actor_crash_before_started_raises_on_enter() -> None:
    with pytest.raises(InjectedFault):
        async with run_actor(StubActor(crash=InjectedFault(), crash_before_started=True)):
            pytest.fail("the block must not run")


@pytest.mark.anyio
async def test_run_actor_lets_the_blocks_own_error_through_unwrapped() -> None:
    log: list[str] = []
    with pytest.raises(KeyError):
        async with run_actor(StubActor("a", log=log)):
            raise KeyError("from the test")
    assert log[-1] == "a:cancelled"


@pytest.mark.anyio
async def test_run_actor_reports_both_errors_as_a_group() -> None:
    with pytest.RaisesGroup(InjectedFault, KeyError):
        async with run_actor(StubActor(crash=InjectedFault())):
            try:
                await anyio.sleep_forever()
            finally:
                raise KeyError("cleanup failed too")


@pytest.mark.trio
async def test_run_actor_fails_clearly_when_the_actor_does_not_return(
    autojump_clock: object,
) -> None:
    log: list[str] = []
    start = anyio.current_time()
    with pytest.raises(ActorDidNotReturn, match="'stuck' did not return within 2"):
        async with run_actor(StubActor("stuck", log=log, stuck=True), timeout=2):
            pass
    assert anyio.current_time() - start == pytest.approx(2)
    assert log[-1] == "stuck:cancelled"


@pytest.mark.anyio
async def test_crashing_factory_makes_fresh_actors() -> None:
    factory = CrashingFactory("a", crashes=2)
    actors = [factory() for _ in range(3)]
    assert len({id(actor) for actor in actors}) == 3
    assert [actor.crash is not None for actor in actors] == [True, True, False]
    assert isinstance(actors[0].crash, InjectedFault)
    async with run_actor(actors[2]) as handle:
        assert factory.survivor_started.is_set()
        handle.stop()
