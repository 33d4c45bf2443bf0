"""POST /webhook (and /events, /webhook/<source>): validate, publish, answer.

202 means every accepted event is in JetStream (publish acked). One envelope per
source per request, split below the server's max_payload.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
from quart import Blueprint, Response, current_app, g, request

from sluice import envelope
from sluice.config import Settings
from sluice.http.errors import json_bytes
from sluice.metrics import Metrics
from sluice.ports import EventLog, LogUnavailable
from sluice.sources import SOURCE_NAMES, BadBody, Rejection, ValidEvent, validate_body

log = logging.getLogger("sluice.webhook")

CORRELATION_HEADER = "X-Correlation-ID"

webhook_routes = Blueprint("webhook", __name__)


@dataclass
class Ingest:
    """What the webhook needs: where to publish, how much at once, what to count."""

    event_log: EventLog
    settings: Settings
    metrics: Metrics

    def __post_init__(self) -> None:
        self.inflight = anyio.Semaphore(self.settings.max_inflight_publishes)


class ServiceUnavailable(Exception):
    pass


def json_response(body: Any, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(json_bytes(body), status, headers=headers, content_type="application/json")


def error(status: int, message: str, **extra: Any) -> Response:
    return json_response({"error": message, **extra}, status)


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (
        mime.startswith("application/") and mime.endswith("+json")
    )


@webhook_routes.post("/webhook")
@webhook_routes.post("/events")
async def webhook() -> Response:
    return await _ingest(None)


@webhook_routes.post("/webhook/<source>")
async def webhook_for(source: str) -> Response:
    if source not in SOURCE_NAMES:
        return error(404, f"unknown source {source!r}; expected one of {', '.join(SOURCE_NAMES)}")
    return await _ingest(source)


async def _ingest(route_source: str | None) -> Response:
    ingest: Ingest = current_app.extensions["sluice.ingest"]
    if current_app.extensions["sluice.health"].draining:
        retry = str(ingest.settings.retry_after_seconds)
        return json_response(
            {"error": "shutting down: send to another instance or retry"},
            503,
            {"Retry-After": retry},
        )
    if not _is_json(request.content_type):
        return error(
            415, f"content type must be application/json, got {request.content_type or 'none'}"
        )
    body = await request.get_data(cache=False, as_text=False)
    assert isinstance(body, bytes)
    try:
        validated = validate_body(body, route_source=route_source)
    except BadBody as exc:
        return error(400, str(exc))
    received_at = datetime.now(UTC)
    correlation_id: str = g.correlation_id
    rejected = list(validated.rejected)
    accepted = duplicates = 0
    headers = {CORRELATION_HEADER: correlation_id}
    max_bytes = ingest.event_log.max_payload
    try:
        for source, events in validated.by_source.items():
            fitting = _drop_oversized(events, max_bytes, rejected)
            chunks = envelope.encode(
                source,
                [(e.event_id, e.raw) for e in fitting],
                received_at=received_at,
                max_bytes=max_bytes,
            )
            for chunk in chunks:
                if await _publish(ingest, source, chunk, headers):
                    accepted += len(chunk.event_ids)
                    ingest.metrics.events_accepted.labels(source).inc(len(chunk.event_ids))
                else:
                    duplicates += len(chunk.event_ids)
    except ServiceUnavailable as exc:
        log.warning("publish failed: %s", exc, extra={"correlation_id": correlation_id})
        retry = str(ingest.settings.retry_after_seconds)
        return json_response(
            {"error": f"events not accepted, try again: {exc}"}, 503, {"Retry-After": retry}
        )
    duplicates += validated.duplicates
    rejected.sort(key=lambda r: r.index)
    for rejection in rejected:
        ingest.metrics.events_rejected.labels(
            route_source or "unknown", _reason_label(rejection.error)
        ).inc()
    body_out = {
        "accepted": accepted,
        "duplicates": duplicates,
        "rejected": [{"index": r.index, "eventId": r.event_id, "error": r.error} for r in rejected],
    }
    status = 422 if rejected and accepted == 0 and duplicates == 0 else 202
    return json_response(body_out, status)


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
                    e.index, e.event_id, f"event: larger than the {max_bytes}-byte message limit"
                )
            )
    return fitting


async def _publish(
    ingest: Ingest, source: str, chunk: envelope.Chunk, headers: dict[str, str]
) -> bool:
    """Publish one envelope; True if new, False if JetStream already had it."""
    with anyio.move_on_after(ingest.settings.publish_timeout) as scope:
        await ingest.inflight.acquire()
    if scope.cancelled_caught:
        raise ServiceUnavailable("too many requests in flight")
    try:
        ack = await ingest.event_log.publish(
            source, chunk.payload, msg_id=chunk.msg_id, headers=headers
        )
    except LogUnavailable as exc:
        raise ServiceUnavailable(str(exc)) from exc
    finally:
        ingest.inflight.release()
    return not ack.duplicate


def _reason_label(message: str) -> str:
    """A bounded label: the field path only (never an event id or value)."""
    field = message.split(":", 1)[0].strip()
    return field if len(field) <= 64 else field[:64]


def new_correlation_id() -> str:
    return uuid.uuid4().hex


def correlation_id_from(header: str | None) -> str:
    """The caller's id when it is a sane token, else a new one (it goes into logs)."""
    if header and len(header) <= 128 and header.isascii() and header.isprintable():
        return header
    return new_correlation_id()
