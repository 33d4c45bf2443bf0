"""The report endpoints over a recording fake store: parameters, answers, errors, docs."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from quart import Quart

from sluice.config import Settings
from sluice.http.app import HttpDeps, create_app
from sluice.http.health import Health
from sluice.metrics import Metrics
from sluice.ports import StoreUnavailable
from sluice.reports import (
    AccountTotals,
    Audience,
    AudienceRow,
    CampaignRow,
    EntityTotal,
    GroupRow,
    Scope,
    SeriesRow,
    StoredEvent,
    Totals,
)

pytestmark = pytest.mark.anyio

T0 = datetime(2025, 3, 10, 12, tzinfo=UTC)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Quart runs on asyncio only


@dataclass
class FakeReports:
    """Canned answers; records every call."""

    calls: list[tuple[str, Any]] = field(default_factory=list)
    totals_answer: Totals = field(default_factory=Totals)
    stored: dict[str, bytes] = field(default_factory=dict)
    page: list[StoredEvent] = field(default_factory=list)
    down: bool = False
    extent_answer: tuple[datetime | None, datetime | None] = (None, None)

    def _called(self, name: str, *args: Any) -> None:
        if self.down:
            raise StoreUnavailable("connection refused")
        self.calls.append((name, args))

    async def totals(self, scope: Scope, *, interval: str | None, campaigns: bool) -> Totals:
        self._called("totals", scope, interval, campaigns)
        return self.totals_answer

    async def audience(self, scope: Scope) -> Audience:
        self._called("audience", scope)
        return Audience(
            rows=[
                AudienceRow("facebook", "age", "25-34", None, 3),
                AudienceRow("facebook", "city", "Berlin", "DE", 2),
                AudienceRow("tiktok", "followers", "1k-10k", None, 2, 3000, 1000, 2000),
                AudienceRow("tiktok", "followers", "1M+", None, 1, 2_000_000, 2_000_000, 2_000_000),
            ],
            users={"facebook": 2, "tiktok": 1},
        )

    async def top(self, scope: Scope, *, entity: str, by: str, limit: int) -> list[EntityTotal]:
        self._called("top", scope, entity, by, limit)
        return [EntityTotal("tiktok", "u1", 5, Decimal("10.5"), 1)]

    async def account(self, account_id: str, lo: datetime, hi: datetime) -> AccountTotals:
        self._called("account", account_id, lo, hi)
        return AccountTotals({"login": 2, "signup": 3}, 2)

    async def extent(self) -> tuple[datetime | None, datetime | None]:
        self._called("extent")
        return self.extent_answer

    async def event(self, event_id: str) -> bytes | None:
        self._called("event", event_id)
        return self.stored.get(event_id)

    async def events(self, **kwargs: Any) -> list[StoredEvent]:
        self._called("events", kwargs)
        after = kwargs["after"]
        rows = [e for e in self.page if after is None or (e.occurred_at, e.event_id) > after]
        return rows[: kwargs["limit"]]


@pytest.fixture
def store() -> FakeReports:
    return FakeReports()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def app(store: FakeReports, metrics: Metrics) -> Quart:
    return create_app(HttpDeps(Settings(), metrics, Health(), reports=store))


async def get(app: Quart, path: str, **params: str) -> tuple[int, Any]:
    client = app.test_client()
    response = await client.get(path, query_string=params)
    return response.status_code, await response.get_json()


# --- bad parameters --------------------------------------------------------------------


def _cursor(value: Any) -> str:
    """A cursor as `encode_cursor` shapes them, around any JSON (or text) at all."""
    raw = value.encode() if isinstance(value, str) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


BAD = [
    ("/reports/events", {"from": "yesterday"}, "from"),
    ("/reports/events", {"to": "2025-13-01"}, "to"),
    ("/reports/events", {"from": "2025-03-02", "to": "2025-03-01"}, "to"),
    ("/reports/events", {"source": "myspace"}, "source"),
    ("/reports/events", {"source": "generic"}, "source"),
    ("/reports/events", {"groupBy": "source,city"}, "groupBy"),
    ("/reports/events", {"groupBy": ""}, "groupBy"),
    ("/reports/events", {"interval": "week"}, "interval"),
    ("/reports/events", {"funnelStage": "middle"}, "funnelStage"),
    ("/reports/events", {"eventType": "ad.explode"}, "eventType"),
    ("/reports/revenue", {"campaignId": ""}, "campaignId"),
    ("/reports/demographics", {"from": "0001-01-01T00:00:00+01:00"}, "from"),
    ("/reports/countries", {"limit": "0"}, "limit"),
    ("/reports/countries", {"limit": "1001"}, "limit"),
    ("/reports/countries", {"limit": "9" * 40}, "limit"),
    ("/reports/countries", {"limit": "ten"}, "limit"),
    ("/reports/top", {}, "entity"),
    ("/reports/top", {"entity": "pages"}, "entity"),
    ("/reports/top", {"entity": "users", "by": "likes"}, "by"),
    ("/reports/top", {"entity": "users", "limit": "-1"}, "limit"),
    ("/reports/top", {"entity": "users", "limit": "100000000000"}, "limit"),
    ("/reports/accounts/a1/summary", {"from": "2025-03-02", "to": "2025-03-01"}, "to"),
    ("/events", {"limit": "5000"}, "limit"),
    ("/events", {"cursor": "not-a-cursor"}, "cursor"),
    ("/events", {"source": "myspace"}, "source"),
    ("/events", {"eventType": "a\x00b"}, "eventType"),
    ("/reports/accounts/a%00b/summary", {}, "accountId"),
    # unknown parameters, on every endpoint (a typo must not widen the range silently)
    ("/reports/events", {"form": "2025-03-01"}, "form"),
    ("/reports/revenue", {"campaign": "c1"}, "campaign"),
    ("/reports/demographics", {"limit": "5"}, "limit"),
    ("/reports/funnel", {"source": "tiktok", "interval": "day"}, "interval"),
    ("/reports/countries", {"by": "events"}, "by"),
    ("/reports/top", {"entity": "users", "sort": "revenue"}, "sort"),
    ("/reports/accounts/a1/summary", {"source": "generic"}, "source"),
    ("/events", {"page": "2"}, "page"),
    # crafted cursors
    ("/events", {"cursor": _cursor(["2025-03-01T00:00:00Z", "a\u0000b"])}, "cursor"),
    ("/events", {"cursor": _cursor(["2025-03-01T00:00:00Z", ""])}, "cursor"),
    ("/events", {"cursor": _cursor(["2025-03-01T00:00:00Z", "x" * 300])}, "cursor"),
    ("/events", {"cursor": _cursor(["0001-01-01T00:00:00+01:00", "e1"])}, "cursor"),
    ("/events", {"cursor": _cursor(["9999-12-31T23:59:59-01:00", "e1"])}, "cursor"),
    ("/events", {"cursor": _cursor(["10000-01-01T00:00:00Z", "e1"])}, "cursor"),
    ("/events", {"cursor": _cursor(["2025-03-01T00:00:00Z", "e1", 3])}, "cursor"),
    ("/events", {"cursor": _cursor("[" * 700)}, "cursor"),
    ("/events", {"cursor": "%%%%"}, "cursor"),
    ("/events", {"cursor": "é"}, "cursor"),
    ("/events", {"cursor": "x" * 2049}, "cursor"),
    ("/events", {"cursor": ""}, "cursor"),
]


@pytest.mark.parametrize(("path", "params", "field"), BAD)
async def test_a_bad_parameter_is_400_naming_it(
    app: Quart, store: FakeReports, path: str, params: dict[str, str], field: str
) -> None:
    status, body = await get(app, path, **params)
    assert status == 400
    assert body["field"] == field
    assert isinstance(body["error"], str) and body["error"]
    assert store.calls == []


async def test_parameters_reach_the_store(app: Quart, store: FakeReports) -> None:
    status, _ = await get(
        app,
        "/reports/events",
        **{
            "from": "2025-03-10T14:00:00+02:00",
            "to": "2025-03-11",
            "source": "tiktok",
            "funnelStage": "top",
            "eventType": "like",
            "interval": "hour",
        },
    )
    assert status == 200
    [(name, (scope, interval, campaigns))] = store.calls
    assert name == "totals"
    assert scope == Scope(T0, datetime(2025, 3, 11, tzinfo=UTC), ("tiktok",), "top", "like")
    assert (interval, campaigns) == ("hour", False)


async def test_from_equal_to_is_an_empty_range_not_an_error(app: Quart) -> None:
    status, body = await get(app, "/reports/funnel", **{"from": "2025-03-10", "to": "2025-03-10"})
    assert status == 200
    assert body == {
        "top": 0,
        "bottom": 0,
        "conversionRate": None,
        "bySource": [],
        "byEventType": [],
    }


# --- answers ---------------------------------------------------------------------------


def group(
    source: str, stage: str, etype: str, country: str | None, n: int, rev: str = "0"
) -> GroupRow:
    return GroupRow(source, stage, etype, country, n, Decimal(rev), 1 if rev != "0" else 0)


TOTALS = Totals(
    groups=[
        group("facebook", "top", "ad.view", "US", 5),
        group("facebook", "bottom", "checkout.complete", "US", 2, "10.005"),
        group("facebook", "bottom", "checkout.complete", "DE", 1, "0.1"),
        group("tiktok", "top", "like", "DE", 4),
        group("tiktok", "bottom", "purchase", None, 3, "99999999999999999999.99"),
    ],
    campaigns=[CampaignRow("facebook", "c1", 3, Decimal("10.105"), 2)],
    series=[
        SeriesRow(datetime(2025, 3, 10, 13, tzinfo=UTC), 6, Decimal("0.1"), 1),
        SeriesRow(datetime(2025, 3, 10, 12, tzinfo=UTC), 9, Decimal(0), 0),
    ],
)


async def test_events_report_groups_and_series(app: Quart, store: FakeReports) -> None:
    store.totals_answer = TOTALS
    status, body = await get(app, "/reports/events", groupBy="country,source", interval="hour")
    assert status == 200
    assert body == {
        "total": 15,
        "groups": [
            {"source": "facebook", "country": "US", "count": 7},
            {"source": "tiktok", "country": "DE", "count": 4},
            {"source": "tiktok", "country": None, "count": 3},
            {"source": "facebook", "country": "DE", "count": 1},
        ],
        "series": [
            {"bucket": "2025-03-10T12:00:00Z", "count": 9},
            {"bucket": "2025-03-10T13:00:00Z", "count": 6},
        ],
    }
    status, body = await get(app, "/reports/events")
    assert "series" not in body
    assert body["groups"][0] == {
        "source": "facebook",
        "funnelStage": "top",
        "eventType": "ad.view",
        "count": 5,
    }


async def test_money_is_a_two_place_decimal_string(app: Quart, store: FakeReports) -> None:
    store.totals_answer = TOTALS
    status, body = await get(app, "/reports/revenue")
    assert status == 200
    assert body == {
        "total": "100000000000000000010.10",  # exact: no float on the way
        "transactions": 3,
        "bySource": [
            {"source": "tiktok", "revenue": "99999999999999999999.99", "transactions": 1},
            {"source": "facebook", "revenue": "10.10", "transactions": 2},
        ],
        "byCampaign": [{"campaignId": "c1", "revenue": "10.10", "transactions": 2}],
    }
    _, countries = await get(app, "/reports/countries", limit="1")
    assert countries == [{"country": "US", "events": 7, "revenue": "10.00"}]  # half-even


async def test_demographics_lists_every_bin_and_only_the_asked_source(
    app: Quart, store: FakeReports
) -> None:
    status, body = await get(app, "/reports/demographics", source="tiktok")
    assert status == 200
    assert set(body) == {"tiktok"}
    assert body["tiktok"]["followers"] == {
        "min": 1000,
        "max": 2_000_000,
        "avg": 2_003_000 / 3,
        "buckets": [
            {"range": "0-999", "count": 0},
            {"range": "1k-10k", "count": 2},
            {"range": "10k-100k", "count": 0},
            {"range": "100k-1M", "count": 0},
            {"range": "1M+", "count": 1},
        ],
    }
    _, both = await get(app, "/reports/demographics")
    assert both["facebook"]["users"] == 2
    assert [b["range"] for b in both["facebook"]["age"]] == [
        "<18", "18-24", "25-34", "35-44", "45-54", "55-64", "65+"
    ]  # fmt: skip
    assert both["facebook"]["cities"] == [{"city": "Berlin", "country": "DE", "count": 2}]


async def test_funnel_and_top(app: Quart, store: FakeReports) -> None:
    store.totals_answer = TOTALS
    _, funnel = await get(app, "/reports/funnel")
    assert (funnel["top"], funnel["bottom"], funnel["conversionRate"]) == (9, 6, 6 / 9)
    assert funnel["bySource"][1] == {
        "source": "tiktok", "top": 4, "bottom": 3, "conversionRate": 0.75
    }  # fmt: skip
    _, top = await get(app, "/reports/top", entity="users", by="revenue", limit="5")
    assert top == [
        {"source": "tiktok", "userId": "u1", "events": 5, "revenue": "10.50", "transactions": 1}
    ]
    assert store.calls[-1][1][1:] == ("user", "revenue", 5)
    _, top = await get(app, "/reports/top", entity="campaigns")
    assert top[0]["campaignId"] == "c1"


async def test_extent_is_the_first_and_last_stored_timestamp_or_null(
    app: Quart, store: FakeReports
) -> None:
    assert await get(app, "/reports/extent") == (200, {"first": None, "last": None})
    store.extent_answer = (T0, T0.replace(hour=13, microsecond=250_000))
    assert await get(app, "/reports/extent") == (
        200,
        {"first": "2025-03-10T12:00:00Z", "last": "2025-03-10T13:00:00.250000Z"},
    )


async def test_account_summary_defaults_to_the_last_24_hours(
    app: Quart, store: FakeReports
) -> None:
    status, body = await get(app, "/reports/accounts/acc-9/summary")
    assert status == 200
    [(_, (account, lo, hi))] = store.calls
    assert account == "acc-9"
    assert (hi - lo).total_seconds() == 24 * 3600
    assert body["accountId"] == "acc-9"
    assert body["total"] == 5
    assert body["activeUsers"] == 2
    assert body["byType"] == [{"type": "signup", "count": 3}, {"type": "login", "count": 2}]


async def test_an_event_by_id_or_404(app: Quart, store: FakeReports) -> None:
    store.stored["e1"] = b'{"eventId":"e1","receivedAt":"2025-03-10T12:00:00.000000Z"}'
    status, body = await get(app, "/events/e1")
    assert (status, body["receivedAt"]) == (200, "2025-03-10T12:00:00.000000Z")
    status, body = await get(app, "/events/nope")
    assert status == 404
    assert "nope" in body["error"]
    status, body = await get(app, "/events/a%00b")
    assert status == 404


async def test_event_pages_chain_by_cursor(app: Quart, store: FakeReports) -> None:
    store.page = [StoredEvent(T0, f"e{i}", b'{"eventId":"e%d"}' % i) for i in range(5)]
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(5):
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        status, body = await get(app, "/events", **params)
        assert status == 200
        seen += [e["eventId"] for e in body["events"]]
        cursor = body["nextCursor"]
        if cursor is None:
            break
    assert seen == ["e0", "e1", "e2", "e3", "e4"]


async def test_an_unreachable_database_is_503_and_every_report_is_timed(
    app: Quart, store: FakeReports, metrics: Metrics
) -> None:
    await get(app, "/reports/funnel")
    await get(app, "/reports/funnel", source="nope")  # 400: nothing ran, nothing timed
    store.down = True
    client = app.test_client()
    response = await client.get("/reports/events")
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert (await response.get_json())["error"]
    funnel = metrics.registry.get_sample_value(
        "report_duration_seconds_count", {"report": "funnel"}
    )
    events = metrics.registry.get_sample_value(
        "report_duration_seconds_count", {"report": "events"}
    )
    assert (funnel, events) == (1, 1)


# --- docs --------------------------------------------------------------------------------

DOCUMENTED = [
    "/reports/events",
    "/reports/revenue",
    "/reports/demographics",
    "/reports/funnel",
    "/reports/countries",
    "/reports/top",
    "/reports/accounts/{accountId}/summary",
    "/reports/extent",
    "/events/{eventId}",
    "/events",
]


async def test_openapi_describes_every_endpoint_from_the_code(app: Quart) -> None:
    status, spec = await get(app, "/openapi.json")
    assert status == 200
    assert spec["openapi"].startswith("3.")
    for path in DOCUMENTED:
        assert "get" in spec["paths"][path], path
    events = spec["paths"]["/reports/events"]["get"]
    names = {p["name"] for p in events["parameters"]}
    assert {"from", "to", "source", "funnelStage", "eventType", "groupBy", "interval"} <= names
    schemas = spec["components"]["schemas"]
    ok = events["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/EventsReport"}
    assert {"EventsReport", "EventGroup", "SeriesPoint", "ErrorBody"} <= set(schemas)
    top = spec["paths"]["/reports/top"]["get"]
    assert {"name": "entity", "in": "query", "required": True} | top["parameters"][3] == top[
        "parameters"
    ][3]
    listed = top["responses"]["200"]["content"]["application/json"]["schema"]
    assert listed == {"type": "array", "items": {"$ref": "#/components/schemas/TopItem"}}
    for schema in schemas.values():  # every reference resolves
        for ref in _refs(schema):
            assert ref.rsplit("/", 1)[1] in schemas, ref


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [node["$ref"]] if "$ref" in node else [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


async def test_docs_page_loads_no_script_from_elsewhere(app: Quart) -> None:
    client = app.test_client()
    page = await client.get("/docs")
    assert page.status_code == 200
    html = await page.get_data(as_text=True)
    assert "/docs/assets/swagger-ui-bundle.js" in html
    assert "http://" not in html and "https://" not in html
    script = await client.get("/docs/assets/swagger-ui-bundle.js")
    assert script.status_code == 200
    assert len(await script.get_data()) > 100_000
    css = await client.get("/docs/assets/swagger-ui.css")
    assert css.status_code == 200
    assert (await client.get("/docs/assets/../secret")).status_code == 404


async def test_without_a_report_store_there_are_no_reports() -> None:
    app = create_app(HttpDeps(Settings(), Metrics(), Health()))
    status, _ = await get(app, "/reports/funnel")
    assert status == 404
