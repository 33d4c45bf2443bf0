"""Which scope each route needs, and the Quart hook that checks it.

Public: `/`, `/health/*`, `/docs`, `/docs/assets/*`, `/openapi.json`, and `/metrics`
unless SLUICE_METRICS_AUTH (then scope admin). The webhook (POST /webhook, /events,
/webhook/<source>) needs `ingest` and is checked by `sluice.http.front` before its body
is read; the reports, GET /events, GET /events/<id> and the dashboard need `report`; any
other route needs `admin`, so a route added without a rule here is never left open.
The dashboard's 401 also challenges for HTTP Basic, so a browser asks its user for the key.

Rate limits (`sluice.ratelimit`): every route but /health/* and /metrics takes a request
token of the request's key, or of its client address when it has none (public routes do
not look at keys); over the limit, 429 with Retry-After and RateLimit-* headers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quart import Response, request

from sluice.http.errors import json_bytes

if TYPE_CHECKING:
    from quart import Quart

    from sluice.auth import Authenticator, Decision
    from sluice.ports import ApiKey
    from sluice.ratelimit import Limited, RateLimiter

__all__ = [
    "BROWSER_CHALLENGE",
    "UNLIMITED",
    "WEBHOOK_SCOPE",
    "install_access",
    "rate_limited",
    "refusal",
    "scope_for",
]

WEBHOOK_SCOPE = "ingest"
BROWSER_CHALLENGE = 'Basic realm="sluice", charset="UTF-8"'
PUBLIC = frozenset(
    {"/", "/health/live", "/health/ready", "/docs", "/docs/assets/<name>", "/openapi.json"}
)
REPORT_RULES = frozenset({"/events", "/events/<eventId>", "/dashboard"})
UNLIMITED = frozenset({"/health/live", "/health/ready", "/metrics"})  # never rate limited


def scope_for(method: str, rule: str, *, metrics_auth: bool = False) -> str | None:
    """The scope a request to the route `rule` (Quart's spelling, `<name>` parameters)
    needs; None when the route is public."""
    if rule in PUBLIC or method == "OPTIONS":
        return None
    if rule == "/metrics":
        return "admin" if metrics_auth else None
    if method == "POST" and rule in ("/webhook", "/events", "/webhook/<source>"):
        return WEBHOOK_SCOPE
    if rule in REPORT_RULES or rule.startswith(("/reports/", "/dashboard/")):
        return "report"
    return "admin"


def refusal(decision: Decision) -> Response:
    """The 401/403/503 answer for a refused request, `{"error"}` naming the problem."""
    return Response(
        json_bytes({"error": decision.error}),
        decision.status,
        headers=decision.headers,
        content_type="application/json",
    )


def rate_limited(limited: Limited) -> Response:
    """The 429 answer of a request over its rate limit."""
    return Response(
        json_bytes({"error": limited.error}),
        429,
        headers=limited.headers(),
        content_type="application/json",
    )


def install_access(
    app: Quart,
    auth: Authenticator | None,
    *,
    metrics_auth: bool,
    limits: RateLimiter | None = None,
) -> None:
    """Check every request to `app`'s routes before it is served: its key (with `auth`),
    then its rate limit (with `limits`)."""

    @app.before_request
    async def check_key() -> Response | None:
        rule = request.url_rule
        if rule is None:
            return None  # no such route: 404 (or 405) as without keys
        key: ApiKey | None = None
        scope = scope_for(request.method, rule.rule, metrics_auth=metrics_auth)
        if scope is not None and auth is not None:
            decision = await auth.check(request.headers.get("Authorization"), scope)
            if not decision.allowed:
                answer = refusal(decision)
                if decision.status == 401 and rule.rule.startswith("/dashboard"):
                    # A browser cannot send a Bearer token when opening a page: asked for
                    # Basic, it prompts, and its user gives the key as the password.
                    # One challenge per header line: browsers read only the first of a list.
                    answer.headers.add("WWW-Authenticate", BROWSER_CHALLENGE)
                return answer
            key = decision.key
        if limits is None or rule.rule in UNLIMITED:
            return None
        limited = limits.take_request(key, request.remote_addr or "unknown")
        return None if limited is None else rate_limited(limited)
