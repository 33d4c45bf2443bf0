"""Recording fakes for the edges: JetStream deliveries and subscriptions, the store, the log."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anyio

from sluice.auth import hash_key, new_key
from sluice.edges.store import map_errors
from sluice.ports import (
    ApiKey,
    DeadLetter,
    EventRow,
    LogUnavailable,
    PublishAck,
    RowsRejected,
    StoreUnavailable,
)


@dataclass
class FakeDelivery:
    """Records what was done with it, and what the store had committed at that moment."""

    data: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    num_delivered: int = 1
    acked: bool = False
    naks: list[float | None] = field(default_factory=list)
    termed: bool = False
    progress_signals: int = 0
    committed_when_acked: frozenset[str] | None = None
    store: FakeStore | None = None

    async def ack(self) -> None:
        assert not self.acked, "acked twice"
        self.acked = True
        if self.store is not None:
            self.committed_when_acked = frozenset(self.store.stored)

    async def nak(self, delay: float | None = None) -> None:
        self.naks.append(delay)

    async def term(self) -> None:
        self.termed = True

    async def in_progress(self) -> None:
        self.progress_signals += 1


@dataclass
class FakeStore:
    """An in-memory EventStore that fails as the real one does.

    `fail_next` queues exceptions for the next writes: asyncpg's own (e.g.
    `asyncpg.ConnectionDoesNotExistError()`) are mapped as PgEventStore maps them.
    `poison` maps event ids to what asyncpg raises when that row is written (e.g.
    `OverflowError("value out of int32 range")`): a write holding one is refused whole.
    """

    stored: dict[str, EventRow] = field(default_factory=dict)
    batches: list[list[str]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    fail_next: list[BaseException] = field(default_factory=list)
    poison: dict[str, BaseException] = field(default_factory=dict)
    inserts: int = 0  # statements tried, refused ones included
    transactions: int = 0

    async def write_batch(
        self, rows: Sequence[EventRow], letters: Sequence[DeadLetter] = ()
    ) -> set[str]:
        async with self.transaction() as tx:
            new = await tx.insert(rows)
            await tx.dead_letter(letters)
        return new

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[FakeTransaction]:
        await anyio.lowlevel.checkpoint()
        self.transactions += 1
        with map_errors(rows=()):
            if self.fail_next:
                raise self.fail_next.pop(0)
        tx = FakeTransaction(self)
        yield tx
        for ids in tx.batches:  # the commit
            self.batches.append(ids)
        for row in tx.rows:
            self.stored.setdefault(row.event_id, row)
        for letter in tx.letters:  # one letter per source and payload, as the real key
            key = (letter.source, letter.payload)
            self.dead = [d for d in self.dead if (d.source, d.payload) != key] + [letter]

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        await self.write_batch((), letters)

    async def stored_ids(self, event_ids: Sequence[str]) -> set[str]:
        await anyio.lowlevel.checkpoint()
        return {event_id for event_id in event_ids if event_id in self.stored}

    async def ping(self) -> None:
        with map_errors():
            if self.fail_next and not isinstance(self.fail_next[0], RowsRejected):
                raise self.fail_next[0]


@dataclass
class FakeTransaction:
    store: FakeStore
    rows: list[EventRow] = field(default_factory=list)
    batches: list[list[str]] = field(default_factory=list)
    letters: list[DeadLetter] = field(default_factory=list)

    async def insert(self, rows: Sequence[EventRow]) -> set[str]:
        await anyio.lowlevel.checkpoint()
        if not rows:
            return set()
        self.store.inserts += 1
        with map_errors(rows):
            for row in rows:
                if row.event_id in self.store.poison:
                    raise self.store.poison[row.event_id]
        seen = set(self.store.stored) | {r.event_id for r in self.rows}
        new = {row.event_id for row in rows if row.event_id not in seen}
        self.rows.extend(rows)
        self.batches.append([row.event_id for row in rows])
        return new

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        await anyio.lowlevel.checkpoint()
        self.letters.extend(letters)


@dataclass
class FakeSubscription:
    """Hands out queued deliveries; an empty fetch waits for the timeout like JetStream."""

    queue: list[FakeDelivery] = field(default_factory=list)
    fetches: int = 0
    fail_next: list[Exception] = field(default_factory=list)
    arrived: anyio.Event = field(default_factory=anyio.Event)
    closed: bool = False

    def put(self, *deliveries: FakeDelivery) -> None:
        self.queue.extend(deliveries)
        self.arrived.set()

    async def fetch(self, batch: int, timeout: float) -> Sequence[FakeDelivery]:
        self.fetches += 1
        if self.fail_next:
            raise self.fail_next.pop(0)
        if not self.queue:
            with anyio.move_on_after(timeout):
                await self.arrived.wait()
            self.arrived = anyio.Event()
        taken, self.queue = self.queue[:batch], self.queue[batch:]
        return taken

    async def pending(self) -> tuple[int, int]:
        return len(self.queue), 0

    async def close(self) -> None:
        self.closed = True


@dataclass
class FakeEventLog:
    """Records publishes; `unavailable` makes it refuse like a NATS outage.

    With `hold` set, each publish waits until the test sets its event in `held` (in
    call order), so a test can see what is in flight; `fail_next` fails the next ones.
    """

    published: list[tuple[str, bytes, str, dict[str, str]]] = field(default_factory=list)
    seen_ids: set[str] = field(default_factory=set)
    unavailable: bool = False
    max_payload: int = 1024 * 1024
    hold: bool = False
    held: list[anyio.Event] = field(default_factory=list)
    fail_next: list[Exception] = field(default_factory=list)
    calls: int = 0
    running: int = 0
    most_running: int = 0

    async def publish(
        self, source: str, payload: bytes, *, msg_id: str, headers: Mapping[str, str]
    ) -> PublishAck:
        self.calls += 1
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await anyio.lowlevel.checkpoint()
            if self.hold:
                release = anyio.Event()
                self.held.append(release)
                await release.wait()
        finally:
            self.running -= 1
        if self.fail_next:
            raise self.fail_next.pop(0)
        if self.unavailable:
            raise LogUnavailable("nats: no responders")
        duplicate = msg_id in self.seen_ids
        self.seen_ids.add(msg_id)
        if not duplicate:
            self.published.append((source, payload, msg_id, dict(headers)))
        return PublishAck("EVENTS", len(self.published), duplicate)

    def is_connected(self) -> bool:
        return not self.unavailable


def row(event_id: str, source: str = "facebook", **overrides: object) -> EventRow:
    values: dict[str, object] = {
        "event_id": event_id,
        "source": source,
        "funnel_stage": "top",
        "event_type": "ad.view",
        "occurred_at": datetime(2026, 1, 1, tzinfo=UTC),
        "received_at": datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC),
        "user_id": "u1",
        "country": "DE",
        "campaign_id": None,
        "purchase_amount": Decimal("0"),
        "correlation_id": None,
        "data": '{"eventId": "%s"}' % event_id,
    }
    values.update(overrides)
    return EventRow(**values)  # type: ignore[arg-type]


@dataclass
class _StreamMessage:
    data: bytes
    headers: Mapping[str, str]
    delivered: int = 0
    available_at: float = float("-inf")
    done: bool = False


@dataclass
class JsDelivery:
    """One delivery of a `RedeliveringSubscription`'s message."""

    message: _StreamMessage
    subscription: RedeliveringSubscription
    num_delivered: int

    @property
    def data(self) -> bytes:
        return self.message.data

    @property
    def headers(self) -> Mapping[str, str]:
        return self.message.headers

    async def ack(self) -> None:
        self.message.done = True

    async def nak(self, delay: float | None = None) -> None:
        self.subscription.redeliver(self.message, after=delay or 0.0)

    async def term(self) -> None:
        self.message.done = True

    async def in_progress(self) -> None:
        if not self.message.done:
            self.message.available_at = anyio.current_time() + self.subscription.ack_wait


@dataclass
class RedeliveringSubscription:
    """A durable pull consumer that redelivers like JetStream: a message fetched and
    neither acked, terminated nor signalled in progress within `ack_wait` is delivered
    again (num_delivered + 1); a nak delivers it again after its delay. Time is anyio's
    clock (a MockClock in trio tests)."""

    ack_wait: float
    messages: list[_StreamMessage] = field(default_factory=list)
    changed: anyio.Event = field(default_factory=anyio.Event)
    closed: bool = False

    def put(self, data: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.messages.append(_StreamMessage(data, headers or {}))
        self._wake()

    def redeliver(self, message: _StreamMessage, *, after: float) -> None:
        if not message.done:
            message.available_at = anyio.current_time() + after
            self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def fetch(self, batch: int, timeout: float) -> Sequence[JsDelivery]:
        deadline = anyio.current_time() + timeout
        while True:
            now = anyio.current_time()
            open_ = [m for m in self.messages if not m.done]
            ready = [m for m in open_ if m.available_at <= now][:batch]
            if ready:
                for m in ready:
                    m.delivered += 1
                    m.available_at = now + self.ack_wait
                return [JsDelivery(m, self, m.delivered) for m in ready]
            wake_at = min([deadline, *(m.available_at for m in open_)])
            if now >= deadline:
                return []
            with anyio.move_on_after(wake_at - now):
                await self.changed.wait()

    async def pending(self) -> tuple[int, int]:
        now = anyio.current_time()
        open_ = [m for m in self.messages if not m.done]
        ready = sum(1 for m in open_ if m.available_at <= now)
        return ready, len(open_) - ready

    async def close(self) -> None:
        self.closed = True


@dataclass
class FakeKeyStore:
    """An in-memory KeyStore, by keyed hash as PgKeyStore keeps them. `down` makes a
    lookup raise StoreUnavailable (as PgKeyStore does for any database error); `lookups`
    counts the lookups that reached it."""

    secret: bytes = b"test-secret"
    keys: dict[bytes, ApiKey] = field(default_factory=dict)
    revoked: set[bytes] = field(default_factory=set)
    down: bool = False
    lookups: int = 0

    def add(
        self,
        *scopes: str,
        sources: set[str] | None = None,
        rate_requests: int | None = None,
        rate_events: int | None = None,
    ) -> str:
        """A new key with these scopes (sources, rate limits); returns the key itself."""
        key = new_key()
        api_key = ApiKey(
            len(self.keys) + 1,
            f"key-{len(self.keys) + 1}",
            frozenset(scopes),
            None if sources is None else frozenset(sources),
            rate_requests,
            rate_events,
        )
        self.keys[hash_key(self.secret, key)] = api_key
        return key

    def revoke(self, key: str) -> None:
        self.revoked.add(hash_key(self.secret, key))

    async def use(self, key_hash: bytes) -> ApiKey | None:
        self.lookups += 1
        await anyio.lowlevel.checkpoint()
        if self.down:
            raise StoreUnavailable("ConnectionRefusedError: connection refused")
        return None if key_hash in self.revoked else self.keys.get(key_hash)


async def post_unread(app: Any, path: str, client: tuple[str, int] | None = None) -> dict[str, Any]:
    """POST to the ASGI `app` a head announcing a 10-byte JSON body whose reading fails
    the test; returns the response's start message (the app answered without the body)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"10")],
    }
    if client is not None:
        scope["client"] = client
    await app(scope, receive, send)
    return sent[0]
