"""Wiring: builds the supervisor tree of one sluice process from its settings and role.

Roles (`sluice run --role`, or SLUICE_ROLE):

- all (default): writers, dedup, consumers, metrics, ingress (webhook, reports, ops).
  Needs NATS and PostgreSQL; ready when nats, postgres and migrations are.
- ingress: metrics, ingress (webhook, ops). Needs NATS only; ready when nats is.
- worker: ops HTTP, writers, dedup, consumers, metrics. Needs NATS and PostgreSQL;
  ready when nats, postgres and migrations are.
- reports: HTTP (reports, ops). Needs PostgreSQL; ready when postgres and migrations are.

"ops" is `/health/live`, `/health/ready` and `/metrics`: every role serves them on
SLUICE_HTTP_PORT, so Prometheus can scrape each process. Ingress does not wait for
PostgreSQL: JetStream holds what it accepts while the database is away.

Drain order is the reverse of the start order, one child at a time where it matters
(`ChildSpec.wait_on_drain`), within one budget, SLUICE_DRAIN_TIMEOUT (`DrainDeadline`):

1. intake (roles all, ingress): readiness off, new webhook requests 503, the ones in
   flight (and so their publishes) finish; at most INTAKE_SHARE of the budget;
2. the consumers, which in role `all` first take what JetStream holds for them right
   then (catch-up), until all but FLUSH_RESERVE of the budget is spent, so every event
   this process accepted is written and acked before it exits;
3. the dedup guard and the writers end by end of stream; the writers' last commit and
   acks run shielded, but never past the deadline;
4. the HTTP server, started first, stops last: `/health/*` and `/metrics` answer until
   the process exits.

A second signal or the deadline cancels everything at once, shielded steps included.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from sluice.actors.backstop import MaxDeliveriesBackstop
from sluice.actors.consumer import Consumer
from sluice.actors.dedup import DedupGuard, RecentIds
from sluice.actors.ingress import Admission, Ingress
from sluice.actors.intake import Intake
from sluice.actors.keeper import Keeper
from sluice.actors.metrics import MetricsReporter
from sluice.actors.subtree import Subtree
from sluice.actors.work import Work
from sluice.actors.writer import BatchWriter
from sluice.auth import Authenticator, load_secret
from sluice.config import Settings
from sluice.config.settings import ROLES
from sluice.edges.bus import JetStreamBus
from sluice.edges.keys import PgKeyStore
from sluice.edges.reports import PgReportStore
from sluice.edges.store import PgEventStore
from sluice.engine import ChildSpec, DrainDeadline, RestartPolicy, Supervisor, open_channel
from sluice.http.app import HttpDeps, create_app
from sluice.http.health import Health
from sluice.inflight import HeldMessages, HoldingSubscription
from sluice.metrics import Metrics
from sluice.ratelimit import RateLimiter

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from quart import Quart

    from sluice.http.webhook import Ingest


log = logging.getLogger("sluice.app")

__all__ = ["ROLES", "Engine", "open_engine", "run_until_signalled"]

INTAKE_SHARE = 0.4  # of the drain budget: in-flight webhook requests at most this long
FLUSH_RESERVE = 0.25  # of the drain budget: kept from the catch-up for the last flush


@dataclass
class Engine:
    """A running engine, as seen by its caller (the CLI, or a test)."""

    settings: Settings
    metrics: Metrics
    health: Health
    supervisor: Supervisor
    role: str = "all"
    ingress: Ingress | None = None
    store: PgEventStore | None = None
    bus: JetStreamBus | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def http_url(self) -> str:
        assert self.ingress is not None and self.ingress.bound is not None
        host, port = self.ingress.bound
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    async def drain(self) -> bool:
        """Readiness off, then the graceful stop; False if the deadline forced it."""
        self.health.draining = True
        return await self.supervisor.drain(self.settings.drain_timeout)


@contextlib.asynccontextmanager
async def open_engine(settings: Settings, *, role: str | None = None) -> AsyncIterator[Engine]:
    """Connect to what `role` needs (migrating the database), and start its actors.

    `role` defaults to `settings.role`. The engine runs while the block runs; leaving
    the block drains it. Raises LogUnavailable / StoreUnavailable when a server cannot be
    reached, and sluice.sql.migrate.MigrationError when a migration fails (rolled back).
    """
    role = role or settings.role
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    takes_events = role in ("all", "ingress")
    writes = role in ("all", "worker")
    needs_store = role in ("all", "worker", "reports")
    needs_nats = role != "reports"
    metrics = Metrics()
    health = Health()
    deadline = DrainDeadline()
    async with contextlib.AsyncExitStack() as stack:
        store: PgEventStore | None = None
        bus: JetStreamBus | None = None
        if needs_store:
            assert settings.database_url, "the URL is resolved before this"
            store = await stack.enter_async_context(
                PgEventStore.open(
                    settings.database_url, max_size=settings.writers + 2, migrate=True
                )
            )
        if needs_nats:
            assert settings.nats_url, "the URL is resolved before this"
            bus = await stack.enter_async_context(JetStreamBus.connect(settings))
            health.checks["nats"] = bus.ping
        if store is not None:
            health.checks["postgres"] = store.ping
            health.checks["migrations"] = _migrations_check(store)
        reports: PgReportStore | None = None
        if store is not None and role in ("all", "reports"):
            assert settings.database_url
            reports = await stack.enter_async_context(PgReportStore.open(settings.database_url))
        keys: PgKeyStore | None = None
        if settings.database_url:  # role ingress too: it connects on the first key sent
            keys = await stack.enter_async_context(PgKeyStore.open(settings.database_url))
        auth = Authenticator(
            keys,
            lambda: load_secret(settings.key_secret, settings.data_dir),
            required=settings.auth == "required",
            ttl=settings.key_cache_ttl,
            retry_after=settings.retry_after_seconds,
        )
        limits = RateLimiter(
            requests=settings.rate_limit_requests,
            events=settings.rate_limit_events,
            burst=settings.rate_limit_burst,
        )

        children: list[ChildSpec] = []
        writing: list[ChildSpec] = []
        channels: dict[str, Any] = {}
        if writes:
            assert store is not None and bus is not None
            writing = await _pipeline(
                stack, settings, metrics, store, bus, channels, deadline, catch_up=takes_events
            )
            subtree = _writing_subtree(writing, metrics, deadline)
            children.append(subtree)

        app = _http_app(
            settings,
            metrics,
            health,
            event_log=bus if takes_events else None,
            store=store,
            reports=reports,
            auth=auth,
            limits=limits,
        )
        ingress_box: list[Ingress] = []
        http_name = "http" if role == "worker" else "ingress"

        def make_ingress() -> Ingress:
            ingress = Ingress(
                app,
                host=settings.http_host,
                port=settings.http_port,
                graceful_timeout=settings.drain_timeout,
                reuse_port=settings.http_reuse_port,
                deadline=deadline,
                admission=Admission(
                    max_requests=settings.max_requests_in_flight,
                    max_body_bytes=settings.max_body_bytes_in_flight,
                    body_limit=settings.max_body_bytes,
                    retry_after=settings.retry_after_seconds,
                    body_timeout=settings.body_timeout,
                ),
                name=http_name,
            )
            ingress_box[:] = [ingress]
            return ingress

        if bus is not None:
            consumers = {s: _consumer_probe(bus, s) for s in settings.sources}
            streams = {
                name: _stream_probe(bus, name)
                for name in (settings.stream, settings.history_stream_name)
            }
            reporter = ChildSpec(
                "metrics",
                _bind(
                    MetricsReporter,
                    metrics,
                    channels=channels,
                    consumers=consumers,
                    streams=streams,
                    interval=settings.metrics_interval,
                    stored_rows=store.stored_rows if store and writes else None,
                    dead_letters=store.count_dead_letters_pending if store and writes else None,
                ),
            )
            children.append(reporter)
        # The HTTP server first, so it stops last: health and metrics answer to the end.
        children.insert(0, ChildSpec(http_name, make_ingress))
        if takes_events:
            ingest: Ingest = app.extensions["sluice.ingest"]
            intake = _bind(Intake, ingest.requests, health, deadline, share=INTAKE_SHARE)
            children.append(ChildSpec("intake", intake, wait_on_drain=True))

        metrics.prime(
            sources=settings.sources,
            actors=[child.name for child in children] + [child.name for child in writing],
        )
        supervisor = Supervisor(
            children,
            on_restart=lambda name, exc: metrics.actor_restarts.labels(name).inc(),
            deadline=deadline,
        )
        subtrees = [child for child in children if child.name == WRITING]
        stopped = anyio.Event()
        health.alive = lambda: _alive(supervisor, subtrees)
        health.supervisor = lambda: (
            "stopped" if stopped.is_set() else "draining" if supervisor.draining else "running"
        )
        engine = Engine(settings, metrics, health, supervisor, role=role, store=store, bus=bus)
        log.info("starting", extra={"role": role})

        async def supervise(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            try:
                await supervisor.run(task_status=task_status)
            finally:
                stopped.set()

        async with anyio.create_task_group() as tg:
            await tg.start(supervise)
            engine.ingress = ingress_box[0] if ingress_box else None
            try:
                yield engine
            finally:
                with anyio.CancelScope(shield=True):
                    if not supervisor.draining:
                        await engine.drain()


async def _pipeline(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    metrics: Metrics,
    store: PgEventStore,
    bus: JetStreamBus,
    channels: dict[str, Any],
    deadline: DrainDeadline,
    *,
    catch_up: bool,
) -> list[ChildSpec]:
    """The children that write: writers, dedup guard, one consumer per source."""
    to_dedup_send, to_dedup = open_channel[Work](settings.channel_capacity)
    to_writer_send, to_writer = open_channel[Work](settings.channel_capacity)
    committed_send, committed = open_channel[list[str]](settings.channel_capacity)
    for end in (to_dedup_send, to_dedup, to_writer_send, to_writer, committed_send, committed):
        stack.push_async_callback(end.aclose)
    channels.update({"dedup": to_dedup, "writer": to_writer, "committed": committed})

    def clone(end: Any) -> Any:
        copy = end.clone()
        stack.push_async_callback(copy.aclose)
        return copy

    held = HeldMessages(max_bytes=settings.max_held_bytes)

    async def subscribe(source: str) -> Any:
        return HoldingSubscription(await bus.subscribe(source), held)

    # First, so it stops last: it signals progress for what the writers hold until they
    # have ended, then gives back at once whatever is left.
    children: list[ChildSpec] = [
        ChildSpec(
            "keeper",
            _bind(Keeper, held, ack_wait=settings.ack_wait, metrics=metrics),
        )
    ]
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
                    deadline=deadline,
                    # held through an outage: progress well inside ack_wait
                    progress_interval=settings.ack_wait / 3,
                    max_deliver=settings.max_deliver,
                ),
                policy=RestartPolicy(max_restarts=10, window=60.0, backoff_max=10.0),
                wait_on_drain=True,
            )
        )
    children.append(
        ChildSpec(
            "backstop",
            _bind(
                MaxDeliveriesBackstop,
                bus.watch_max_deliveries,
                store,
                max_deliver=settings.max_deliver,
                metrics=metrics,
            ),
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
                recent=RecentIds(settings.dedup_capacity),
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
                    linger=settings.fetch_linger,
                    max_bytes=settings.fetch_max_bytes,
                    budget=held,
                    catch_up=_catch_up_budget(deadline) if catch_up else 0.0,
                ),
            )
        )
    # Only the clones feed the channels: the originals would keep them open forever.
    await to_dedup_send.aclose()
    await committed_send.aclose()
    return children


# --- the writing subtree (consumers, dedup, writers) under its own supervisor ---

WRITING = "writing"
# The top supervisor restarts the writing subtree after a backoff, never giving up:
# whatever the database does, ingress keeps answering from JetStream.
WRITING_POLICY = RestartPolicy(max_restarts=2**31, window=1.0, backoff_max=30.0)


def _writing_subtree(
    writing: list[ChildSpec], metrics: Metrics, deadline: DrainDeadline
) -> ChildSpec:
    latest: list[Subtree] = []

    def make() -> Subtree:
        subtree = Subtree(
            WRITING,
            writing,
            deadline=deadline,
            on_restart=lambda name, exc: metrics.actor_restarts.labels(name).inc(),
        )
        latest[:] = [subtree]
        return subtree

    return _SubtreeSpec(WRITING, make, policy=WRITING_POLICY, wait_on_drain=True, latest=latest)


@dataclass(frozen=True)
class _SubtreeSpec(ChildSpec):
    latest: list[Subtree] = field(default_factory=list)  # the instance running now


def _alive(supervisor: Supervisor, subtrees: list[ChildSpec]) -> dict[str, bool]:
    """Per actor, the nested ones included (`writing/writer[0]`)."""
    alive = supervisor.children_alive()
    for spec in subtrees:
        if isinstance(spec, _SubtreeSpec) and spec.latest:
            for name, up in spec.latest[0].children_alive().items():
                alive[f"{spec.name}/{name}"] = up and alive.get(spec.name, False)
    return alive


def _http_app(
    settings: Settings,
    metrics: Metrics,
    health: Health,
    *,
    event_log: Any,
    store: PgEventStore | None,
    reports: PgReportStore | None = None,
    auth: Authenticator | None = None,
    limits: RateLimiter | None = None,
) -> Quart:
    """The Quart app of this role. `store` is None where the role has no database;
    the reports endpoints are served where `reports` is given."""
    deps = HttpDeps(
        settings,
        metrics,
        health,
        event_log=event_log,
        reports=reports,
        auth=auth,
        limits=limits,
    )
    return create_app(deps)


def _catch_up_budget(deadline: DrainDeadline) -> Callable[[], float]:
    """What the consumers may spend catching up: the budget less the flush reserve."""
    return lambda: deadline.share(1.0, reserve=FLUSH_RESERVE)


def _bind(factory: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[], Any]:
    return lambda: factory(*args, **kwargs)


def _migrations_check(store: PgEventStore) -> Callable[[], Any]:
    async def check() -> None:
        pending = await store.migrations_pending()
        if pending:
            raise RuntimeError(f"pending: {', '.join(pending)}")

    return check


def _consumer_probe(bus: JetStreamBus, source: str) -> Callable[[], Any]:
    async def probe() -> Any:
        return await bus.consumer_figures(source)

    return probe


def _stream_probe(bus: JetStreamBus, stream: str) -> Callable[[], Any]:
    async def probe() -> Any:
        return await bus.stream_figures(stream)

    return probe


async def run_until_signalled(
    settings: Settings, *, on_ready: Callable[[Engine], None], role: str | None = None
) -> int:
    """Run until SIGTERM/SIGINT, then drain; a second signal forces. Returns an exit code:
    0 after a clean drain, 1 when the deadline or a second signal forced the exit.

    Signals are caught once the engine runs; before that (connecting, migrating) they
    keep their default effect and end the process at once: nothing was accepted yet,
    and a migration under way rolls back with its connection.
    """
    async with open_engine(settings, role=role) as engine:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            on_ready(engine)
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
    log.info("stopped (%s)", "clean" if clean else "forced", extra={"clean": clean})
    return 0 if clean else 1
