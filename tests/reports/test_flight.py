"""SingleFlight: concurrent calls for one key share one run; nothing outlives the run."""

from __future__ import annotations

import anyio
import pytest

from sluice.reports import SingleFlight

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Work:
    """Work that counts its runs and ends when released (with a value or an error)."""

    def __init__(self) -> None:
        self.runs = 0
        self.release = anyio.Event()
        self.error: Exception | None = None

    async def __call__(self) -> str:
        self.runs += 1
        run = self.runs
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return f"run {run}"


async def test_concurrent_calls_for_one_key_share_one_run() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    work = Work()
    got: list[str] = []

    async def call() -> None:
        got.append(await flights.run("k", work))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        assert work.runs == 1 and len(flights) == 1
        work.release.set()
    assert got == ["run 1"] * 5
    assert len(flights) == 0


async def test_other_keys_run_their_own_work() -> None:
    flights: SingleFlight[tuple[str, int], str] = SingleFlight()
    works = {("user", 1): Work(), ("video", 1): Work(), ("user", 2): Work()}
    got: dict[tuple[str, int], list[str]] = {key: [] for key in works}

    async def call(key: tuple[str, int]) -> None:
        got[key].append(await flights.run(key, works[key]))

    async with anyio.create_task_group() as tg:
        for key in works:
            tg.start_soon(call, key)
            tg.start_soon(call, key)
        await anyio.wait_all_tasks_blocked()
        assert [w.runs for w in works.values()] == [1, 1, 1] and len(flights) == 3
        for w in works.values():
            w.release.set()
    assert got == {key: ["run 1", "run 1"] for key in works}


async def test_a_call_after_the_run_ended_runs_the_work_again() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    work = Work()
    work.release.set()
    assert await flights.run("k", work) == "run 1"
    assert await flights.run("k", work) == "run 2"  # nothing is kept
    assert work.runs == 2


async def test_every_waiting_caller_gets_the_error_of_the_run() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    work = Work()
    work.error = LookupError("store gone")
    errors: list[BaseException] = []

    async def call() -> None:
        try:
            await flights.run("k", work)
        except LookupError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        work.release.set()
    assert [str(e) for e in errors] == ["store gone"] * 3
    assert work.runs == 1 and len(flights) == 0
    work.error = None  # and the next call runs afresh
    assert await flights.run("k", work) == "run 2"


async def test_when_the_running_caller_is_cancelled_a_waiting_one_runs_it_again() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    work = Work()
    got: list[str] = []

    async def call() -> None:
        got.append(await flights.run("k", work))

    leader_scope = anyio.CancelScope()

    async def leader() -> None:
        with leader_scope:
            got.append(await flights.run("k", work))

    async with anyio.create_task_group() as tg:
        tg.start_soon(leader)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(call)
        tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        assert work.runs == 1
        leader_scope.cancel()
        await anyio.wait_all_tasks_blocked()
        assert work.runs == 2  # one of the waiting callers took over; the other waits on it
        assert len(flights) == 1
        work.release.set()
    assert got == ["run 2", "run 2"]  # the cancelled leader returned nothing
    assert len(flights) == 0


async def test_a_waiting_caller_cancelled_leaves_the_run_alone() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    work = Work()
    got: list[str] = []
    follower_scope = anyio.CancelScope()

    async def leader() -> None:
        got.append(await flights.run("k", work))

    async def follower() -> None:
        with follower_scope:
            got.append(await flights.run("k", work))

    async with anyio.create_task_group() as tg:
        tg.start_soon(leader)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(follower)
        await anyio.wait_all_tasks_blocked()
        follower_scope.cancel()
        await anyio.wait_all_tasks_blocked()
        assert len(flights) == 1 and work.runs == 1
        work.release.set()
    assert got == ["run 1"]
    assert len(flights) == 0
