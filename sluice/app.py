"""Wiring: builds the supervisor tree of one sluice process from its settings."""

from __future__ import annotations

import contextlib
import logging
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from sluice.actors.consumer import Consumer
from sluice.actors.dedup import DedupGuard, RecentIds
from sluice.actors.ingress import Ingress
from sluice.actors.metrics import MetricsReporter
from sluice.actors.work import Work
from sluice.actors.writer import BatchWriter
from sluice.config import Settings
from sluice.edges.bus import JetStreamBus
from sluice.edges.store import PgEventStore
from sluice.engine import ChildSpec, RestartPolicy, Supervisor, open_channel
from sluice.http.app import HttpDeps, create_app
from sluice.http.health import Health
from sluice.metrics import Metrics
from sluice.ports import LogUnavailable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable


log = logging.getLogger("sluice.app")


@dataclass
class Engine:
    """A running engine, as seen by its caller (the CLI, or a test)."""

    settings: Settings
    metrics: Metrics
    health: Health
    supervisor: Supervisor
    ingress: Ingress | None = None
    store: PgEventStore | None = None
    bus: JetStreamBus | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def http_url(self) -> str:
        assert self.ingress is not None and self.ingress.bound is not None
        host, port = self.ingress.bound
        return f"http://{host}:{port}"

    async def drain(self) -> bool:
        """Readiness off, then the graceful stop; False if the deadline forced it."""
        self.health.draining = True
        return await self.supervisor.drain(self.settings.drain_timeout)


@contextlib.asynccontextmanager
async def open_engine(settings: Settings) -> AsyncIterator[Engine]:
    """Connect to NATS and PostgreSQL, migrate, and start every actor.

    The engine runs while the block runs; leaving the block drains it.
    """
    metrics = Metrics()
    health = Health()
    assert settings.nats_url and settings.database_url, "URLs are resolved before this"
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(
            PgEventStore.open(settings.database_url, max_size=settings.writers + 2, migrate=True)
        )
        bus = await stack.enter_async_context(JetStreamBus.connect(settings))
        health.checks["nats"] = _nats_check(bus)
        health.checks["postgres"] = store.ping
        health.checks["migrations"] = _migrations_check(store)

        to_dedup_send, to_dedup = open_channel[Work](settings.channel_capacity)
        to_writer_send, to_writer = open_channel[Work](settings.channel_capacity)
        committed_send, committed = open_channel[list[str]](settings.channel_capacity)
        ends: list[Any] = [
            to_dedup_send,
            to_dedup,
            to_writer_send,
            to_writer,
            committed_send,
            committed,
        ]
        for end in ends:
            stack.push_async_callback(end.aclose)

        def clone(end: Any) -> Any:
            copy = end.clone()
            stack.push_async_callback(copy.aclose)
            return copy

        recent = RecentIds(settings.dedup_capacity)
        subscriptions: dict[str, Any] = {}

        async def subscribe(source: str) -> Any:
            subscriptions[source] = await bus.subscribe(source)
            return subscriptions[source]

        children: list[ChildSpec] = []
        writer_inboxes = [clone(to_writer) for _ in range(settings.writers)]
        writer_feedback = [clone(committed_send) for _ in range(settings.writers)]
        for i in range(settings.writers):
            children.append(
                ChildSpec(
                    f"writer[{i}]",
                    _bind(
                        BatchWriter,
                        writer_inboxes[i],
                        store,
                        writer_feedback[i],
                        flush_rows=settings.flush_rows,
                        flush_interval=settings.flush_interval,
                        metrics=metrics,
                        name=f"writer[{i}]",
                    ),
                    policy=RestartPolicy(max_restarts=10, window=60.0, backoff_max=10.0),
                )
            )
        children.append(
            ChildSpec(
                "dedup",
                _bind(
                    DedupGuard,
                    to_dedup,
                    to_writer_send,
                    committed,
                    capacity=settings.dedup_capacity,
                    metrics=metrics,
                    recent=recent,
                ),
            )
        )
        for source in settings.sources:
            children.append(
                ChildSpec(
                    f"consumer[{source}]",
                    _bind(
                        Consumer,
                        source,
                        subscribe,
                        clone(to_dedup_send),
                        batch=settings.fetch_batch,
                        fetch_timeout=settings.fetch_timeout,
                    ),
                )
            )
        # Only the clones feed the channels: the originals would keep them open forever.
        await to_dedup_send.aclose()
        await committed_send.aclose()

        app = create_app(HttpDeps(settings, metrics, health, event_log=bus))
        ingress_box: list[Ingress] = []

        def make_ingress() -> Ingress:
            ingress = Ingress(
                app,
                host=settings.http_host,
                port=settings.http_port,
                graceful_timeout=settings.drain_timeout,
            )
            ingress_box[:] = [ingress]
            return ingress

        children.append(ChildSpec("ingress", make_ingress))
        children.append(
            ChildSpec(
                "metrics",
                lambda: MetricsReporter(
                    metrics,
                    channels={"dedup": to_dedup, "writer": to_writer, "committed": committed},
                    consumers={s: _pending_probe(subscriptions, s) for s in settings.sources},
                    interval=settings.metrics_interval,
                ),
            )
        )
        supervisor = Supervisor(
            children, on_restart=lambda name, exc: metrics.actor_restarts.labels(name).inc()
        )
        health.alive = supervisor.children_alive
        engine = Engine(settings, metrics, health, supervisor, store=store, bus=bus)
        async with anyio.create_task_group() as tg:
            await tg.start(supervisor.run)
            engine.ingress = ingress_box[0]
            try:
                yield engine
            finally:
                with anyio.CancelScope(shield=True):
                    if not supervisor.draining:
                        await engine.drain()


def _bind(factory: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[], Any]:
    return lambda: factory(*args, **kwargs)


def _nats_check(bus: JetStreamBus) -> Callable[[], Any]:
    async def check() -> None:
        if not bus.is_connected():
            raise LogUnavailable("not connected")

    return check


def _migrations_check(store: PgEventStore) -> Callable[[], Any]:
    async def check() -> None:
        pending = await store.migrations_pending()
        if pending:
            raise RuntimeError(f"pending: {', '.join(pending)}")

    return check


def _pending_probe(subscriptions: dict[str, Any], source: str) -> Callable[[], Any]:
    async def probe() -> tuple[int, int]:
        sub = subscriptions.get(source)
        if sub is None:
            raise LookupError("not subscribed yet")
        result: tuple[int, int] = await sub.pending()
        return result

    return probe


async def run_until_signalled(settings: Settings, *, on_ready: Callable[[Engine], None]) -> int:
    """Run until SIGTERM/SIGINT, then drain; a second signal forces. Returns an exit code."""
    async with open_engine(settings) as engine:
        on_ready(engine)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("received %s: draining", signal.Signals(signum).name)
                break
            async with anyio.create_task_group() as tg:

                async def force_on_second_signal() -> None:
                    async for signum in signals:
                        log.warning("received %s again: forcing exit", signal.Signals(signum).name)
                        engine.supervisor.force()
                        return

                tg.start_soon(force_on_second_signal)
                clean = await engine.drain()
                tg.cancel_scope.cancel()
        return 0 if clean else 1
