"""GET /dashboard: charts over the report endpoints for people who would rather look.

The page is static: `static/dashboard.html`, its CSS and our own script, which reads the
same JSON report endpoints any client reads (/reports/*) and draws SVG. Nothing is loaded
from another host (the Content-Security-Policy says so to the browser), so it works on a
machine with no internet. Scope `report` guards it like the reports once keys exist: it is
a plain route on `dashboard_routes`.
"""

from __future__ import annotations

import functools
from importlib.resources import files

from quart import Blueprint, Response
from quart_schema import hide

__all__ = ["dashboard_routes"]

dashboard_routes = Blueprint("dashboard", __name__)

_ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}

# Same origin only: the page, its assets and the report endpoints it fetches.
_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@functools.cache
def _static(name: str) -> bytes:
    return files("sluice.http").joinpath("static", name).read_bytes()


@dashboard_routes.get("/dashboard")
@hide
async def dashboard() -> Response:
    return Response(
        _static("dashboard.html"),
        200,
        content_type="text/html; charset=utf-8",
        headers={"Content-Security-Policy": _POLICY, "Cache-Control": "no-cache"},
    )


@dashboard_routes.get("/dashboard/static/<name>")
@hide
async def asset(name: str) -> Response:
    if name not in _ASSETS:
        return Response(b'{"error": "not found"}', 404, content_type="application/json")
    return Response(
        _static(name), 200, content_type=_ASSETS[name], headers={"Cache-Control": "no-cache"}
    )
