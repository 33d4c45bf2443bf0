"""The webhook: POST /webhook, /webhook/<source> and /events, served before Quart.

`WebhookFront` is an ASGI app that the HTTP server serves in front of Quart: it answers
the webhook routes itself (their only implementation) and passes everything else to
Quart. Quart's request and app contexts, hooks and Response objects would cost ~200 us
per request, as much as validating and publishing 100 events. The work itself is
`Ingest.handle` (`sluice.http.webhook`); the OpenAPI document describes these routes
from `sluice.http.webhook_docs`. A body that arrives too slowly is the HTTP server's to
cut off (408: `sluice.actors.ingress`), for every route alike.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from sluice.http.access import WEBHOOK_SCOPE
from sluice.http.errors import json_bytes
from sluice.http.webhook import (
    Answer,
    Ingest,
    correlation_id_from,
    is_json,
    loop_time,
    unknown_source,
    unsupported_type,
)
from sluice.signing import HEADERS
from sluice.sources import SOURCE_NAMES

if TYPE_CHECKING:
    from collections.abc import Callable

    from sluice.auth import Authenticator
    from sluice.http.asgi import Receive, Scope, Send
    from sluice.http.health import Health
    from sluice.ports import ApiKey
    from sluice.ratelimit import Limited, RateLimiter

log = logging.getLogger("sluice.webhook")

_PLAIN_ROUTES = {"/webhook": "/webhook", "/events": "/events"}
_SOURCE_PREFIX = "/webhook/"
_JSON_HEADERS = [(b"content-type", b"application/json")]
_SIGNED_HEADERS = {name.encode(): at for at, name in enumerate(HEADERS)}


class _Disconnected(Exception):
    pass


class _TooLarge(Exception):
    pass


async def _not_allowed(method: str, send: Send) -> None:
    """405 for a webhook route asked with another method (OPTIONS: 204), with Allow."""
    status = 204 if method == "OPTIONS" else 405
    payload = b"" if status == 204 else json_bytes({"error": f"{method} not allowed; use POST"})
    headers = [
        *_JSON_HEADERS,
        (b"content-length", b"%d" % len(payload)),
        (b"allow", b"POST, OPTIONS"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _rate_limited(limited: Limited) -> Answer:
    return Answer(429, {"error": limited.error}, limited.headers())


def _events_taker(
    limits: RateLimiter, key: ApiKey | None, address: str
) -> Callable[[int], Limited | None]:
    def take(count: int) -> Limited | None:
        return limits.take_events(key, address, count)

    return take


def too_large(limit: int) -> Answer:
    return Answer(413, {"error": "request body too large (limit %d bytes)" % limit}, {})


class WebhookFront:
    """An ASGI app: POSTs to the webhook routes are answered here, all else by `app`.

    Request latency goes to `http_request_duration_seconds` with the route as its label,
    as Quart's routes do. With `auth`, the API key is checked (scope ingest) before
    anything else, the body included, is looked at. With `limits`, the request then
    takes a request token of its key (or client address) and, once its body is decoded,
    one event token per event: a 429 when they do not fit. With webhook secrets (the
    ingest's `signatures`), the signature is checked once the body is read, before
    validation.
    """

    def __init__(
        self,
        app: Any,
        ingest: Ingest,
        health: Health,
        auth: Authenticator | None = None,
        limits: RateLimiter | None = None,
    ) -> None:
        self.app = app
        self.ingest = ingest
        self.health = health
        self.auth = auth
        self.limits = limits
        self._limit = ingest.settings.max_body_bytes
        self._timers: dict[tuple[str, int], Any] = {}

    async def __call__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            rule = _PLAIN_ROUTES.get(path)
            source: str | None = None
            if rule is None and path.startswith(_SOURCE_PREFIX):
                source = path[len(_SOURCE_PREFIX) :]
                if source and "/" not in source:
                    rule = "/webhook/<source>"
            if rule is not None:
                if scope["method"] == "POST":
                    requests = self.ingest.requests
                    requests.enter()  # before the draining check: a drain waits for it
                    try:
                        await self._serve(scope, receive, send, rule, source)
                    finally:
                        requests.leave()
                    return
                if rule != "/events":  # GET /events lists stored events (a report)
                    await _not_allowed(scope["method"], send)
                    return
        await self.app(scope, receive, send)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        rule: str,
        source: str | None,
    ) -> None:
        started = time.perf_counter()
        content_type = length = cid = authorization = None
        signed: list[str | None] = [None, None, None]  # webhook-id, -timestamp, -signature
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"content-length":
                length = value
            elif name == b"x-correlation-id":
                cid = value.decode("latin-1")
            elif name == b"authorization":
                authorization = value.decode("latin-1")
            elif name.startswith(b"webhook-"):
                at = _SIGNED_HEADERS.get(name)
                if at is not None:
                    signed[at] = value.decode("latin-1")
        correlation_id = correlation_id_from(cid)
        try:
            allowed: frozenset[str] | None = None
            refused: Answer | None = None
            key: ApiKey | None = None
            if (auth := self.auth) is not None:
                if authorization is None:  # no await for a request that sends no key
                    decision = auth.keyless
                else:
                    known = source if source in SOURCE_NAMES else None  # else a 404 follows
                    decision = await auth.check(authorization, WEBHOOK_SCOPE, known)
                if decision.allowed:
                    allowed = decision.sources
                    key = decision.key
                else:
                    refused = Answer(decision.status, {"error": decision.error}, decision.headers)
            take_events = None
            limits = self.limits
            # Without a key and with no limit by address, there is nothing to take.
            if refused is None and limits is not None and (key is not None or limits.anonymous):
                client = scope.get("client")
                address = client[0] if client else "unknown"
                limited = limits.take_request(key, address)
                if limited is not None:
                    refused = _rate_limited(limited)
                else:
                    take_events = _events_taker(limits, key, address)
            answer = refused or await self._answer(
                receive,
                content_type,
                length,
                source,
                correlation_id,
                allowed,
                signed,
                take_events,
            )
        except _Disconnected:
            return
        except Exception:
            log.exception("unhandled error", extra={"correlation_id": correlation_id})
            answer = Answer(500, {"error": "internal error"}, {})
        payload = json_bytes(answer.body)
        headers = [
            *_JSON_HEADERS,
            (b"content-length", b"%d" % len(payload)),
            (b"x-correlation-id", correlation_id.encode("latin-1")),
        ]
        for name, value in answer.headers.items():
            headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        self._timer(rule, answer.status).observe(time.perf_counter() - started)

    async def _answer(
        self,
        receive: Receive,
        content_type: str | None,
        length: bytes | None,
        source: str | None,
        correlation_id: str,
        allowed_sources: frozenset[str] | None,
        signed: list[str | None],
        take_events: Callable[[int], Limited | None] | None = None,
    ) -> Answer:
        ingest = self.ingest
        now = loop_time
        arrived = now()
        if source is not None and source not in SOURCE_NAMES:
            return unknown_source(source)
        await ingest.look_at_backlog()
        refusal = ingest.refusal(draining=self.health.draining)
        if refusal is not None:
            return refusal
        if not is_json(content_type):
            return unsupported_type(content_type)
        if length is not None and length.isdigit() and int(length) > self._limit:
            return too_large(self._limit)
        reading = now()
        try:
            body = await self._read_body(receive)
        except _TooLarge:
            return too_large(self._limit)
        unsigned: frozenset[str] | None = None
        if ingest.signatures is not None:
            verdict = ingest.signatures.check(source, body, *signed)
            if verdict.error is not None:
                return Answer(401, {"error": verdict.error}, {})
            unsigned = verdict.unsigned
        # Answered within the publish timeout of the request's arrival, not counting the
        # time the client took to send its body.
        deadline = arrived + ingest.settings.publish_timeout + (now() - reading)
        return await ingest.handle(
            body,
            route_source=source,
            correlation_id=correlation_id,
            deadline=deadline,
            allowed_sources=allowed_sources,
            unsigned_sources=unsigned,
            take_events=take_events,
        )

    async def _read_body(self, receive: Receive) -> bytes:
        """The whole body; raises _TooLarge past the limit, _Disconnected when the client
        has gone (or the HTTP server cut it off: the body timeout is its business)."""
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > self._limit:
                    raise _TooLarge
                parts.append(chunk)
            if not message.get("more_body", False):
                break
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _timer(self, rule: str, status: int) -> Any:
        timer = self._timers.get((rule, status))
        if timer is None:
            timer = self.ingest.metrics.http_request_duration.labels(rule, "POST", status)
            self._timers[rule, status] = timer
        return timer


def front(app: Any) -> Any:
    """What the HTTP server should serve: the lean webhook in front when `app` takes events."""
    extensions = getattr(app, "extensions", None)
    if not isinstance(extensions, dict):
        return app
    ingest, health = extensions.get("sluice.ingest"), extensions.get("sluice.health")
    if isinstance(ingest, Ingest) and health is not None:
        return WebhookFront(
            app,
            ingest,
            health,
            extensions.get("sluice.auth"),
            extensions.get("sluice.ratelimit"),
        )
    return app
