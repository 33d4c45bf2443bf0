"""Which scope each route needs, and the Quart hook that checks it.

Public: `/`, `/health/*`, `/docs`, `/docs/assets/*`, `/openapi.json`, and `/metrics`
unless SLUICE_METRICS_AUTH (then scope admin). The webhook (POST /webhook, /events,
/webhook/<source>) needs `ingest` and is checked by `sluice.http.front` before its body
is read; the reports, GET /events, GET /events/<id> and the dashboard need `report`; any
other route needs `admin`, so a route added without a rule here is never left open.
The dashboard's 401 also challenges for HTTP Basic, so a browser asks its user for the key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quart import Response, request

from sluice.http.errors import json_bytes

if TYPE_CHECKING:
    from quart import Quart

    from sluice.auth import Authenticator, Decision

__all__ = ["BROWSER_CHALLENGE", "WEBHOOK_SCOPE", "install_access", "refusal", "scope_for"]

WEBHOOK_SCOPE = "ingest"
BROWSER_CHALLENGE = 'Basic realm="sluice", charset="UTF-8"'
PUBLIC = frozenset(
    {"/", "/health/live", "/health/ready", "/docs", "/docs/assets/<name>", "/openapi.json"}
)
REPORT_RULES = frozenset({"/events", "/events/<eventId>", "/dashboard"})


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


def install_access(app: Quart, auth: Authenticator, *, metrics_auth: bool) -> None:
    """Check every request to `app`'s routes before it is served."""

    @app.before_request
    async def check_key() -> Response | None:
        rule = request.url_rule
        if rule is None:
            return None  # no such route: 404 (or 405) as without keys
        scope = scope_for(request.method, rule.rule, metrics_auth=metrics_auth)
        if scope is None:
            return None
        decision = await auth.check(request.headers.get("Authorization"), scope)
        if decision.allowed:
            return None
        answer = refusal(decision)
        if decision.status == 401 and rule.rule.startswith("/dashboard"):
            # A browser cannot send a Bearer token when opening a page: asked for Basic,
            # it prompts, and its user gives the key as the password.
            # One challenge per header line: browsers read only the first of a list.
            answer.headers.add("WWW-Authenticate", BROWSER_CHALLENGE)
        return answer
