"""Rows PostgreSQL refuses, in batches of good ones: the real store under the writer.

Each kind of refusal (an integer past its column type, NUL in text, a value out of
range for a type, a key too long for its index) sits among good rows; the good rows are
stored, each bad one is dead-lettered once, also when the same message comes again.
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING

import asyncpg
import pytest

from sluice.actors.work import Work
from sluice.actors.writer import BatchWriter
from sluice.edges.store import PgEventStore
from sluice.engine import open_channel
from sluice.engine.testing import run_actor
from sluice.metrics import Metrics
from tests.fakes import FakeDelivery
from tests.integration.test_store import row

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sluice.ports import EventRow

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

# event_id -> (a row PostgreSQL or asyncpg refuses, the start of its letter's reason)
POISON: dict[str, tuple[EventRow, str]] = {
    "age-past-int": (row("age-past-int", age=3_000_000_000), "OverflowError"),
    "followers-past-bigint": (row("followers-past-bigint", followers=2**63), "OverflowError"),
    "nul-in-text": (row("nul-in-text", user_id="u\x001"), "CharacterNotInRepertoireError"),
    "nul-in-json": (
        row("nul-in-json", data=json.dumps({"eventId": "nul-in-json", "note": "a\x00b"})),
        "UntranslatableCharacterError",
    ),
    "number-past-jsonb": (
        row("number-past-jsonb", data='{"eventId": "number-past-jsonb", "n": 1e140000}'),
        "NumericValueOutOfRangeError",
    ),
    "key-past-index": (row("k" + secrets.token_hex(3000)), "ProgramLimitExceededError"),
}


@pytest.fixture
async def store(fresh_database_url: str) -> AsyncIterator[PgEventStore]:
    async with PgEventStore.open(fresh_database_url, migrate=True) as opened:
        yield opened


async def write(store: PgEventStore, works: list[Work]) -> None:
    send, inbox = open_channel[Work](len(works))
    writer = BatchWriter(
        inbox, store, None, flush_rows=10_000, flush_interval=0.2, metrics=Metrics()
    )
    async with inbox, run_actor(writer, timeout=30):
        async with send:
            for work in works:
                await send.send(work)


def messages(delivered: int) -> list[Work]:
    """Three messages of 40 good rows, the bad ones spread among them."""
    rows = [row(f"good-{i:03}", correlation_id=f"req-{i // 40}") for i in range(120)]
    for n, (bad, _) in enumerate(POISON.values()):
        rows.insert(n * 19 + 5, bad)
    size = len(rows) // 3 + 1
    return [
        Work("facebook", FakeDelivery(num_delivered=delivered), rows[i : i + size])
        for i in range(0, len(rows), size)
    ]


async def test_good_rows_are_stored_and_each_bad_one_lettered_once(
    store: PgEventStore, fresh_database_url: str
) -> None:
    for delivered in (1, 2):  # the second pass is a redelivery of the same messages
        works = messages(delivered)
        await write(store, works)
        assert all(work.delivery.acked for work in works)
    conn = await asyncpg.connect(fresh_database_url)
    try:
        stored = {r["event_id"] for r in await conn.fetch("SELECT event_id FROM events")}
        letters = await conn.fetch(
            "SELECT event_id, source, reason, payload, attempts, correlation_id"
            " FROM dead_letters ORDER BY id"
        )
    finally:
        await conn.close()
    assert stored == {f"good-{i:03}" for i in range(120)}
    assert sorted(letter["event_id"] for letter in letters) == sorted(
        bad.event_id for bad, _ in POISON.values()
    )
    for letter in letters:
        bad, reason = next(p for p in POISON.values() if p[0].event_id == letter["event_id"])
        assert letter["reason"].startswith(reason), letter["reason"]
        assert letter["payload"] == bad.data.encode()
        assert letter["source"] == "facebook"
        assert letter["correlation_id"] == "corr-1"
        assert letter["attempts"] == 2
