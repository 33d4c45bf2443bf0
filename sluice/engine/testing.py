"""Test kit: run one actor alone, plus fault helpers for supervisor tests.

Typical use, against in-memory channels::

    send, receive = open_channel[Item](4)
    async with run_actor(Relay(receive, out_send)) as handle:
        await send.send(item)
        await send.aclose()       # end of input: the relay returns by itself
    # here the relay has returned; a crash would have been re-raised

Time-dependent tests run under trio with pytest-trio's `autojump_clock`, so the
timeouts below cost no real time.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Generic, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel

from ._actor import Actor
from ._clock import AnyioClock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

__all__ = [
    "ActorDidNotReturn",
    "ActorHandle",
    "CrashingFactory",
    "InjectedFault",
    "RecordingClock",
    "StubActor",
    "run_actor",
]

A = TypeVar("A", bound=Actor)


class ActorDidNotReturn(AssertionError):
    """The actor was still running when `run_actor` gave up waiting for it."""


class InjectedFault(RuntimeError):
    """The error a fault helper raises on purpose."""


class ActorHandle(Generic[A]):
    """What `run_actor` yields: the running actor and ways to end it."""

    def __init__(self, actor: A) -> None:
        self.actor = actor
        self._returned = anyio.Event()

    @property
    def returned(self) -> bool:
        """True once `actor.run()` has returned or raised."""
        return self._returned.is_set()

    def stop(self) -> None:
        """Call the actor's `request_stop()` (drain); does not wait."""
        self.actor.request_stop()

    async def wait(self) -> None:
        """Block until `actor.run()` has returned or raised."""
        await self._returned.wait()

    async def _run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            await self.actor.run(task_status=task_status)
        finally:
            self._returned.set()


@asynccontextmanager
async def run_actor(actor: A, *, timeout: float = 5.0) -> AsyncIterator[ActorHandle[A]]:
    """Run `actor` alone in a task group for the duration of the block.

    On enter, blocks until the actor has called `task_status.started()` (an error it
    raises before that propagates from the `async with`). On exit, blocks until the actor
    returns: end its input first (close its inbox, or `handle.stop()`). If it has not
    returned within `timeout` seconds (`anyio.fail_after`, so on the run's clock), it is
    cancelled and `ActorDidNotReturn` is raised. If the actor crashes, the block is
    cancelled and the actor's exception is re-raised as is, not in an ExceptionGroup
    (a group appears only when the block and the actor both failed).
    """
    handle = ActorHandle(actor)
    error: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(handle._run, name=f"run_actor/{actor.name}")
            yield handle
            try:
                with anyio.fail_after(timeout):
                    await handle.wait()
            except TimeoutError:
                tg.cancel_scope.cancel()
                raise ActorDidNotReturn(
                    f"actor {actor.name!r} did not return within {timeout} s after the "
                    "run_actor block ended (was its inbox closed, or handle.stop() called?)"
                ) from None
    except BaseExceptionGroup as group:
        if len(group.exceptions) != 1:
            raise
        error = group.exceptions[0]
    if error is not None:
        # Outside the except block, so the error is not chained to the group.
        raise error


class StubActor(Actor):
    """A scriptable actor for supervisor tests.

    Runs until `request_stop()`, unless told to crash (before or after `started()`),
    to return at once, or to be stuck (ignore `request_stop()`; only cancellation ends
    it). `on_started` is called right after `started()`. Appends ``"<name>:<event>"``
    to `log` for each of: run, started, stop, crashed, cancelled, returned; share one
    list between actors to check ordering.
    """

    def __init__(
        self,
        name: str = "stub",
        *,
        log: list[str] | None = None,
        crash: Exception | None = None,
        crash_before_started: bool = False,
        return_at_once: bool = False,
        stuck: bool = False,
        on_started: Callable[[], object] | None = None,
    ) -> None:
        self.name = name
        self.log: list[str] = log if log is not None else []
        self.crash = crash
        self.crash_before_started = crash_before_started
        self.return_at_once = return_at_once
        self.stuck = stuck
        self._on_started = on_started
        self.stop_requested = False
        self._stop = anyio.Event()

    def _record(self, event: str) -> None:
        self.log.append(f"{self.name}:{event}")

    def request_stop(self) -> None:
        self.stop_requested = True
        self._record("stop")
        self._stop.set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        self._record("run")
        try:
            await anyio.lowlevel.checkpoint()
            if self.crash is not None and self.crash_before_started:
                self._record("crashed")
                raise self.crash
            task_status.started()
            self._record("started")
            if self._on_started is not None:
                self._on_started()
            if self.crash is not None:
                await anyio.lowlevel.checkpoint()
                self._record("crashed")
                raise self.crash
            if self.stuck:
                await anyio.sleep_forever()
            elif not self.return_at_once:
                await self._stop.wait()
        except anyio.get_cancelled_exc_class():
            self._record("cancelled")
            raise
        self._record("returned")


class CrashingFactory:
    """A `ChildSpec.factory` whose first `crashes` actors crash, the rest run until stopped.

    Each call makes a fresh `StubActor` named `name` (sharing `log`); crashing ones raise
    `InjectedFault`, before `started()` if `before_started`. `instances` holds every actor
    made and `created_at` the clock time (`anyio.current_time()`) of each call, so a test
    can check the backoff between restarts. `survivor_started` is set once an actor that
    does not crash has started. Make it inside the test's event loop.
    """

    def __init__(
        self,
        name: str,
        crashes: int,
        *,
        before_started: bool = False,
        log: list[str] | None = None,
        error: Callable[[int], Exception] | None = None,
    ) -> None:
        self.name = name
        self.crashes = crashes
        self.before_started = before_started
        self.log: list[str] = log if log is not None else []
        self._error = error or (lambda n: InjectedFault(f"{name}: injected crash {n}"))
        self.instances: list[StubActor] = []
        self.created_at: list[float] = []
        self.survivor_started = anyio.Event()

    def __call__(self) -> StubActor:
        number = len(self.instances) + 1
        crash = self._error(number) if number <= self.crashes else None
        actor = StubActor(
            self.name,
            log=self.log,
            crash=crash,
            crash_before_started=self.before_started,
            on_started=self.survivor_started.set if crash is None else None,
        )
        self.instances.append(actor)
        self.created_at.append(anyio.current_time())
        return actor


class RecordingClock(AnyioClock):
    """The anyio clock, recording every `sleep()` asked of it in `sleeps`."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await super().sleep(seconds)
