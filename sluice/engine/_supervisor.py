"""One-for-one supervision: start order, restart with backoff and budget, drain."""

from __future__ import annotations

import contextvars
import enum
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from ._actor import Actor
from ._clock import AnyioClock, Clock
from ._deadline import DrainDeadline
from ._fatal import FatalError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "ChildSpec",
    "Restart",
    "RestartBudgetExceeded",
    "RestartPolicy",
    "Supervisor",
    "current_actor",
]

logger = logging.getLogger("sluice.engine")

current_actor: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "sluice_current_actor", default=None
)
"""The name of the child whose task (or a task it started) is running; None elsewhere.

Set by the supervisor for each child, so logs can name the actor without passing it."""


class Restart(enum.Enum):
    """When a child that ended is started again (never once drain has begun)."""

    PERMANENT = "permanent"
    """Restart on a crash, and on a normal return that comes before drain."""
    TRANSIENT = "transient"
    """Restart on a crash only; a normal return means the child is done."""
    TEMPORARY = "temporary"
    """Never restart; a crash is logged and the child stays down."""


@dataclass(frozen=True)
class RestartPolicy:
    """Restart budget and exponential backoff for one child.

    More than `max_restarts` restarts within `window` seconds escalates: the supervisor
    raises `RestartBudgetExceeded` instead of restarting.
    """

    max_restarts: int = 5
    window: float = 30.0
    backoff_initial: float = 0.1
    backoff_max: float = 10.0
    backoff_factor: float = 2.0
    jitter: float = 0.1
    """Random spread as a fraction of the delay: 0.1 means +-10%."""

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ValueError("max_restarts must be >= 0")
        if self.window <= 0:
            raise ValueError("window must be > 0")
        if not 0 <= self.backoff_initial <= self.backoff_max:
            raise ValueError("need 0 <= backoff_initial <= backoff_max")
        if self.backoff_factor < 1:
            raise ValueError("backoff_factor must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before restart number `attempt` (1 for the first in a row).

        `backoff_initial * backoff_factor ** (attempt - 1)`, capped at `backoff_max`, then
        spread by +-`jitter` using `rand()` (a float in [0, 1)). Attempts below 1 count as 1.
        """
        exponent = max(attempt, 1) - 1
        try:
            base = min(self.backoff_max, self.backoff_initial * self.backoff_factor**exponent)
        except OverflowError:
            base = self.backoff_max
        return max(0.0, base * (1.0 + self.jitter * (2.0 * rand() - 1.0)))


@dataclass(frozen=True)
class ChildSpec:
    """A supervised child: `factory()` makes a fresh actor for each start and restart.

    `wait_on_drain`: when draining, wait for this child to return before asking the
    children started before it to stop (e.g. HTTP ingress finishes its in-flight
    requests, and so its publishes, before the consumers stop fetching). Children
    without it are asked to stop without waiting, as soon as their turn comes.
    """

    name: str
    factory: Callable[[], Actor]
    restart: Restart = Restart.PERMANENT
    policy: RestartPolicy = RestartPolicy()
    wait_on_drain: bool = False


class RestartBudgetExceeded(Exception):
    """A child crashed more often than its `RestartPolicy` allows.

    `child` is the child's name and `error` its last error, also chained as `__cause__`.
    """

    def __init__(self, child: str, error: BaseException) -> None:
        super().__init__(child, error)
        self.child = child
        self.error = error

    def __str__(self) -> str:
        return f"child {self.child!r} exceeded its restart budget; last error: {self.error!r}"


class _ReturnedEarly(RuntimeError):
    """Stands for the error when a PERMANENT child returns before drain."""


class _ChildStatus(anyio.abc.TaskStatus[None]):
    """The task status handed to each actor instance.

    The actor runs inside the child's wrapper task, so its exceptions reach the restart
    logic unwrapped; the first `started()` of any instance releases the start loop.
    """

    def __init__(self, on_started: Callable[[], None]) -> None:
        self._on_started = on_started
        self.called = False

    def started(self, value: object = None) -> None:
        if self.called:
            raise RuntimeError("called 'started' twice on the same task status")
        self.called = True
        self._on_started()


class Supervisor:
    """Runs child actors one_for_one in a task group, and drains them on request.

    Not reusable: `run()` may be called once.
    """

    def __init__(
        self,
        children: Sequence[ChildSpec],
        *,
        clock: Clock | None = None,
        on_restart: Callable[[str, BaseException], None] | None = None,
        name: str = "supervisor",
        deadline: DrainDeadline | None = None,
    ) -> None:
        names = [spec.name for spec in children]
        if len(set(names)) != len(names):
            raise ValueError(f"child names must be unique: {names}")
        self._specs = tuple(children)
        self._clock: Clock = clock if clock is not None else AnyioClock()
        self._on_restart = on_restart
        self.name = name
        self.deadline = deadline if deadline is not None else DrainDeadline()
        """The drain's deadline: begun by `drain()`, ended by `force()`; children that
        take part in the drain bound their steps by it."""
        self._draining = False
        self._forced = False
        self._unclean = False  # a child crashed after drain began
        self._restarts = dict.fromkeys(names, 0)
        self._alive = dict.fromkeys(names, False)
        self._started: set[str] = set()  # children whose wrapper task has begun
        self._actors: dict[str, Actor] = {}  # current instance, from factory() to return
        self._backoffs: dict[str, anyio.CancelScope] = {}
        self._scope: anyio.CancelScope | None = None
        # Created in run(): anyio primitives belong to a running event loop.
        self._finished: anyio.Event | None = None
        self._ended: dict[str, anyio.Event] = {}  # per child: done for good

    @property
    def draining(self) -> bool:
        """True once `drain()` or `force()` has been called."""
        return self._draining

    @property
    def restarts(self) -> Mapping[str, int]:
        """Restarts per child so far (a read-only live view)."""
        return MappingProxyType(self._restarts)

    def children_alive(self) -> dict[str, bool]:
        """Per child: started and not returned (False while waiting out a backoff)."""
        return dict(self._alive)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Start the children in order, then `task_status.started()`; block until all return.

        Each child is started with `await tg.start(...)`, so the next one starts only
        once the previous called its own `started()`. A child that crashes while
        starting is restarted under its budget before the next one starts. Stops starting
        children if drain begins meanwhile (and still reports started).

        Returns normally after a drain, a `force()`, or when every child has ended.
        Raises `RestartBudgetExceeded` (unwrapped) when a child spends its budget, and a
        child's `FatalError` (unwrapped, at once, no restart), after the task group has
        cancelled its siblings; if some other error escaped at the same
        time (rare: only non-Exception errors such as KeyboardInterrupt escape a child),
        the task group's ExceptionGroup is raised as is. Raises RuntimeError if called
        twice.
        """
        if self._finished is not None:
            raise RuntimeError(f"{self.name}: run() can only be called once")
        self._finished = anyio.Event()
        self._ended = {spec.name: anyio.Event() for spec in self._specs}
        reported = False
        escalated: RestartBudgetExceeded | FatalError | None = None
        try:
            try:
                async with anyio.create_task_group() as tg:
                    self._scope = tg.cancel_scope
                    if self._forced:
                        tg.cancel_scope.cancel()
                    for spec in self._specs:
                        if self._draining:
                            break
                        await tg.start(self._supervise, spec, name=f"{self.name}/{spec.name}")
                    # Children never started (drain began meanwhile) are done already.
                    for spec in self._specs:
                        if spec.name not in self._started:
                            self._ended[spec.name].set()
                    task_status.started()
                    reported = True
            except BaseExceptionGroup as group:
                escalated = _sole_escalation(group)
                if escalated is None:
                    raise
            if escalated is not None:
                # Raised outside the except block so it is not chained to the group.
                raise escalated
            if not reported:
                task_status.started()
        finally:
            self._scope = None
            for ended in self._ended.values():
                ended.set()
            self._finished.set()

    async def drain(self, timeout: float) -> bool:
        """Stop gracefully: returns True if every child returned within `timeout` seconds.

        Calls `request_stop()` on every current child in reverse start order (sources
        stop first; downstream actors end through end-of-stream); for a child whose spec
        has `wait_on_drain`, waits for it to return before going on to the children
        started before it. Ends any restart backoff and restarts nothing from then on.
        Blocks until all children returned;
        past `timeout` (on the supervisor's clock) it cancels them and returns False.
        Also False after `force()` or when a child crashed during the drain (the crash is
        logged, not raised). A second call cancels at once, like `force()`, and returns
        False. Called before `run()`, it only makes `run()` start nothing.
        """
        finished = self._finished
        if finished is not None and finished.is_set():
            return not (self._forced or self._unclean)
        if self._draining:
            self.force()
            if finished is not None:
                await finished.wait()
            return False
        self._draining = True
        self.deadline.begin(timeout)
        if finished is None:
            return True
        logger.info("%s: draining (timeout %.1f s)", self.name, timeout)
        # No child restarts from now on: one waiting out a backoff stays down.
        for scope in self._backoffs.values():
            scope.cancel()

        timed_out = False

        async def deadline() -> None:
            nonlocal timed_out
            await self._clock.sleep(timeout)
            timed_out = True
            logger.warning("%s: drain timed out after %.1f s, cancelling", self.name, timeout)
            self.force()

        async def stop_in_reverse_order() -> None:
            for spec in reversed(self._specs):
                actor = self._actors.get(spec.name)
                if actor is not None:
                    try:
                        actor.request_stop()
                    except Exception:
                        logger.exception("%s: %s.request_stop() failed", self.name, spec.name)
                # A child not started yet never will be (or ends at once): no wait.
                if spec.wait_on_drain and spec.name in self._started:
                    await self._ended[spec.name].wait()
                    logger.info("%s: %s drained", self.name, spec.name)

        async with anyio.create_task_group() as tg:
            tg.start_soon(deadline)
            await stop_in_reverse_order()
            await finished.wait()
            tg.cancel_scope.cancel()
        clean = not (timed_out or self._forced or self._unclean)
        logger.info("%s: drained (%s)", self.name, "clean" if clean else "not clean")
        return clean

    def force(self) -> None:
        """Cancel every child now (the second signal). Restarts nothing afterwards."""
        self._draining = True
        self._forced = True
        self.deadline.force()
        if self._scope is not None:
            self._scope.cancel()

    async def _supervise(self, spec: ChildSpec, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """The wrapper task of one child: run instances, restarting them per the spec."""
        name = spec.name
        self._started.add(name)
        current_actor.set(name)  # this task's context: the child's logs name it
        try:
            await self._supervise_instances(spec, task_status)
        finally:
            self._ended[name].set()

    async def _supervise_instances(
        self, spec: ChildSpec, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        name = spec.name
        recent: deque[float] = deque()  # restart times within the policy window
        reported = False

        def on_started() -> None:
            nonlocal reported
            self._alive[name] = True
            if not reported:
                reported = True
                task_status.started()

        while not self._draining:
            status = _ChildStatus(on_started)
            error: Exception | None = None
            try:
                actor = spec.factory()
                self._actors[name] = actor
                await actor.run(task_status=status)
            except FatalError as exc:
                # No restart can help: escalate now. Logged in full only for --debug; the
                # caller says it in one line.
                logger.debug("%s: %s failed fatally", self.name, name, exc_info=exc)
                raise
            except Exception as exc:  # cancellation is a BaseException and propagates
                error = exc
            finally:
                self._actors.pop(name, None)
                self._alive[name] = False

            if error is None:
                if self._draining or spec.restart is not Restart.PERMANENT:
                    break
                error = _ReturnedEarly(f"permanent child {name!r} returned before drain")
            elif self._draining:
                self._unclean = True
                logger.error("%s: %s crashed during drain", self.name, name, exc_info=error)
                break
            elif spec.restart is Restart.TEMPORARY:
                logger.error("%s: temporary %s crashed", self.name, name, exc_info=error)
                break

            now = self._clock.current_time()
            while recent and recent[0] <= now - spec.policy.window:
                recent.popleft()
            if len(recent) >= spec.policy.max_restarts:
                logger.error(
                    "%s: %s exceeded its restart budget (%d in %.1f s)",
                    self.name,
                    name,
                    spec.policy.max_restarts,
                    spec.policy.window,
                    exc_info=error,
                )
                raise RestartBudgetExceeded(name, error) from error
            recent.append(now)
            self._restarts[name] += 1
            delay = spec.policy.delay(len(recent))
            logger.warning(
                "%s: %s failed, restart %d in %.3f s",
                self.name,
                name,
                self._restarts[name],
                delay,
                exc_info=error,
            )
            if self._on_restart is not None:
                try:
                    self._on_restart(name, error)
                except Exception:
                    logger.exception("%s: on_restart hook failed", self.name)
            # drain() cancels this scope: a child waiting out its backoff stays down.
            with anyio.CancelScope() as backoff:
                self._backoffs[name] = backoff
                try:
                    await self._clock.sleep(delay)
                finally:
                    del self._backoffs[name]

        if not reported:
            # Ended for good without starting (done, or drained): let run() go on.
            reported = True
            task_status.started()


def _sole_escalation(
    group: BaseExceptionGroup[BaseException],
) -> RestartBudgetExceeded | FatalError | None:
    """The budget or fatal error if it is all the task group raised (at any nesting)."""
    while len(group.exceptions) == 1:
        (only,) = group.exceptions
        if isinstance(only, RestartBudgetExceeded | FatalError):
            return only
        if not isinstance(only, BaseExceptionGroup):
            return None
        group = only
    return None
