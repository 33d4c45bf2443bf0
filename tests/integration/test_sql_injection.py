"""SQL injection: hostile strings in every parameter of every route, against a running
engine on real PostgreSQL. Every answer is below 500, and afterwards every table is there
with the rows it had.

The parameters come from /openapi.json, so a parameter added to a route is covered
without touching this test. A second test reads the code: SQL sent to PostgreSQL is
never built from values (only from constants), so values can only be bound parameters.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import asyncpg
import httpx
import pytest

from sluice.app import open_engine
from sluice.config import Settings
from sluice.edges.reports import _snapshot_literal
from tests.factories import engine_settings, make_event, make_events

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]

HOSTILE = [
    "'; DROP TABLE events; --",
    "' OR '1'='1",
    "1 OR 1=1",
    "1; SELECT pg_sleep(10)",
    "'); DELETE FROM events WHERE ('1'='1",
    '" OR ""="',
    "x' UNION SELECT table_name FROM information_schema.tables --",
    "facebook'--",
    "\x00",
    "a\x00'; DROP TABLE events; --",
    "\\x00",
    "\\",
    "\u2019 OR \u20191\u2019=\u20191",  # unicode quotes: right single, modifier, fullwidth
    "\u02bc; DROP TABLE events; --",
    "\uff07 OR 1=1 --",
    "%",
    "_",
    "%%' --",
    "$1",
    "$$; DROP TABLE events; $$",
    "/* comment */",
    ";",
    "--",
    "-1",
    "99999999999999999999999999",
    "NaN",
    "1e999",
    "2026-01-01'; DROP TABLE events; --",
    "2026-01-01T00:00:00Z' OR '1'='1",
    '{"$gt": ""}',
    "a\r\nb",
    "😀",
    "x" * 4000,
]
#: Sent as they are (already percent-encoded): bytes that are not UTF-8.
RAW = ["%ED%A0%80", "%FF%FE", "%C0%27", "%27%00"]

TABLES = """
    SELECT c.relname
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
    ORDER BY 1
"""


@pytest.fixture
def settings(nats_url: str, fresh_database_url: str, nats_prefix: str) -> Settings:
    return engine_settings(nats_url, fresh_database_url, nats_prefix)


async def snapshot(url: str) -> dict[str, Any]:
    """Every table of the schema with its row count, and a digest of the stored events."""
    conn = await asyncpg.connect(url)
    try:
        tables = [r[0] for r in await conn.fetch(TABLES)]
        counts: dict[str, Any] = {
            t: await conn.fetchval(f'SELECT count(*) FROM "{t}"') for t in tables
        }
        counts["events digest"] = await conn.fetchval(
            "SELECT md5(string_agg(event_id || ':' || md5(data::text), ',' ORDER BY event_id))"
            " FROM events"
        )
    finally:
        await conn.close()
    return counts


#: Valid values of the parameters whose schema says only "string".
RANGE = {"from": "2020-01-01T00:00:00Z", "to": "2030-01-01T00:00:00Z"}


def example(param: dict[str, Any]) -> str:
    """A valid value for a parameter, from its schema (so that with one parameter
    hostile, the others let the request reach the database)."""
    schema = param.get("schema", {})
    if param["name"] in RANGE:
        return RANGE[param["name"]]
    if schema.get("default") is not None:
        return str(schema["default"])
    variants = [schema, *schema.get("anyOf", [])]
    for variant in variants:
        if "enum" in variant:
            return str(variant["enum"][0])
    if any(v.get("type") == "integer" for v in variants):
        return str(max(int(schema.get("minimum", 1)), 1))
    return "x"


def requests(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, str], str]]:
    """(method, url, headers, what) for each hostile value in each parameter of each
    operation: GET routes in every parameter (one at a time, the others valid, and all
    at once); POST routes in their path and header parameters, with a body that stores
    nothing."""
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            params = operation.get("parameters", [])
            if method == "post":
                params = [p for p in params if p["in"] in ("path", "header")]
            if not params:
                continue
            valid = {p["name"]: example(p) for p in params}
            for encoded in [quote(h, safe="") for h in HOSTILE] + RAW:
                for target in [*(p["name"] for p in params), "*"]:
                    values = {
                        p["name"]: encoded
                        if target in (p["name"], "*")
                        else quote(valid[p["name"]])
                        for p in params
                    }
                    url = path
                    query = []
                    headers: dict[str, str] = {}
                    for p in params:
                        hostile = target in (p["name"], "*")
                        if not (hostile or p.get("required") or p["name"] in RANGE):
                            continue  # an optional one left out is valid
                        if p["in"] == "path":
                            url = url.replace("{" + p["name"] + "}", values[p["name"]])
                        elif p["in"] == "query":
                            query.append(f"{p['name']}={values[p['name']]}")
                        elif p["in"] == "header":
                            headers[p["name"]] = encoded  # as sent: percent-encoded text
                    if query:
                        url += "?" + "&".join(query)
                    yield method.upper(), url, headers, f"{method} {path} [{target}]"


async def test_hostile_parameters_never_reach_sql_as_code(settings: Settings) -> None:
    assert settings.database_url is not None
    async with (
        open_engine(settings) as engine,
        httpx.AsyncClient(base_url=engine.http_url, timeout=60) as client,
    ):
        events = make_events(60, seed=13)
        stored = await client.post("/webhook", json=events)
        assert stored.status_code == 202
        with anyio.fail_after(60):
            while (await snapshot(settings.database_url))["events"] < 60:
                await anyio.sleep(0.1)
        before = await snapshot(settings.database_url)
        assert before["api_keys"] == 0 and before["schema_migrations"] > 0

        doc = (await client.get("/openapi.json")).json()
        answers: dict[str, list[int]] = {}
        # A body that stores nothing whatever its route: an empty array is 422.
        for method, url, headers, what in requests(doc):
            if method == "GET":
                response = await client.get(url, headers=headers)
            else:
                response = await client.post(
                    url, content=b"[]", headers=headers | {"Content-Type": "application/json"}
                )
            assert response.status_code < 500, (what, url, response.status_code, response.text)
            answers.setdefault(what, []).append(response.status_code)

        # The route with a valid event of a real source, in a hostile source's place.
        for hostile in HOSTILE:
            response = await client.post(
                f"/webhook/{quote(hostile, safe='')}", json=make_event("tiktok")
            )
            assert response.status_code == 404, (hostile, response.text)

        after = await snapshot(settings.database_url)
    assert after == before

    # Every GET parameter was tried, and free-text ones got through to the database.
    tried = {what.split(" [")[0] for what in answers}
    assert {"get /events", "get /events/{eventId}", "get /reports/top"} <= tried
    assert "post /webhook/{source}" in tried
    reached = {  # free text: most hostile values are valid, bound and found nowhere
        "get /events [eventType]": 200,
        "get /reports/revenue [campaignId]": 200,
        "get /reports/accounts/{accountId}/summary [accountId]": 200,
        "get /events/{eventId} [eventId]": 404,
    }
    for what, status in reached.items():
        assert answers[what].count(status) >= len(HOSTILE) // 2, (what, answers[what])


# --- the code --------------------------------------------------------------------------

CALLS = {"execute", "executemany", "fetch", "fetchrow", "fetchval", "prepare", "cursor"}
CONSTANT = re.compile(r"_?[A-Z][A-Z0-9_]*")
SQL_WORD = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|COPY|TRUNCATE)\b", re.I)


# The one value written into SQL: SET TRANSACTION SNAPSHOT takes no parameters, and this
# helper passes only the shape of the id PostgreSQL itself made (hex digits and dashes).
CHECKED_LITERALS = {"_snapshot_literal"}


def _sql_built_from_values(node: ast.expr) -> bool:
    """True when `node` makes text out of something that is not a module constant."""
    if isinstance(node, ast.JoinedStr):
        return any(
            not (isinstance(v.value, ast.Name) and CONSTANT.fullmatch(v.value.id))
            and not (
                isinstance(v.value, ast.Call)
                and isinstance(v.value.func, ast.Name)
                and v.value.func.id in CHECKED_LITERALS
            )
            for v in node.values
            if isinstance(v, ast.FormattedValue)
        )
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
        return True
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "format"
    )


def test_sql_is_never_built_from_values() -> None:
    """asyncpg calls get a constant, a query file's text or an f-string of constants
    (table names); module constants holding SQL are made of constants only."""
    found = []
    for path in sorted((REPO / "sluice").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            sql: ast.expr | None = None
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in CALLS
                and node.args
            ):
                sql = node.args[0]
            elif (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and CONSTANT.fullmatch(node.targets[0].id)
                and SQL_WORD.search(ast.unparse(node.value))
            ):
                sql = node.value
            if sql is not None and _sql_built_from_values(sql):
                found.append(f"{path.relative_to(REPO)}:{sql.lineno}: {ast.unparse(sql)[:80]}")
    assert found == []


def test_a_snapshot_id_is_the_only_value_written_into_sql_and_only_in_its_shape() -> None:
    assert _snapshot_literal("00000003-0000001B-1") == "'00000003-0000001B-1'"
    assert _snapshot_literal("000003A1-1") == "'000003A1-1'"  # PostgreSQL before 12
    for bad in ("", "0000-1'; DROP TABLE events; --", "00000003-0000001B-1\n", "abc", "1"):
        with pytest.raises(ValueError, match="not a snapshot id"):
            _snapshot_literal(bad)
    call = ast.parse('conn.execute(f"SET X {_snapshot_literal(s)} {other(s)}")').body[0]
    assert isinstance(call, ast.Expr) and isinstance(call.value, ast.Call)
    assert _sql_built_from_values(call.value.args[0])  # other() is still a value


def test_the_code_check_sees_values_formatted_into_sql() -> None:
    bad = ast.parse('conn.fetch(f"SELECT * FROM events WHERE id = {event_id}")').body[0]
    good = ast.parse('conn.execute(f"DELETE FROM {STAGING_TABLE}")').body[0]
    assert isinstance(bad, ast.Expr) and isinstance(good, ast.Expr)
    assert isinstance(bad.value, ast.Call) and isinstance(good.value, ast.Call)
    assert _sql_built_from_values(bad.value.args[0])
    assert not _sql_built_from_values(good.value.args[0])
    assert _sql_built_from_values(ast.parse("'x = %s' % value", mode="eval").body)
