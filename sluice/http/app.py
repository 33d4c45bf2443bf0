"""The Quart app factory: webhook, reports, docs, health and metrics on one app."""

from __future__ import annotations

import time
from dataclasses import dataclass

from quart import Quart, Response, g, request

from sluice.auth import Authenticator
from sluice.config import Settings
from sluice.http.access import install_access
from sluice.http.dashboard import dashboard_routes
from sluice.http.docs import install_docs
from sluice.http.errors import install_error_handlers
from sluice.http.health import Health, health_routes
from sluice.http.reports import Reports, report_routes
from sluice.http.root import root_routes
from sluice.http.webhook import (
    CORRELATION_HEADER,
    Ingest,
    correlation_id_from,
    new_correlation_id,
)
from sluice.metrics import CONTENT_TYPE_LATEST, Metrics
from sluice.ports import EventLog
from sluice.ratelimit import RateLimiter
from sluice.reports import ReportStore


@dataclass
class HttpDeps:
    settings: Settings
    metrics: Metrics
    health: Health
    event_log: EventLog | None = None  # None: this process takes no events (reports role)
    reports: ReportStore | None = None  # None: this process serves no reports
    auth: Authenticator | None = None  # None: no API keys checked at all
    limits: RateLimiter | None = None  # None: no rate limits at all


def create_app(deps: HttpDeps) -> Quart:
    app = Quart("sluice")
    app.config["MAX_CONTENT_LENGTH"] = deps.settings.max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = True
    app.extensions["sluice.health"] = deps.health
    app.extensions["sluice.metrics"] = deps.metrics
    if deps.auth is not None:
        app.extensions["sluice.auth"] = deps.auth
    if deps.limits is not None:
        app.extensions["sluice.ratelimit"] = deps.limits
    if deps.event_log is not None:
        # Served by sluice.http.front.WebhookFront, in front of this app.
        app.extensions["sluice.ingest"] = Ingest(deps.event_log, deps.settings, deps.metrics)
    if deps.reports is not None:
        app.extensions["sluice.reports"] = Reports(deps.reports, deps.metrics)
        app.register_blueprint(report_routes)
        app.register_blueprint(dashboard_routes)
    app.register_blueprint(health_routes)
    app.register_blueprint(root_routes)
    install_error_handlers(app)
    install_docs(app)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(deps.metrics.exposition(), 200, content_type=CONTENT_TYPE_LATEST)

    @app.before_request
    async def start_request() -> None:
        g.started = time.perf_counter()
        g.correlation_id = correlation_id_from(request.headers.get(CORRELATION_HEADER))

    if deps.auth is not None or deps.limits is not None:
        # after start_request: refusals are timed and correlated
        install_access(app, deps.auth, metrics_auth=deps.settings.metrics_auth, limits=deps.limits)

    @app.after_request
    async def finish_request(response: Response) -> Response:
        response.headers[CORRELATION_HEADER] = g.get("correlation_id") or new_correlation_id()
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        deps.metrics.http_request_duration.labels(
            rule, request.method, response.status_code
        ).observe(elapsed)
        return response

    return app
