"""The OpenAPI description of the routes Quart does not serve itself.

The webhook (POST /webhook, /events, /webhook/{source}) is answered by the ASGI front
(`sluice.http.front`), so quart-schema cannot see it; its path items are built here from
the same msgspec Structs the validator decodes with, and added to the generated
document. /health/live, /health/ready and /metrics are Quart routes whose answers are
described here too.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from msgspec.json import schema_components

from sluice.http.access import scope_for
from sluice.signing import TOLERANCE
from sluice.sources import SCHEMAS, SOURCE_NAMES, SourceSchema

__all__ = ["describe_unseen_routes"]

_REF = "#/components/schemas/{name}"


class RejectedEvent(msgspec.Struct):
    """An event that was not accepted, and why."""

    index: int  # its position in the body (0 for a single object)
    eventId: str | None  # as sent, when it could be read
    error: str  # "<dotted.field.path>: <what is wrong>"


class WebhookAnswer(msgspec.Struct):
    """What happened to each event of the body: accepted ones are durable in JetStream."""

    accepted: int
    duplicates: int
    rejected: list[RejectedEvent]


class WebhookError(msgspec.Struct):
    """The request as a whole was not taken; nothing of it was stored."""

    error: str


class Live(msgspec.Struct):
    """Liveness: the process and its supervisor."""

    status: str  # "ok" or "down"
    supervisor: str  # "running", "draining" or "stopped"
    actors: dict[str, bool]  # per supervised actor: running


class Check(msgspec.Struct, omit_defaults=True):
    ok: bool
    error: str | None = None


class Ready(msgspec.Struct):
    """Readiness: every check of this process's role, and whether it is draining."""

    status: str  # "ready" or "not ready"
    checks: dict[str, Check]


_CORRELATION = {
    "description": "The request's correlation id: the one sent, or a new one. It is carried "
    "with the events into JetStream and stored on each row.",
    "required": True,
    "schema": {"type": "string"},
}
_RETRY_AFTER = {
    "description": "Seconds to wait before retrying.",
    "required": True,
    "schema": {"type": "integer"},
}
_ONLY_RATE_LIMITED = " Only when the rate limit refused the request."
# draft-ietf-httpapi-ratelimit-headers: the bucket of the request's API key (or client
# address) that refused it.
RATE_LIMIT_HEADERS: dict[str, dict[str, Any]] = {
    name: {"description": description + _ONLY_RATE_LIMITED, "schema": schema}
    for name, description, schema in (
        (
            "RateLimit-Limit",
            "Tokens a full bucket holds: the rate times SLUICE_RATE_LIMIT_BURST.",
            {"type": "integer"},
        ),
        ("RateLimit-Remaining", "Tokens left now.", {"type": "integer"}),
        ("RateLimit-Reset", "Seconds until the bucket is full again.", {"type": "integer"}),
        (
            "RateLimit-Policy",
            "`<limit>;w=<burst seconds>`, e.g. `200;w=2` for 100/s with a 2 s burst.",
            {"type": "string"},
        ),
    )
}
RATE_LIMITED = (
    "The API key (or, without one, the client address) is over its rate limit "
    "(SLUICE_RATE_LIMIT_REQUESTS, SLUICE_RATE_LIMIT_EVENTS, or the key's own): retry "
    "after Retry-After. Nothing of the request was kept."
)
_ANSWERS: dict[int, tuple[str, str, bool]] = {
    # status: (description, body component, carries Retry-After)
    202: (
        "Some events are valid: every accepted event is stored in JetStream (publish "
        "acknowledged) and will be written to PostgreSQL exactly once; duplicates were "
        "already accepted; the rest are named in `rejected`.",
        "WebhookAnswer",
        False,
    ),
    422: ("Nothing valid (an empty array included): the same body as 202.", "WebhookAnswer", False),
    401: (
        "A signature problem, for a source with a webhook secret (SLUICE_WEBHOOK_SECRETS): "
        "webhook-id, webhook-timestamp or webhook-signature missing, a webhook-timestamp "
        f"more than {TOLERANCE // 60} minutes before or after the server's clock (`webhook-"
        "timestamp too old` / `too new`), or no signature matching one of the source's "
        "secrets (`no webhook-signature matches ...`). On /webhook and /events the headers "
        "are optional, but when sent they must match some source's secret. Nothing of the "
        "request was stored.",
        "WebhookError",
        False,
    ),
    400: ("Malformed JSON, or not an object or an array.", "WebhookError", False),
    404: ("POST /webhook/{source}: an unknown source.", "WebhookError", False),
    408: (
        "The body did not arrive within SLUICE_BODY_TIMEOUT; the connection is closed.",
        "WebhookError",
        False,
    ),
    413: ("The body is over the size limit (SLUICE_MAX_BODY_BYTES).", "WebhookError", False),
    415: ("The content type is not JSON.", "WebhookError", False),
    431: (
        "The request line and headers are over 16 KiB; the connection is closed.",
        "WebhookError",
        False,
    ),
    429: (
        "Too much waits to be written (the backlog limits), or the API key (or, without "
        "one, the client address) is over its rate limit: retry after Retry-After; nothing "
        "of the request was kept. Each event of a body takes a token, valid or not; a body "
        "of more events than a full bucket holds is refused at any time (send smaller "
        "arrays).",
        "WebhookError",
        True,
    ),
    503: (
        "NATS has not acked the events within SLUICE_PUBLISH_TIMEOUT of the request's "
        "arrival, the process is draining, or more requests than admitted are in flight: "
        "nothing of the request was accepted; retry after Retry-After.",
        "WebhookError",
        True,
    ),
}


def describe_unseen_routes(document: dict[str, Any]) -> None:
    """Add the webhook's path items (and the ops routes' answers) to `document`."""
    events, components = _event_schemas()
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(components)
    paths = document.setdefault("paths", {})
    one_or_many = {"oneOf": [events, {"type": "array", "items": events}]}
    for path, summary in (
        ("/webhook", "Send events (one object or an array); each names its `source`."),
        ("/events", "The same as POST /webhook."),
    ):
        paths.setdefault(path, {})["post"] = _webhook_operation(
            summary, one_or_many, operation_id=f"post{path.title().replace('/', '')}"
        )
    paths["/webhook/{source}"] = {
        "post": _webhook_operation(
            "Send events of one source (generic events come here, as an array); "
            "every event's `source`, where it has one, must match.",
            one_or_many,
            operation_id="postWebhookSource",
            parameters=[
                {
                    "name": "source",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "enum": list(SOURCE_NAMES)},
                }
            ],
        )
    }
    _describe_ops(paths, schemas)
    _describe_security(document)


_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
BEARER = (
    "An API key, made with `sluice keys create`, sent as `Authorization: Bearer <key>`. "
    "Required on every route but /health/*, /metrics, /docs, /openapi.json and / in the "
    "staging and prod profiles (SLUICE_AUTH=required); in dev a request without one is "
    "served, but a key that is sent must be valid. Scopes: `ingest` (webhook), `report` "
    "(reports, events, dashboard), `admin` (everything)."
)


def _describe_security(document: dict[str, Any]) -> None:
    """The bearer scheme, and on each protected operation its 401 and 403 answers."""
    components = document.setdefault("components", {})
    components.setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": BEARER,
    }
    error = {"application/json": {"schema": {"$ref": _REF.format(name="WebhookError")}}}
    for path, item in document.get("paths", {}).items():
        rule = re.sub(r"\{([^}]+)\}", r"<\1>", path)
        for method, operation in item.items():
            scope = scope_for(method.upper(), rule) if method in _METHODS else None
            if scope is None:
                continue
            operation["security"] = [{"bearer": []}]
            # quart-schema keys its answers by int: one spelling, as JSON has it, for all
            responses = {
                str(code): answer for code, answer in operation.get("responses", {}).items()
            }
            operation["responses"] = responses
            unauthorized = (
                "No API key (where one is required), or a malformed, unknown or revoked "
                "one: carries `WWW-Authenticate: Bearer`."
            )
            signature = responses.get("401")  # the webhook's: a signature problem
            if signature is not None:
                unauthorized += " Or (without that header) " + signature["description"]
            responses["401"] = {
                "description": unauthorized,
                "headers": {
                    **(signature or {}).get("headers", {}),
                    "WWW-Authenticate": {
                        "description": "`Bearer`, on an API key refusal only.",
                        "schema": {"type": "string"},
                    },
                },
                "content": error,
            }
            limits = " or may not send events of this source" if scope == "ingest" else ""
            responses["403"] = {
                "description": f"The API key lacks the `{scope}` scope{limits}.",
                "content": error,
            }
            responses.setdefault(
                "429",
                {
                    "description": RATE_LIMITED,
                    "headers": {"Retry-After": _RETRY_AFTER, **RATE_LIMIT_HEADERS},
                    "content": error,
                },
            )


_SIGNED_ONLY = (
    "Standard Webhooks signature header. Required for a source with a webhook secret "
    "(SLUICE_WEBHOOK_SECRETS; on /webhook and /events, for its events to be accepted)."
)
_SIGNATURE_HEADERS = [
    {
        "name": "webhook-id",
        "in": "header",
        "required": False,
        "description": f"{_SIGNED_ONLY} A unique id per message (a retry may keep it).",
        "schema": {"type": "string"},
    },
    {
        "name": "webhook-timestamp",
        "in": "header",
        "required": False,
        "description": f"{_SIGNED_ONLY} When it was signed, in Unix seconds; refused "
        f"(401) when more than {TOLERANCE} seconds from the server's clock either way.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    {
        "name": "webhook-signature",
        "in": "header",
        "required": False,
        "description": f"{_SIGNED_ONLY} Space-separated `v1,<base64 HMAC-SHA256 of "
        "webhook-id.webhook-timestamp.body>` signatures, keyed with the base64-decoded "
        "part of a `whsec_` secret; one matching the source's secrets is enough.",
        "schema": {"type": "string"},
    },
]


def _webhook_operation(
    summary: str,
    body: dict[str, Any],
    *,
    operation_id: str,
    parameters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, (description, component, retry) in _ANSWERS.items():
        if status == 404 and not parameters:
            continue
        headers = {"X-Correlation-ID": _CORRELATION}
        if retry:
            headers["Retry-After"] = _RETRY_AFTER
        if status == 429:
            headers.update(RATE_LIMIT_HEADERS)
        responses[str(status)] = {
            "description": description,
            "headers": headers,
            "content": {"application/json": {"schema": {"$ref": _REF.format(name=component)}}},
        }
    return {
        "tags": ["webhook"],
        "summary": summary,
        "operationId": operation_id,
        "parameters": [
            *(parameters or []),
            {
                "name": "X-Correlation-ID",
                "in": "header",
                "required": False,
                "description": "An id of your own for this request (at most 128 printable "
                "ASCII characters); one is made when absent.",
                "schema": {"type": "string", "maxLength": 128},
            },
            *_SIGNATURE_HEADERS,
        ],
        "requestBody": {
            "required": True,
            "description": "One event object or a JSON array of them (facebook, tiktok or "
            "generic). Invalid events are rejected one by one; the valid ones are accepted.",
            "content": {"application/json": {"schema": body}},
        },
        "responses": responses,
    }


def _event_schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    """The schema of one event (any source) and the components it refers to."""
    structs: list[Any] = [WebhookAnswer, WebhookError, Live, Ready]
    for schema in SCHEMAS.values():
        structs.append(schema.event)
        structs.extend(schema.engagement.values())
    refs, components = schema_components(structs, ref_template=_REF)
    by_struct = dict(zip(structs, refs, strict=True))
    variants = []
    for schema in SCHEMAS.values():
        name = _component_name(by_struct[schema.event])
        if schema.tagged:
            components[name] = _with_stages(components[name], schema, by_struct)
        variants.append({"$ref": _REF.format(name=name)})
    return {"oneOf": variants}, components


def _with_stages(
    event: dict[str, Any], schema: SourceSchema, refs: dict[Any, dict[str, Any]]
) -> dict[str, Any]:
    """A tagged event's schema, with its event types and engagement spelled out per stage
    (the decoder reads `data.engagement` once it knows the stage)."""
    event = dict(event)
    properties = dict(event["properties"])
    types = sorted(t for stage in schema.event_types.values() for t in stage)
    properties["eventType"] = {
        "type": "string",
        "enum": types,
        "description": "; ".join(
            f"{stage}: {', '.join(sorted(schema.event_types[stage]))}"
            for stage in sorted(schema.event_types)
        ),
    }
    event["properties"] = properties
    event["description"] = (
        f"A {schema.name} event. `data.engagement` follows the funnel stage: "
        + "; ".join(
            f"{stage}: {_component_name(refs[struct])}"
            for stage, struct in sorted(schema.engagement.items())
        )
        + "."
    )
    return event


def _component_name(ref: dict[str, Any]) -> str:
    return str(ref["$ref"]).rsplit("/", 1)[1]


def _describe_ops(paths: dict[str, Any], schemas: dict[str, Any]) -> None:
    def json_answer(description: str, component: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": _REF.format(name=component)}}},
        }

    live = paths.setdefault("/health/live", {}).setdefault("get", {})
    live.update(
        tags=["operations"],
        summary="Liveness: 200 while the process and its supervisor run (also while draining).",
        responses={
            "200": json_answer("Running or draining.", "Live"),
            "503": json_answer("The supervisor has stopped.", "Live"),
        },
    )
    ready = paths.setdefault("/health/ready", {}).setdefault("get", {})
    ready.update(
        tags=["operations"],
        summary="Readiness: 200 when every check of this role passes and it is not draining.",
        responses={
            "200": json_answer("Ready: send traffic.", "Ready"),
            "503": json_answer("Not ready: the failing checks are named.", "Ready"),
        },
    )
    metrics = paths.setdefault("/metrics", {}).setdefault("get", {})
    metrics.update(
        tags=["operations"],
        summary="Prometheus metrics of this process (text exposition format).",
        responses={
            "200": {
                "description": "The metrics.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    )
