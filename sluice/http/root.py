"""`GET /`: where to go from here, for a person who opened the bare address."""

from __future__ import annotations

from quart import Blueprint, Response, current_app, jsonify
from quart_schema import hide

root_routes = Blueprint("root", __name__)

#: Pages and endpoints worth knowing, each listed only when this process serves it.
_LINKS = {
    "docs": ("/docs", "the report endpoints, browsable (OpenAPI: /openapi.json)"),
    "dashboard": ("/dashboard", "the dashboard page"),
    "reports": ("/reports/events", "event counts; the other reports are listed at /docs"),
    "health": ("/health/ready", "readiness: 200 once every dependency answers"),
    "metrics": ("/metrics", "Prometheus metrics"),
}


@root_routes.get("/")
@hide  # a signpost for people, not part of the API
async def index() -> Response:
    served = {rule.rule for rule in current_app.url_map.iter_rules()}
    links = {name: {"href": href, "what": what} for name, (href, what) in _LINKS.items()
             if href in served}  # fmt: skip
    if "sluice.ingest" in current_app.extensions:
        links["webhook"] = {"href": "/webhook", "what": "POST events here (JSON, one or an array)"}
    return jsonify({"service": "sluice", "links": links})
