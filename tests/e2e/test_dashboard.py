"""GET /dashboard in a real headless Chromium against a running engine.

The engine runs on the test servers with a known data set spread over the last month;
every number the page shows is checked against the JSON report endpoint it comes from,
for several sources and ranges. Also: no console error, no request to another host, a
failed report shows on its panel, keyboard and 375 px use, and the README's screenshot.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest

from sluice.app import Engine, open_engine
from sluice.auth import hash_key, new_key
from sluice.config import Settings
from sluice.edges.keys import PgKeyStore
from sluice.edges.store import PgEventStore
from tests.factories import engine_settings, make_events, override

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

CHROMIUM = "/usr/bin/chromium"
# Flags that work in containers and on CI machines with no display and no internet.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The README's screenshot is rewritten only on request (SLUICE_UPDATE_SCREENSHOT=1), so a
# test run leaves the work tree as it found it.
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
PANELS = ("totals", "events", "funnel", "revenue", "demographics", "top")


def chromium_path() -> str:
    found = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if found is None:
        pytest.skip(
            "no Chromium on this machine: install Debian's package (apt-get install chromium), "
            "as .ci/run does, to run the dashboard's browser test"
        )
    return found


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Quart and Playwright's async API run on asyncio


@pytest.fixture
def settings(nats_url: str, fresh_database_url: str, nats_prefix: str) -> Settings:
    return engine_settings(
        nats_url,
        fresh_database_url,
        nats_prefix,
        sources=("facebook", "tiktok"),
        metrics_interval=0.5,
    )


def data_set(now: datetime) -> list[dict[str, Any]]:
    """Events in the last hour, the last day, the last week and a month ago, each group
    well inside its band (so a range chosen a few seconds later holds the same events)."""
    groups = [
        (timedelta(minutes=2), 120, timedelta(seconds=15)),
        (timedelta(hours=10), 80, timedelta(minutes=1)),
        (timedelta(days=3), 60, timedelta(minutes=5)),
        (timedelta(days=30), 40, timedelta(hours=1)),
    ]
    events = []
    for seed, (age, n, step) in enumerate(groups, start=1):
        for i, event in enumerate(make_events(n, seed=seed, now=now)):
            at = now - age - i * step
            override(event, "timestamp", at.isoformat().replace("+00:00", "Z"))
            events.append(event)
    return events


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[Engine]:
    async with open_engine(settings) as running:
        yield running


async def stored(client: httpx.AsyncClient, expected: int) -> None:
    """Integration only: wait until the pipeline has written `expected` events."""
    with anyio.fail_after(60):
        while (await client.get("/reports/events")).json()["total"] < expected:
            await anyio.sleep(0.05)


# --- what the page should show, from the API's answers ----------------------------------


def fmt_int(n: int) -> str:
    return f"{n:,}"


def fmt_money(text: str) -> str:
    whole, _, cents = text.partition(".")
    return f"{int(whole):,}" + (f".{cents}" if cents else "")


def fmt_rate(rate: float | None) -> str:
    if rate is None:
        return "n/a"
    # JavaScript's toFixed rounds the exact binary value half up.
    return f"{Decimal(rate * 100).quantize(Decimal('0.1'), ROUND_HALF_UP)}%"


def fmt_bucket(iso: str, interval: str) -> str:
    text = iso.replace("T", " ")
    return text[:10] if interval == "day" else text[:16]


class Page:
    """The dashboard in one browser tab, with what it asked for."""

    def __init__(self, page: Any, base: str) -> None:
        self.page = page
        self.base = base
        self.requests: list[str] = []
        self.console_errors: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        page.on(
            "console",
            lambda msg: self.console_errors.append(msg.text) if msg.type == "error" else None,
        )
        page.on("pageerror", lambda exc: self.console_errors.append(str(exc)))

    async def refreshed(self, count: int) -> None:
        await self.page.wait_for_selector(f'body[data-refreshes="{count}"]', timeout=30_000)

    async def table(self, name: str) -> list[list[str]]:
        rows: list[list[str]] = await self.page.eval_on_selector_all(
            f'[data-table="{name}"] tbody tr',
            "rows => rows.map(r => [...r.cells].map(c => c.textContent))",
        )
        return rows

    async def total(self, name: str) -> str:
        text: str = await self.page.text_content(f'[data-total="{name}"]')
        return text

    async def state(self, panel: str) -> str:
        value: str = await self.page.get_attribute(f"#{panel}", "data-state")
        return value

    def last_query(self, path: str) -> dict[str, str]:
        """The query string of the page's latest request to `path`."""
        for url in reversed(self.requests):
            parts = urlsplit(url)
            if parts.path == path:
                return {k: v[0] for k, v in parse_qs(parts.query).items()}
        raise AssertionError(f"the page never asked for {path}")


async def check_panels(dash: Page, api: httpx.AsyncClient, sources: list[str]) -> None:
    """Every number on the page equals the report endpoint's answer for the page's range."""
    for panel in PANELS:
        assert await dash.state(panel) == "ready", panel
    rng = {k: v for k, v in dash.last_query("/reports/funnel").items() if k in ("from", "to")}
    scope = rng | ({"source": sources[0]} if len(sources) == 1 else {})
    interval = dash.last_query("/reports/revenue")["interval"]

    async def get(path: str, **params: Any) -> Any:
        response = await api.get(path, params=scope | params)
        assert response.status_code == 200, response.text
        return response.json()

    events = await get("/reports/events", groupBy="source")
    revenue = await get("/reports/revenue", interval=interval)
    demographics = await get("/reports/demographics")
    extent = (await api.get("/reports/extent")).json()
    assert await dash.total("events") == fmt_int(events["total"])
    assert await dash.total("revenue") == fmt_money(revenue["total"])
    users = sum(demographics[s]["users"] for s in sources)
    assert await dash.total("users") == fmt_int(users)
    last = extent["last"].replace("T", " ")
    assert await dash.total("last") == re.sub(r"(\.\d+)?Z$", "", last) + " UTC"

    per_source = {}
    for source in sources:
        answer = await get("/reports/events", source=source, groupBy="source", interval=interval)
        per_source[source] = {p["bucket"]: p["count"] for p in answer["series"]}
    buckets = sorted(set().union(*per_source.values()))
    expected_series = [
        [fmt_bucket(b, interval)]
        + [fmt_int(per_source[s].get(b, 0)) for s in sources]
        + [fmt_int(sum(per_source[s].get(b, 0) for s in sources))]
        for b in buckets
    ]
    assert await dash.table("events-series") == expected_series
    assert sum(sum(counts.values()) for counts in per_source.values()) == events["total"]

    funnel = await get("/reports/funnel")
    expected_funnel = [
        [r["source"], fmt_int(r["top"]), fmt_int(r["bottom"]), fmt_rate(r["conversionRate"])]
        for r in funnel["bySource"]
    ]
    expected_funnel.append(
        [
            "all",
            fmt_int(funnel["top"]),
            fmt_int(funnel["bottom"]),
            fmt_rate(funnel["conversionRate"]),
        ]
    )
    assert await dash.table("funnel") == expected_funnel

    assert await dash.table("revenue-series") == [
        [fmt_bucket(p["bucket"], interval), fmt_money(p["revenue"]), fmt_int(p["transactions"])]
        for p in revenue["series"]
    ]
    assert await dash.table("revenue-campaigns") == [
        [c["campaignId"], fmt_money(c["revenue"]), fmt_int(c["transactions"])]
        for c in revenue["byCampaign"][:10]
    ]

    bins = {
        "facebook-age": lambda d: [(a["range"], a["count"]) for a in d["facebook"]["age"]],
        "facebook-gender": lambda d: [(g["gender"], g["count"]) for g in d["facebook"]["gender"]],
        "tiktok-followers": lambda d: [
            (b["range"], b["count"]) for b in d["tiktok"]["followers"]["buckets"]
        ],
        "tiktok-devices": lambda d: [(v["device"], v["count"]) for v in d["tiktok"]["devices"]],
    }
    for name, pick in bins.items():
        if name.split("-")[0] in sources:
            assert await dash.table(name) == [[k, fmt_int(n)] for k, n in pick(demographics)]
        else:
            assert await dash.table(name) == [], f"{name} shown for another source"
    countries = await get("/reports/countries", limit=10)
    assert await dash.table("countries") == [
        [c["country"], fmt_int(c["events"]), fmt_money(c["revenue"])] for c in countries
    ]

    keys = {"campaigns": "campaignId", "users": "userId", "videos": "videoId"}
    for entity, key in keys.items():
        for by in ("events", "revenue"):
            top = await get("/reports/top", entity=entity, by=by, limit=10)
            assert await dash.table(f"top-{entity}-{by}") == [
                [str(i), t["source"], t[key], fmt_int(t["events"]), fmt_money(t["revenue"])]
                for i, t in enumerate(top, start=1)
            ], (entity, by)


async def test_the_dashboard_shows_the_reports_numbers_in_a_real_browser(
    engine: Engine,
) -> None:
    executable = chromium_path()
    from playwright.async_api import async_playwright

    now = datetime.now(UTC)
    events = data_set(now)
    async with httpx.AsyncClient(base_url=engine.http_url, timeout=30) as api:
        answer = await api.post("/webhook", json=events)
        assert answer.status_code == 202 and answer.json()["accepted"] == len(events)
        await stored(api, len(events))

        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=executable, headless=True, args=CHROMIUM_FLAGS
            )
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 1000})
                dash = Page(page, engine.http_url)
                await page.goto(f"{engine.http_url}/dashboard")
                await dash.refreshed(1)
                assert (await page.input_value("#range"), await page.input_value("#source")) == (
                    "all",
                    "both",
                )
                await check_panels(dash, api, ["facebook", "tiktok"])
                assert await dash.total("events") == fmt_int(len(events))
                refreshed = await page.text_content("#refreshed")
                assert re.fullmatch(r"Last refreshed \d\d:\d\d:\d\d UTC; next in 30 s", refreshed)
                shot = await page.screenshot()
                assert shot.startswith(b"\x89PNG")
                if os.environ.get("SLUICE_UPDATE_SCREENSHOT") == "1":
                    DOCS_SCREENSHOT.write_bytes(shot)

                # The source filter: kept in the URL, and every panel follows it.
                await page.select_option("#source", "tiktok")
                await dash.refreshed(2)
                assert parse_qs(urlsplit(page.url).query) == {
                    "range": ["all"],
                    "source": ["tiktok"],
                }
                await check_panels(dash, api, ["tiktok"])
                assert await dash.total("events") != fmt_int(len(events))

                # A preset range: the last hour holds only the newest group of events.
                await page.select_option("#source", "both")
                await dash.refreshed(3)
                await page.select_option("#range", "1h")
                await dash.refreshed(4)
                assert dash.last_query("/reports/revenue")["interval"] == "minute"
                await check_panels(dash, api, ["facebook", "tiktok"])
                assert await dash.total("events") == fmt_int(120)
                await page.select_option("#range", "7d")
                await dash.refreshed(5)
                assert dash.last_query("/reports/revenue")["interval"] == "day"
                assert await dash.total("events") == fmt_int(120 + 80 + 60)

                # A custom range, shared by its URL: a new tab opens the same view.
                # (seconds other than 0: the input would drop ":00")
                start = (now - timedelta(days=4)).strftime("%Y-%m-%dT%H:%M:07")
                end = (now - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:07")
                shared = f"{engine.http_url}/dashboard?range=custom&from={start}&to={end}"
                await page.goto(shared)
                await dash.refreshed(1)
                assert await page.is_visible("#from")
                assert await page.input_value("#from") == start
                assert dash.last_query("/reports/funnel")["from"] == start
                assert dash.last_query("/reports/revenue")["interval"] == "hour"  # < 4 days
                await check_panels(dash, api, ["facebook", "tiktok"])
                assert await dash.total("events") == fmt_int(80 + 60)

                assert dash.console_errors == []
                elsewhere = [u for u in dash.requests if not u.startswith(engine.http_url + "/")]
                assert elsewhere == [], "requests to other hosts"

                # A report that fails shows its error on its own panel, not a blank.
                await page.route(
                    "**/reports/funnel?*",
                    lambda route: route.fulfill(
                        status=503, json={"error": "reports unavailable, try again"}
                    ),
                )
                await page.select_option("#source", "facebook")
                await dash.refreshed(2)
                assert await dash.state("funnel") == "error"
                message = await page.text_content("#funnel [role=alert]")
                assert "503" in message and "reports unavailable" in message
                assert [await dash.state(p) for p in PANELS if p != "funnel"] == ["ready"] * 5

                # Pausing stops the timer and says so; resuming says when the next comes.
                await page.click("#pause")
                assert await page.get_attribute("#pause", "aria-pressed") == "true"
                assert (await page.text_content("#refreshed")).endswith("refresh paused")
                await page.keyboard.press("Enter")  # the button still has focus
                assert await page.get_attribute("#pause", "aria-pressed") == "false"
                assert (await page.text_content("#refreshed")).endswith("next in 30 s")

                # Refreshing on its own, at the interval chosen.
                before = await page.text_content("#refreshed")
                await page.select_option("#every", "10")
                assert (await page.text_content("#refreshed")).endswith("next in 10 s")
                await dash.refreshed(3)
                assert await page.text_content("#refreshed") != before
                await page.close()
            finally:
                await browser.close()


async def test_the_dashboard_is_usable_by_keyboard_and_at_375_px(engine: Engine) -> None:
    executable = chromium_path()
    from playwright.async_api import async_playwright

    async with httpx.AsyncClient(base_url=engine.http_url, timeout=30) as api:
        events = make_events(60, seed=21)
        assert (await api.post("/webhook", json=events)).status_code == 202
        await stored(api, len(events))

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = await browser.new_page(viewport={"width": 375, "height": 800})
            dash = Page(page, engine.http_url)
            await page.goto(f"{engine.http_url}/dashboard")
            await dash.refreshed(1)
            width = await page.evaluate("document.documentElement.scrollWidth")
            assert width <= 375, f"the page scrolls sideways at 375 px ({width} px wide)"

            # Every control has a label, and Tab reaches them in order.
            for label, control in [
                ("Time range", "range"),
                ("Source", "source"),
                ("Refresh every", "every"),
            ]:
                assert await page.get_by_label(label, exact=True).get_attribute("id") == control
            focused = []
            for _ in range(4):
                await page.keyboard.press("Tab")
                focused.append(await page.evaluate("document.activeElement.id"))
            assert focused == ["range", "source", "every", "pause"]

            # Keyboard alone changes the view.
            await page.focus("#source")
            await page.keyboard.press("ArrowDown")  # Both -> Facebook
            await dash.refreshed(2)
            assert "source=facebook" in page.url

            # Each chart has a title and its table, which the keyboard opens.
            figures = await page.eval_on_selector_all(
                "figure",
                "fs => fs.map(f => [f.querySelector('figcaption')?.textContent, "
                "f.querySelector('svg')?.getAttribute('aria-label'), "
                "!!f.querySelector('details table')])",
            )
            assert figures, "no charts drawn"
            for caption, label, has_table in figures:
                assert caption and caption == label and has_table, caption
            await page.focus("#events summary")
            await page.keyboard.press("Enter")
            assert await page.is_visible('[data-table="events-series"]')
            assert dash.console_errors == []
        finally:
            await browser.close()


async def test_where_keys_are_required_a_browser_opens_it_with_a_report_key(
    settings: Settings,
) -> None:
    """Profile staging/prod: the page asks for the key the way a browser can be asked
    (HTTP Basic, the key as the password), and its report requests carry it."""
    executable = chromium_path()
    from playwright.async_api import async_playwright

    assert settings.database_url is not None
    secret = "dashboard-test-secret"
    required = dataclasses.replace(settings, auth="required", key_secret=secret)
    report_key, ingest_key = new_key(), new_key()
    async with PgEventStore.open(settings.database_url, migrate=True):
        pass
    async with PgKeyStore.open(settings.database_url) as keys:
        for key, scope in ((report_key, "report"), (ingest_key, "ingest")):
            await keys.create(
                hash_key(secret.encode(), key), name=scope, scopes=[scope], sources=None
            )

    async with open_engine(required) as engine:
        events = make_events(30, seed=5)
        async with httpx.AsyncClient(base_url=engine.http_url, timeout=30) as api:
            refused = await api.get("/dashboard")
            assert refused.status_code == 401
            assert "Basic" in refused.headers["www-authenticate"]
            ingest = {"Authorization": f"Bearer {ingest_key}"}
            assert (await api.post("/webhook", json=events, headers=ingest)).status_code == 202
            reader = httpx.AsyncClient(
                base_url=engine.http_url,
                timeout=30,
                headers={"Authorization": f"Bearer {report_key}"},
            )
            async with reader:
                await stored(reader, len(events))

        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=executable, headless=True, args=CHROMIUM_FLAGS
            )
            try:
                for password, status in ((ingest_key, 403), (report_key, 200)):
                    context = await browser.new_context(
                        http_credentials={"username": "", "password": password}
                    )
                    page = await context.new_page()
                    answer = await page.goto(f"{engine.http_url}/dashboard")
                    assert answer is not None and answer.status == status
                    if status == 200:
                        dash = Page(page, engine.http_url)
                        await dash.refreshed(1)
                        assert await dash.total("events") == fmt_int(len(events))
                        for panel in PANELS:
                            assert await dash.state(panel) == "ready", panel
                    await context.close()
            finally:
                await browser.close()
