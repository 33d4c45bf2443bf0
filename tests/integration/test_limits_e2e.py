"""Every kind of input the store could not hold, through the real webhook into the real
store (nats-server and PostgreSQL from the fixtures, the whole engine): each bad event is
rejected alone with its field named, the good events of the same batch are stored, the
values at the limits are stored and reported, and nothing answers 500.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import httpx
import pytest

from sluice.app import Engine, open_engine
from sluice.config import Settings
from tests.factories import engine_settings, make_event, override

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

RAW = "@@raw@@"
E = "data.engagement."
INT4, INT8 = 2**31 - 1, 2**63 - 1
TS_RANGE = "timestamp: out of range (1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999998Z)"
WIDE = "\U0001f600" * 256  # 1 KiB of UTF-8


@pytest.fixture
def settings(nats_url: str, fresh_database_url: str, nats_prefix: str) -> Settings:
    return engine_settings(nats_url, fresh_database_url, nats_prefix)


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[Engine]:
    async with open_engine(settings) as engine:
        yield engine


def event(event_id: str, source: str, stage: str, **changes: Any) -> dict[str, Any]:
    kind = {"eventType": changes.pop("eventType")} if "eventType" in changes else {}
    made = make_event(source, stage, rng=random.Random(event_id), **kind)
    made["eventId"] = event_id
    made["timestamp"] = "2025-03-10T12:00:00Z"
    for path, value in changes.items():
        override(made, path, value)
    return made


def generic(event_id: str, **changes: Any) -> dict[str, Any]:
    made = {
        "event_id": event_id,
        "account_id": "acc-1",
        "user_id": "u-1",
        "type": "page.view",
        "timestamp": "2025-03-10T12:00:00Z",
        "metadata": {"path": "/pricing"},
    }
    made.update(changes)
    return made


def body_of(items: list[tuple[dict[str, Any], str | None]]) -> bytes:
    """A JSON array of `items`; an item's RAW placeholder becomes the raw JSON given."""
    parts = []
    for item, raw in items:
        text = json.dumps(item, ensure_ascii=False)
        parts.append(text if raw is None else text.replace(json.dumps(RAW), raw))
    return ("[" + ",".join(parts) + "]").encode()


BUY = {"eventType": "checkout.complete"}
# (event, raw JSON for its RAW placeholder, the error expected): one per kind of refusal
BAD: list[tuple[dict[str, Any], str | None, str]] = [
    (
        event("b-age", "facebook", "top", **{"data.user.age": 3_000_000_000}),
        None,
        "data.user.age: out of range (must be at most 2147483647)",
    ),
    (
        event("b-followers", "tiktok", "top", **{"data.user.followers": 2**63}),
        None,
        f"data.user.followers: out of range (must be at most {INT8})",
    ),
    (
        event("b-amount-exp", "facebook", "bottom", **BUY, **{E + "purchaseAmount": "1e1200"}),
        None,
        "data.engagement.purchaseAmount: expected at most 2 decimal places, no exponent",
    ),
    (
        event("b-amount-nan", "facebook", "bottom", **BUY, **{E + "purchaseAmount": "NaN"}),
        None,
        "data.engagement.purchaseAmount: invalid decimal",
    ),
    (
        event(
            "b-amount-neg", "tiktok", "bottom", eventType="purchase", **{E + "purchaseAmount": "-1"}
        ),
        None,
        "data.engagement.purchaseAmount: invalid decimal",
    ),
    (
        event(
            "b-amount-places",
            "tiktok",
            "bottom",
            eventType="purchase",
            **{E + "purchaseAmount": "1.234"},
        ),
        None,
        "data.engagement.purchaseAmount: expected at most 2 decimal places, no exponent",
    ),
    (
        event(
            "b-amount-digits",
            "tiktok",
            "bottom",
            eventType="purchase",
            **{E + "purchaseAmount": "1" * 19},
        ),
        None,
        "data.engagement.purchaseAmount: expected at most 18 digits",
    ),
    (
        event("b-user-id", "facebook", "top", **{"data.user.userId": "u" * 4000}),
        None,
        "data.user.userId: longer than 256 characters",
    ),
    (event("x" * 257, "facebook", "top"), None, "eventId: longer than 256 characters"),
    (
        event("b-city", "facebook", "top", **{"data.user.location.city": "c" * 3000}),
        None,
        "data.user.location.city: longer than 256 characters",
    ),
    (
        event("b-campaign", "facebook", "bottom", **{E + "campaignId": "k" * 3000}),
        None,
        "data.engagement.campaignId: longer than 256 characters",
    ),
    (
        event("b-name-nul", "facebook", "top", **{"data.user.name": "a\x00b"}),
        None,
        "data.user.name: contains U+0000, which cannot be stored",
    ),
    (
        event("b-key-nul", "facebook", "top", **{"data.extra": {"k\x00": 1}}),
        None,
        "data.extra.k\x00: contains U+0000, which cannot be stored",
    ),
    (
        event("b-ts-early", "tiktok", "top", timestamp="1969-12-31T23:59:59Z"),
        None,
        TS_RANGE,
    ),
    (
        event("b-ts-late", "tiktok", "top", timestamp="9999-12-31T23:30:00-01:00"),
        None,
        TS_RANGE,
    ),
    (
        event("b-unknown-number", "facebook", "top", **{"data.extra": RAW}),
        "1e99999",
        "data.extra: number out of range",
    ),
    (
        event("b-tiny-number", "facebook", "top", **{"data.extra": [RAW]}),
        "1e-20000",
        "data.extra[0]: number out of range",
    ),
    (
        event("b-long-number", "facebook", "top", **{"data.extra": RAW}),
        "9" * 20000,
        "data.extra: number out of range",
    ),
    (
        event("b-watch-underflow", "tiktok", "top", **{E + "watchTime": RAW}),
        "1e-99999",
        "data.engagement.watchTime: number out of range",
    ),
    (
        event("b-watch-overflow", "tiktok", "top", **{E + "percentageWatched": RAW}),
        "1e400",
        "data.engagement.percentageWatched: number out of range",
    ),
]
# At the limits: all of these are stored and reported.
EDGE: list[tuple[dict[str, Any], str | None]] = [
    (event("g-deep", "facebook", "top", **{"data.extra": RAW}), "[" * 200 + "1" + "]" * 200),
    (event("g-age", "facebook", "top", **{"data.user.age": INT4}), None),
    (event("g-followers", "tiktok", "top", **{"data.user.followers": INT8}), None),
    (
        event(
            "g-amount",
            "facebook",
            "bottom",
            **BUY,
            **{E + "purchaseAmount": "9999999999999999.99", E + "campaignId": "k" * 256},
        ),
        None,
    ),
    (
        event(
            "g-amount-2",
            "tiktok",
            "bottom",
            eventType="purchase",
            **{E + "purchaseAmount": "9999999999999999.99"},
        ),
        None,
    ),
    # 4-byte characters: the widest index entries these limits allow
    (
        event(
            "g-ids",
            "facebook",
            "top",
            **{
                "data.user.userId": WIDE,
                "data.user.location.city": WIDE,
                "data.user.location.country": WIDE,
                E + "videoId": WIDE,
            },
        ),
        None,
    ),
    (event(WIDE, "tiktok", "top", **{E + "country": WIDE, E + "videoId": WIDE}), None),
    (event("g-ts-first", "tiktok", "top", timestamp="1970-01-01T00:00:00Z"), None),
    (event("g-ts-last", "tiktok", "top", timestamp="9999-12-31T23:59:59.999998Z"), None),
    (
        event(
            "g-ts-last-minute",
            "facebook",
            "bottom",
            **BUY,
            timestamp="9999-12-31T23:59:30Z",
            **{E + "purchaseAmount": "9999999999999999.99"},
        ),
        None,
    ),
    (
        event("g-numbers", "facebook", "top", **{"data.extra": [RAW]}),
        "1e308, -1e-999, 123456789012345678901234567890, " + "9" * 3999,
    ),
]


async def post(client: httpx.AsyncClient, path: str, body: bytes) -> httpx.Response:
    headers = {"content-type": "application/json"}
    return await client.post(path, content=body, headers=headers)


async def wait_for_rows(database_url: str, ids: set[str]) -> set[str]:
    conn = await asyncpg.connect(database_url)
    try:
        stored: set[str] = set()
        with anyio.move_on_after(60):
            while not ids <= stored:
                rows = await conn.fetch("select event_id from events")
                stored = {r["event_id"] for r in rows}
                if not ids <= stored:
                    await anyio.sleep(0.05)
        await anyio.sleep(0.3)  # a wrongly accepted event would show up by now
        rows = await conn.fetch("select event_id from events")
        return {r["event_id"] for r in rows}
    finally:
        await conn.close()


async def test_every_kind_of_unstorable_input_is_rejected_alone_and_the_rest_stored(
    engine: Engine, settings: Settings
) -> None:
    good = [(event(f"ok-{i}", "facebook", "top"), None) for i in range(3)]
    items = [good[0]] + [(e, raw) for e, raw, _ in BAD] + [good[1]] + EDGE + [good[2]]
    gen_good = generic("gen-ok")
    gen_items: list[tuple[dict[str, Any], str | None]] = [
        (generic("gen-bad-number", metadata={"n": RAW}), "1e400"),
        (gen_good, None),
        (generic("gen-bad-type", type="t" * 257), None),
        (generic("gen-bad-nul", metadata={"a": ["ok", "x\x00"]}), None),
        (generic("gen-edge", metadata={"n": RAW}, type="t" * 256), "-1.5e308"),
    ]
    async with httpx.AsyncClient(base_url=engine.http_url, timeout=30) as client:
        response = await post(client, "/webhook", body_of(items))
        assert response.status_code == 202, response.text
        answer = response.json()
        got = {r["index"]: (r["eventId"], r["error"]) for r in answer["rejected"]}
        expected = {i + 1: (e.get("eventId"), error) for i, (e, _, error) in enumerate(BAD)}
        assert got == expected
        assert answer["accepted"] == len(good) + len(EDGE)

        response = await post(client, "/webhook/generic", body_of(gen_items))
        assert response.status_code == 202, response.text
        rejected = {r["eventId"]: r["error"] for r in response.json()["rejected"]}
        assert rejected == {
            "gen-bad-number": "metadata.n: number out of range",
            "gen-bad-type": "type: longer than 256 characters",
            "gen-bad-nul": "metadata.a[1]: contains U+0000, which cannot be stored",
        }

        # Bodies nested past the decoder's depth are a 400 naming the problem.
        for deep in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000):
            response = await post(client, "/webhook", deep)
            assert response.status_code == 400
            assert response.json() == {"error": "malformed JSON: nested too deeply"}

        ids = {e["eventId"] for e, _ in good + EDGE} | {"gen-ok", "gen-edge"}
        stored = await wait_for_rows(settings.database_url or "", ids)
        assert stored == ids

        await _reports_hold_the_extremes(client)


async def _reports_hold_the_extremes(client: httpx.AsyncClient) -> None:
    """Every report over the stored extremes answers 200, with exact money."""
    everything = [
        ("/reports/events", {}),
        ("/reports/events", {"groupBy": "country", "interval": "minute"}),
        ("/reports/revenue", {"interval": "day"}),
        ("/reports/demographics", {}),
        ("/reports/funnel", {}),
        ("/reports/countries", {}),
        ("/reports/top", {"entity": "campaigns", "by": "revenue"}),
        ("/reports/top", {"entity": "users", "by": "revenue"}),
        ("/reports/top", {"entity": "videos"}),
        ("/reports/accounts/acc-1/summary", {"from": "2025-03-10T00:00:00Z"}),
        ("/events", {"limit": "1000"}),
    ]
    last_minute = {"from": "9999-12-31T23:59:30Z"}
    for path, params in everything:
        response = await client.get(path, params=params)
        assert response.status_code == 200, (path, params, response.text)
        if path.startswith("/reports/") and "accounts" not in path:
            response = await client.get(path, params={**params, **last_minute})
            assert response.status_code == 200, (path, "last minute", response.text)

    revenue = (await client.get("/reports/revenue")).json()
    assert revenue["total"] == "29999999999999999.97"  # exact: three amounts at the limit
    late = (await client.get("/reports/revenue", params=last_minute)).json()
    assert late["total"] == "9999999999999999.99"  # the event at 23:59:30 of year 9999

    # Paging through everything, cursors included, never fails on the stored extremes.
    seen, cursor = 0, None
    while True:
        params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        response = await client.get("/events", params=params)
        assert response.status_code == 200, (params, response.text)
        page = response.json()
        seen += len(page["events"])
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == 3 + len(EDGE) + 2

    bad = [
        ("/reports/events", {"form": "2025-01-01"}, "form"),
        ("/reports/top", {"entity": "users", "limt": "5"}, "limt"),
        ("/reports/revenue", {"from": "10000-01-01"}, "from"),
        ("/reports/funnel", {"to": "9999-12-31T23:59:59-01:00"}, "to"),
        ("/events", {"cursor": _cursor('["2025-03-10T12:00:00Z","a\\u0000b"]')}, "cursor"),
        ("/events", {"cursor": _cursor('["0001-01-01T00:00:00+01:00","e1"]')}, "cursor"),
        ("/events", {"cursor": "!!not base64!!"}, "cursor"),
    ]
    for path, params, field in bad:
        response = await client.get(path, params=params)
        assert response.status_code == 400, (path, params, response.text)
        assert response.json()["field"] == field


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


async def test_rows_stored_at_infinity_before_the_limits_existed_do_not_break_reports(
    engine: Engine, settings: Settings
) -> None:
    """asyncpg wrote datetime.max as `infinity` and reads it back naive: a database that
    took such an event before the webhook refused it still answers every report."""
    conn = await asyncpg.connect(settings.database_url or "")
    try:
        await conn.execute(
            """
            INSERT INTO events (event_id, source, funnel_stage, event_type, occurred_at,
                                received_at, country, data)
            VALUES ('inf', 'tiktok', 'top', 'like', 'infinity', now(), 'FR', '{}'),
                   ('ninf', 'tiktok', 'top', 'like', '-infinity', now(), 'FR', '{}');
            INSERT INTO rollup_events
            SELECT g, b, 'tiktok', 'top', 'like', 'FR', 1, 0, 0
            FROM unnest('{m,h,d}'::"char"[]) g, unnest('{infinity,-infinity}'::timestamptz[]) b;
            INSERT INTO rollup_series
            SELECT g, b, 'tiktok', 'top', 'like', 1, 0, 0
            FROM unnest('{m,h,d}'::"char"[]) g, unnest('{infinity,-infinity}'::timestamptz[]) b;
            """
        )
    finally:
        await conn.close()
    async with httpx.AsyncClient(base_url=engine.http_url, timeout=30) as client:
        for path, params in [
            ("/reports/events", {"interval": "day"}),
            ("/reports/events", {"from": "2025-01-01", "interval": "minute"}),
            ("/reports/revenue", {"interval": "hour"}),
            ("/reports/funnel", {"to": "9999-12-31T23:59:59Z"}),
            ("/reports/countries", {"from": "9999-12-31T23:59:30Z"}),
            ("/events", {"limit": "1"}),
        ]:
            response = await client.get(path, params=params)
            assert response.status_code == 200, (path, params, response.text)
        # The rows at -infinity and infinity page like any other (the open end of the
        # range stops before infinity itself).
        page = (await client.get("/events", params={"limit": "1"})).json()
        assert page == {
            "events": [{"receivedAt": page["events"][0]["receivedAt"]}],
            "nextCursor": None,
        }
