"""The small interfaces between actors and the edges, and the messages they pass.

Actors and the HTTP layer depend only on these Protocols; `sluice.edges` implements
them with nats-py and asyncpg, and tests fill them with recording fakes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol

import msgspec

if TYPE_CHECKING:
    from collections.abc import Mapping


class EventRow(msgspec.Struct, frozen=True, gc=False):
    """One validated event, shaped as a row of the `events` table.

    A frozen msgspec Struct, not a dataclass: one is built per event on the hot path,
    and this is ~10x cheaper to build (0.2 vs 2.8 us with 20 fields) and GC-untracked.
    """

    event_id: str
    source: str
    funnel_stage: str | None
    event_type: str
    occurred_at: datetime
    received_at: datetime
    user_id: str | None
    country: str | None
    campaign_id: str | None
    purchase_amount: Decimal | None
    correlation_id: str | None
    data: str  # the event exactly as the publisher sent it (JSON text)
    # Hot fields the reports group by (None where the source or stage has no such field).
    revenue: Decimal | None = None  # purchase_amount when this event type is revenue
    account_id: str | None = None  # generic
    age: int | None = None  # facebook
    gender: str | None = None  # facebook
    city: str | None = None  # facebook
    followers: int | None = None  # tiktok
    device: str | None = None  # tiktok top
    video_id: str | None = None  # tiktok top, facebook top (when set)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A payload that can never be stored, and why."""

    source: str
    reason: str
    payload: bytes
    attempts: int


@dataclass(frozen=True, slots=True)
class PublishAck:
    stream: str
    seq: int
    duplicate: bool


class Delivery(Protocol):
    """One JetStream message handed to us by a pull consumer."""

    @property
    def data(self) -> bytes: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def num_delivered(self) -> int: ...

    async def ack(self) -> None:
        """Tell JetStream the message is done with. Call only after its commit."""

    async def nak(self, delay: float | None = None) -> None:
        """Ask for redelivery, after `delay` seconds when given."""

    async def term(self) -> None:
        """Never redeliver (the message was dead-lettered)."""

    async def in_progress(self) -> None:
        """Still being worked on: JetStream restarts the message's ack_wait."""


class EventLog(Protocol):
    """The durable log that ingress publishes envelopes to (JetStream)."""

    async def publish(
        self, source: str, payload: bytes, *, msg_id: str, headers: Mapping[str, str]
    ) -> PublishAck:
        """Store `payload` on `events.<source>`; returns once the server acked it.

        Raises `LogUnavailable` when the log cannot take it (disconnected, timed out,
        stream full): nothing may be reported as accepted then.
        """
        ...

    @property
    def max_payload(self) -> int:
        """The largest payload a message may carry, in bytes (room for the message's
        headers already taken off the server's limit)."""
        ...

    def is_connected(self) -> bool: ...


class Subscription(Protocol):
    """A durable pull consumer on one source's subject."""

    async def fetch(self, batch: int, timeout: float) -> Sequence[Delivery]:
        """Wait up to `timeout` seconds for up to `batch` messages; [] when idle."""
        ...

    async def pending(self) -> tuple[int, int]:
        """(messages not yet delivered, messages delivered but not acked)."""
        ...

    async def close(self) -> None:
        """Stop receiving (unsubscribe); messages held stay held until ack_wait."""
        ...


@dataclass(frozen=True, slots=True)
class StreamFigures:
    """What a JetStream stream holds now (for the metrics reporter)."""

    messages: int
    bytes: int
    last_seq: int  # messages ever stored in it, as a sequence number


@dataclass(frozen=True, slots=True)
class ConsumerFigures:
    """Where a source's durable consumer stands (for the metrics reporter)."""

    pending: int  # messages not yet delivered
    ack_pending: int  # delivered, not yet acked
    ack_floor: int  # stream sequence up to which every message is acked
    delivered: int  # last stream sequence delivered


class EventStore(Protocol):
    """The PostgreSQL side: the authority on what is stored."""

    async def write_batch(self, rows: Sequence[EventRow]) -> set[str]:
        """Store `rows` in one transaction; return the event ids that were new.

        Raises `StoreUnavailable` for connection-level faults (retry later) and
        `RowsRejected` when the database refuses the data itself.
        """
        ...

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None: ...

    async def ping(self) -> None:
        """Raise `StoreUnavailable` unless the database answers."""


class LogUnavailable(Exception):
    """The event log (NATS) cannot take or give messages right now."""


class LogClosed(LogUnavailable):
    """The connection to the event log is closed for good (it will not reconnect by
    itself): retrying on it is pointless, the process must start over."""


class StoreUnavailable(Exception):
    """The store (PostgreSQL) cannot be reached right now."""


@dataclass
class RowsRejected(Exception):
    """The database refused the rows themselves (retrying will not help)."""

    reason: str
    rows: Sequence[EventRow] = field(default_factory=tuple)

    def __str__(self) -> str:
        return self.reason
