"""A child's FatalError: no restart, the whole tree stops at once and says why."""

import anyio
import anyio.abc
import pytest

from sluice.engine import Actor, ChildSpec, FatalError, RestartPolicy, Supervisor
from sluice.engine.testing import CrashingFactory, StubActor

PATIENT = RestartPolicy(max_restarts=10, backoff_initial=0, jitter=0)


@pytest.mark.anyio
async def test_fatal_while_starting_escalates_at_once_without_restart() -> None:
    log: list[str] = []
    http = CrashingFactory(
        "http", crashes=100, before_started=True, log=log,
        error=lambda n: FatalError("cannot listen on 127.0.0.1:8000: address already in use"),
    )  # fmt: skip
    sup = Supervisor(
        [ChildSpec("b", lambda: StubActor("b", log=log)), ChildSpec("http", http, policy=PATIENT),
         ChildSpec("c", lambda: StubActor("c", log=log))]
    )  # fmt: skip
    with anyio.fail_after(5), pytest.raises(FatalError, match="address already in use"):
        await sup.run()
    assert len(http.instances) == 1  # never restarted
    assert sup.restarts == {"b": 0, "http": 0, "c": 0}
    assert log == ["b:run", "b:started", "http:run", "http:crashed", "b:cancelled"]


@pytest.mark.anyio
async def test_fatal_in_a_nested_supervisor_escalates_through_its_parent() -> None:
    log: list[str] = []
    db = CrashingFactory("db", crashes=1, log=log, error=lambda n: FatalError("bad setting"))
    inner = Supervisor([ChildSpec("db", db, policy=PATIENT)], name="inner")

    class Nested(Actor):
        name = "inner"

        async def run(
            self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
        ) -> None:
            await inner.run(task_status=task_status)

    outer = Supervisor(
        [ChildSpec("sibling", lambda: StubActor("sibling", log=log)),
         ChildSpec("inner", Nested, policy=PATIENT)]
    )  # fmt: skip
    with anyio.fail_after(5), pytest.raises(FatalError, match="bad setting"):
        await outer.run()
    assert outer.restarts["inner"] == 0 and len(db.instances) == 1
    assert log[-1] == "sibling:cancelled"
