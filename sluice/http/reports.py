"""GET /reports/* and GET /events[/<eventId>]: the analytics API (README "Reports").

Every answer is JSON. Query parameters are declared by the Structs in
`sluice.reports._params` (which the OpenAPI document is generated from); a bad one is
400 `{"error", "field"}`, an unreachable database 503 with Retry-After. Each call is timed
into `report_duration_seconds{report}`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from quart import Blueprint, Response, current_app, request
from quart_schema import document_querystring, document_response, tag

from sluice.config import mask_secrets
from sluice.http.errors import json_bytes
from sluice.metrics import Metrics
from sluice.ports import StoreUnavailable
from sluice.reports import (
    AccountQuery,
    AccountSummary,
    BadParam,
    CountriesQuery,
    CountryRow,
    DemographicsReport,
    ErrorBody,
    EventListQuery,
    EventPage,
    EventsQuery,
    EventsReport,
    Extent,
    FunnelReport,
    RangeQuery,
    ReportStore,
    RevenueQuery,
    RevenueReport,
    Scope,
    TopItem,
    TopQuery,
    TypeCount,
    build,
    parse,
)
from sluice.sources import SOURCE_NAMES

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import msgspec

__all__ = ["Reports", "report_routes"]

S = TypeVar("S", bound="msgspec.Struct")

report_routes = Blueprint("reports", __name__)

RETRY_AFTER = "1"


@dataclass
class Reports:
    store: ReportStore
    metrics: Metrics


def _json(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status, headers=headers, content_type="application/json")


def _bad(exc: BadParam) -> Response:
    return _json(json_bytes({"error": exc.message, "field": exc.field}), 400)


async def _answer(name: str, make: Callable[[Reports], Awaitable[Any]]) -> Response:
    """Run report `name`: BadParam -> 400, StoreUnavailable -> 503.

    Timed into report_duration_seconds{report=name}, except when the parameters were bad
    (nothing ran).
    """
    reports: Reports = current_app.extensions["sluice.reports"]
    started = time.perf_counter()
    timed = True
    try:
        body = await make(reports)
    except BadParam as exc:
        timed = False
        return _bad(exc)
    except StoreUnavailable as exc:
        return _json(
            json_bytes({"error": f"reports unavailable, try again: {mask_secrets(str(exc))}"}),
            503,
            {"Retry-After": RETRY_AFTER},
        )
    finally:
        if timed:
            elapsed = time.perf_counter() - started
            reports.metrics.report_duration.labels(name).observe(elapsed)
    if isinstance(body, Response):
        return body
    return _json(body if isinstance(body, bytes) else json_bytes(body))


def _args(struct: type[S]) -> S:
    return parse(struct, request.args)


def _scope(q: RangeQuery, **extra: Any) -> Scope:
    return Scope(q.from_, q.to, q.sources, **extra)


_ERRORS = (document_response(ErrorBody, 400), document_response(ErrorBody, 503))


def _documented(query: Any, response: Any) -> Callable[[Any], Any]:
    def decorate(func: Any) -> Any:
        if query is not None:
            func = document_querystring(query)(func)
        func = document_response(response)(func)
        func = tag(["events" if query in (None, EventListQuery) else "reports"])(func)
        for doc in _ERRORS:
            func = doc(func)
        return func

    return decorate


# --- reports ---------------------------------------------------------------------------


@report_routes.get("/reports/events")
@_documented(EventsQuery, EventsReport)
async def events_report() -> Response:
    """Event counts, grouped (and over time with `interval`)."""

    async def make(r: Reports) -> Any:
        q = _args(EventsQuery)
        scope = _scope(q, funnel_stage=q.funnel_stage, event_type=q.event_type)
        totals = await r.store.totals(scope, interval=q.interval, campaigns=False)
        return build.events(q, totals)

    return await _answer("events", make)


@report_routes.get("/reports/revenue")
@_documented(RevenueQuery, RevenueReport)
async def revenue_report() -> Response:
    """Revenue: purchaseAmount of facebook checkout.complete and tiktok purchase events.

    Events with no amount are not transactions. With `campaignId`, only that campaign's
    (facebook) events count.
    """

    async def make(r: Reports) -> Any:
        q = _args(RevenueQuery)
        scope = _scope(q, campaign_id=q.campaign_id)
        totals = await r.store.totals(scope, interval=q.interval, campaigns=True)
        return build.revenue(totals, interval=q.interval)

    return await _answer("revenue", make)


@report_routes.get("/reports/demographics")
@_documented(RangeQuery, DemographicsReport)
async def demographics_report() -> Response:
    """Who acted: breakdowns count events by the acting user's attribute on the event.

    `users` is the exact number of distinct userIds. tiktok countries come from top-funnel
    events' engagement.country; events without one are not counted there.
    """

    async def make(r: Reports) -> Any:
        q = _args(RangeQuery)
        audience = await r.store.audience(_scope(q))
        return build.demographics(audience, q.sources)

    return await _answer("demographics", make)


@report_routes.get("/reports/funnel")
@_documented(RangeQuery, FunnelReport)
async def funnel_report() -> Response:
    """Top- and bottom-funnel counts and the conversion rate (bottom / top)."""

    async def make(r: Reports) -> Any:
        q = _args(RangeQuery)
        totals = await r.store.totals(_scope(q), interval=None, campaigns=False)
        return build.funnel(totals)

    return await _answer("funnel", make)


@report_routes.get("/reports/countries")
@_documented(CountriesQuery, list[CountryRow])
async def countries_report() -> Response:
    """Events and revenue per country, most events first (ties by country)."""

    async def make(r: Reports) -> Any:
        q = _args(CountriesQuery)
        totals = await r.store.totals(_scope(q), interval=None, campaigns=False)
        return build.countries(totals, q.limit)

    return await _answer("countries", make)


@report_routes.get("/reports/top")
@_documented(TopQuery, list[TopItem])
async def top_report() -> Response:
    """The top campaigns, users or videos by event count or revenue.

    By revenue, only those with a transaction are ranked. Ties: the other measure, then
    source, then id. Users and videos are per source (the same id on two platforms is
    two entries).
    """

    async def make(r: Reports) -> Any:
        q = _args(TopQuery)
        if q.entity == "campaigns":
            totals = await r.store.totals(_scope(q), interval=None, campaigns=True)
            return build.top_campaigns(totals.campaigns, by=q.by, limit=q.limit)
        entity = "user" if q.entity == "users" else "video"
        rows = await r.store.top(_scope(q), entity=entity, by=q.by, limit=q.limit)
        return build.top_entities(rows, entity=entity, by=q.by)

    return await _answer("top", make)


@report_routes.get("/reports/accounts/<accountId>/summary")
@_documented(AccountQuery, AccountSummary)
async def account_summary(accountId: str) -> Response:
    """One account's generic events over the last 24 hours: counts by type, active users."""

    async def make(r: Reports) -> Any:
        if "\x00" in accountId:
            raise BadParam("accountId", "must not contain U+0000")
        q = _args(AccountQuery)
        lo, hi = q.window(datetime.now(UTC))
        totals = await r.store.account(accountId, lo, hi)
        return AccountSummary(
            account_id=accountId,
            from_=lo,
            to=hi,
            total=sum(totals.by_type.values()),
            active_users=totals.active_users,
            by_type=[
                TypeCount(type=t, count=n)
                for t, n in sorted(totals.by_type.items(), key=lambda kv: (-kv[1], kv[0]))
            ],
        )

    return await _answer("account_summary", make)


@report_routes.get("/reports/extent")
@_documented(None, Extent)
async def extent_report() -> Response:
    """The timestamps of the first and last stored event (of any source); null when none."""

    async def make(r: Reports) -> Any:
        first, last = await r.store.extent()
        return Extent(first=first, last=last)

    return await _answer("extent", make)


# --- stored events ---------------------------------------------------------------------


@report_routes.get("/events/<eventId>")
@document_response(ErrorBody, 404)
@_documented(None, dict[str, Any])
async def get_event(eventId: str) -> Response:
    """One stored event, as the publisher sent it, plus `receivedAt`; 404 when unknown."""

    async def make(r: Reports) -> Any:
        found = None if "\x00" in eventId else await r.store.event(eventId)
        if found is None:
            return _json(json_bytes({"error": f"no event {eventId!r}"}), 404)
        return found

    return await _answer("event", make)


@report_routes.get("/events")
@_documented(EventListQuery, EventPage)
async def list_events() -> Response:
    """Stored events in (timestamp, eventId) order, a page at a time (keyset pagination).

    Pass `nextCursor` back as `cursor` for the next page (with the same filters); it is
    null on the last page. Pages never repeat or skip an event stored before paging began,
    whatever is inserted meanwhile.
    """

    async def make(r: Reports) -> Any:
        q = _args(EventListQuery)
        after = build.decode_cursor(q.cursor) if q.cursor is not None else None
        page = await r.store.events(
            sources=(q.source,) if q.source else SOURCE_NAMES,
            event_type=q.event_type,
            lo=q.from_,
            hi=q.to,
            after=after,
            limit=q.limit + 1,  # one more tells whether there is a next page
        )
        more = len(page) > q.limit
        page = page[: q.limit]
        cursor = None
        if more:
            last = page[-1]
            cursor = build.encode_cursor(last.occurred_at, last.event_id)
        return (
            b'{"events":['
            + b",".join(e.json for e in page)
            + b'],"nextCursor":'
            + json_bytes(cursor)
            + b"}"
        )

    return await _answer("events_list", make)
