"""POST /webhook (and /events, /webhook/<source>): validate, publish, answer.

202 means every accepted event is in JetStream (publish acked). A request alone, or one
with 256 KiB of events or more, gets one envelope per source, split below the server's
max_payload; concurrent requests for a source share envelopes (group commit:
`sluice.group_commit`).

The work is done by `Ingest.handle`, which knows nothing of the web framework; the
routes are served by `sluice.http.front.WebhookFront`, the raw ASGI app in front of
Quart (the only implementation of POST /webhook, /events and /webhook/<source>).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import anyio

from sluice import envelope
from sluice.config import Settings, mask_secrets
from sluice.group_commit import CORRELATION_HEADER as CORRELATION_HEADER
from sluice.group_commit import GroupCommit, ServiceUnavailable
from sluice.metrics import Metrics
from sluice.ports import EventLog
from sluice.recent import RecentIds
from sluice.signing import WebhookSignatures
from sluice.sources import SOURCE_NAMES, BadBody, Rejection, Validated, ValidEvent, validate_body

if TYPE_CHECKING:
    from collections.abc import Callable

    from sluice.ratelimit import Limited

log = logging.getLogger("sluice.webhook")

BACKLOG_PROBE_INTERVAL = 0.5  # seconds between looks at the consumers' backlog


@runtime_checkable
class BacklogProbe(Protocol):
    """An event log that can tell how much is waiting to be written (JetStream can)."""

    async def backlog(self) -> int:
        """Messages published but not yet acked by the writers, over every source."""
        ...


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


class RequestsInFlight:
    """How many webhook requests are being answered; a drain waits for none."""

    def __init__(self) -> None:
        self.count = 0
        self._idle: anyio.Event | None = None

    def enter(self) -> None:
        self.count += 1

    def leave(self) -> None:
        self.count -= 1
        if not self.count and self._idle is not None:
            self._idle.set()
            self._idle = None

    async def wait_idle(self) -> None:
        """Block until no request is in flight."""
        while self.count:
            if self._idle is None:
                self._idle = anyio.Event()
            await self._idle.wait()


@dataclass
class Ingest:
    """What the webhook needs: where to publish, how much at once, what to count."""

    event_log: EventLog
    settings: Settings
    metrics: Metrics

    def __post_init__(self) -> None:
        settings = self.settings
        self.requests = RequestsInFlight()
        self.inflight = anyio.Semaphore(settings.max_inflight_publishes)
        self.group_commit = GroupCommit(
            self.event_log,
            self.metrics,
            inflight=settings.group_commit_inflight,
            max_bytes=settings.group_commit_max_bytes,
            recent=RecentIds(settings.dedup_capacity),
            publish_timeout=settings.publish_timeout,
            clock=loop_time,
        )
        # Built once: a verifier per secret (SLUICE_WEBHOOK_SECRETS); None: none set.
        secrets = settings.webhook_secrets
        self.signatures = WebhookSignatures(secrets) if secrets else None
        self._probe = self.event_log if isinstance(self.event_log, BacklogProbe) else None
        self._backlog = 0
        self._backlog_at = -BACKLOG_PROBE_INTERVAL
        self._probing = False

    def _count_duplicates(self, source: str, count: int) -> None:
        """Events the webhook did not publish again: re-sent, or repeated in one body."""
        self.metrics.events_duplicate.labels(source).inc(count)

    def _count_rate_limited(self, validated: Validated, route_source: str | None) -> None:
        """The events of a refused body, by source (`unknown` where none is known)."""
        counts = {source: len(events) for source, events in validated.by_source.items()}
        for rejection in validated.rejected:
            source = route_source or rejection.source or "unknown"
            counts[source] = counts.get(source, 0) + 1
        if validated.duplicates:  # repeated in the body: of the source they repeat
            only = next(iter(validated.by_source)) if len(validated.by_source) == 1 else None
            source = route_source or only or "unknown"
            counts[source] = counts.get(source, 0) + validated.duplicates
        for source, count in counts.items():
            self.metrics.events_rate_limited.labels(source).inc(count)

    def _retry_headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.settings.retry_after_seconds)}

    def refusal(self, *, draining: bool) -> Answer | None:
        """A 503/429 to send before reading the body, or None to go ahead."""
        if draining:
            return Answer(
                503,
                {"error": "shutting down: send to another instance or retry"},
                self._retry_headers(),
            )
        if self._probe is None or not self._backlog:
            return None
        messages = self._backlog
        # The probe counts messages; a message holds 1 event or 1,000 (arrays, group
        # commit), so the events gate estimates from what this process publishes.
        events = round(messages * (self.group_commit.events_per_message or 1))
        limits = self.settings
        if (limits.max_backlog and messages > limits.max_backlog) or (
            limits.max_backlog_events and events > limits.max_backlog_events
        ):
            return Answer(
                429,
                {
                    "error": f"behind on writing ({messages} messages, ~{events} events"
                    " waiting); retry later"
                },
                self._retry_headers(),
            )
        return None

    async def look_at_backlog(self) -> None:
        """Refresh the backlog figure when it is stale; one request at a time does it.

        Costs one JetStream API round trip per source every BACKLOG_PROBE_INTERVAL; the
        other requests meanwhile use the last figure.
        """
        now = time.monotonic()
        if self._probe is None or self._probing or now - self._backlog_at < BACKLOG_PROBE_INTERVAL:
            return
        self._probing = True
        try:
            with anyio.move_on_after(1.0):
                self._backlog = await self._probe.backlog()
        except Exception as exc:  # the probe is advisory: never fail a request for it
            log.debug("backlog probe failed: %r", exc)
            self._backlog = 0
        finally:
            self._backlog_at = time.monotonic()
            self._probing = False

    async def handle(
        self,
        body: bytes,
        *,
        route_source: str | None,
        correlation_id: str,
        deadline: float | None = None,
        allowed_sources: frozenset[str] | None = None,
        unsigned_sources: frozenset[str] | None = None,
        take_events: Callable[[int], Limited | None] | None = None,
    ) -> Answer:
        """Validate `body`, publish its valid events, and say what happened.

        The caller has checked draining (`refusal`), the content type and the size.
        `deadline` (anyio clock; default: the publish timeout from now): when the
        answer is due at the latest; a publish not acked by then is a 503.
        `allowed_sources` (None: all): the sources the request's API key may send;
        events of others are rejected one by one, as invalid ones are.
        `unsigned_sources` (None: none): sources with a webhook secret that the request is
        not signed with; their events are rejected one by one too.
        `take_events` (the rate limit): takes one token per event of the body, valid or
        not, or says why not; then the whole request is a 429 and nothing is published.
        """
        if deadline is None:
            deadline = loop_time() + self.settings.publish_timeout
        try:
            validated = validate_body(body, route_source=route_source)
        except BadBody as exc:
            return Answer(400, {"error": str(exc)}, {})
        if take_events is not None:
            count = len(validated.rejected) + validated.duplicates
            for events in validated.by_source.values():
                count += len(events)
            limited = take_events(count) if count else None
            if limited is not None:
                self._count_rate_limited(validated, route_source)
                log.info(
                    "rate limited: %d events",
                    count,
                    extra={"correlation_id": correlation_id, "status": 429},
                )
                return Answer(429, {"error": limited.error}, limited.headers())
        rejected = list(validated.rejected)
        if allowed_sources is not None and not allowed_sources.issuperset(validated.by_source):
            validated = _only_allowed(validated, allowed_sources, rejected)
        if unsigned_sources and not unsigned_sources.isdisjoint(validated.by_source):
            validated = _only_signed(validated, unsigned_sources, rejected)
        try:
            accepted, duplicates = await self._publish(
                validated, rejected, correlation_id, deadline
            )
        except ServiceUnavailable as exc:
            log.warning("publish failed: %s", exc, extra={"correlation_id": correlation_id})
            return Answer(
                503,
                {"error": f"events not accepted, try again: {mask_secrets(str(exc))}"},
                self._retry_headers(),
            )
        if validated.duplicates:
            only = next(iter(validated.by_source)) if len(validated.by_source) == 1 else None
            self._count_duplicates(route_source or only or "unknown", validated.duplicates)
        duplicates += validated.duplicates
        if rejected:
            rejected.sort(key=lambda r: r.index)
            for rejection in rejected:
                self.metrics.events_rejected.labels(
                    route_source or rejection.source or "unknown", _reason_label(rejection.error)
                ).inc()
        answer = {
            "accepted": accepted,
            "duplicates": duplicates,
            "rejected": [
                {"index": r.index, "eventId": r.event_id, "error": r.error} for r in rejected
            ],
        }
        # Nothing valid (an empty array included) is 422; duplicates are valid events.
        status = 422 if accepted == 0 and duplicates == 0 else 202
        log.info(
            "%d accepted, %d duplicates, %d rejected",
            accepted,
            duplicates,
            len(rejected),
            extra={"correlation_id": correlation_id, "status": status},
        )
        return Answer(status, answer, {})

    async def _publish(
        self, validated: Validated, rejected: list[Rejection], correlation_id: str, deadline: float
    ) -> tuple[int, int]:
        """Publish the valid events per source: (accepted, duplicates), once durable.

        Raises ServiceUnavailable (nothing of a failed source may be claimed).
        """
        if not validated.by_source:
            return 0, 0
        received_at = datetime.now(UTC)
        max_bytes = self.event_log.max_payload
        accepted = duplicates = 0
        try:
            self.inflight.acquire_nowait()  # the usual case, without a cancel scope
        except anyio.WouldBlock:
            with anyio.move_on_at(deadline) as scope:
                await self.inflight.acquire()
            if scope.cancelled_caught:
                raise ServiceUnavailable("too many requests in flight") from None
        try:
            for source, events in validated.by_source.items():
                outcome = await self.group_commit.submit(
                    source,
                    _drop_oversized(events, max_bytes, rejected),
                    correlation_id=correlation_id,
                    received_at=received_at,
                    deadline=deadline,
                )
                accepted += outcome.accepted
                duplicates += outcome.duplicates
                if outcome.duplicates:
                    self._count_duplicates(source, outcome.duplicates)
        finally:
            self.inflight.release()
        return accepted, duplicates


def unknown_source(source: str) -> Answer:
    return Answer(
        404, {"error": f"unknown source {source!r}; expected one of {', '.join(SOURCE_NAMES)}"}, {}
    )


def unsupported_type(content_type: str | None) -> Answer:
    return Answer(
        415, {"error": f"content type must be application/json, got {content_type or 'none'}"}, {}
    )


def is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (
        mime.startswith("application/") and mime.endswith("+json")
    )


# --------------------------------------------------------------------------- helpers


def loop_time() -> float:
    """anyio's clock: on asyncio (where the HTTP server runs) the loop's time, read
    without anyio's lookup of the running async library (~1 us, several times a
    request); elsewhere (trio, in tests) anyio's."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return anyio.current_time()


def _drop_oversized(
    events: list[ValidEvent], max_bytes: int, rejected: list[Rejection]
) -> list[ValidEvent]:
    if all(envelope.fits(e.raw, max_bytes) for e in events):
        return events
    fitting = []
    for e in events:
        if envelope.fits(e.raw, max_bytes):
            fitting.append(e)
        else:
            rejected.append(
                Rejection(
                    e.index,
                    e.event_id,
                    f"event: larger than the {max_bytes}-byte message limit",
                    e.source,
                )
            )
    return fitting


def _only_allowed(
    validated: Validated, allowed: frozenset[str], rejected: list[Rejection]
) -> Validated:
    """`validated` without the events of sources not `allowed`, which go to `rejected`."""
    return _without(
        validated,
        lambda source: source not in allowed,
        lambda source: f"source: this API key may not send {source} events",
        rejected,
    )


def _only_signed(
    validated: Validated, unsigned: frozenset[str], rejected: list[Rejection]
) -> Validated:
    """`validated` without the events of the `unsigned` sources, which go to `rejected`."""
    return _without(
        validated,
        unsigned.__contains__,
        lambda source: f"source: {source} events must be signed with a {source} webhook secret",
        rejected,
    )


def _without(
    validated: Validated,
    refused: Callable[[str], bool],
    error_for: Callable[[str], str],
    rejected: list[Rejection],
) -> Validated:
    """`validated` without the events of the `refused` sources, their copies in the body
    included (refused too, not counted as duplicates), which go to `rejected`."""
    by_source: dict[str, list[ValidEvent]] = {}
    for source, events in validated.by_source.items():
        if not refused(source):
            by_source[source] = events
            continue
        error = error_for(source)
        rejected.extend(Rejection(e.index, e.event_id, error, source) for e in events)
    copies = []
    for copy in validated.copies:
        if refused(copy.source):
            rejected.append(
                Rejection(copy.index, copy.event_id, error_for(copy.source), copy.source)
            )
        else:
            copies.append(copy)
    return Validated(by_source, validated.rejected, len(copies), copies)


def _reason_label(message: str) -> str:
    """A bounded label: the field path only (never an event id or value)."""
    field = mask_secrets(message.split(":", 1)[0].strip())
    return field if len(field) <= 64 else field[:64]


# A random per-process prefix and a counter: unique across processes like a uuid4, at
# a fraction of its cost (uuid4 reads the OS's random source on every request).
_ID_PREFIX = uuid.uuid4().hex[:16]
_id_counter = itertools.count(1)


def new_correlation_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def correlation_id_from(header: str | None) -> str:
    """The caller's id when it is a sane token, else a new one (it goes into logs)."""
    if header and len(header) <= 128 and header.isascii() and header.isprintable():
        return header
    return new_correlation_id()
