"""`sluice dlq` against a running `sluice run` (embedded servers found through its data dir)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from typing import TYPE_CHECKING

import asyncpg

from tests.e2e.test_cli import SLUICE, data_dir, finish, start, wait_for_rows
from tests.factories import make_events

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["data_dir"]  # the fixture, shared with test_cli


def dlq(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    env["SLUICE_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [*SLUICE, "dlq", *args], env=env, capture_output=True, text=True, timeout=60
    )


def database_url(data_dir: Path) -> str:
    url: str = json.loads((data_dir / "servers.json").read_text())["database_url"]
    return url


async def add_letters(url: str, letters: list[tuple[str, bytes]]) -> None:
    """Letters as the writer records them (the refusals themselves are tested elsewhere)."""
    conn = await asyncpg.connect(url)
    try:
        for source, payload in letters:
            await conn.execute(
                "INSERT INTO dead_letters (source, reason, payload, attempts, digest)"
                " VALUES ($1, 'NumericValueOutOfRangeError (22003): test', $2, 3,"
                " sha256(convert_to($1, 'UTF8') || '\\x00'::bytea || $2))",
                source,
                payload,
            )
    finally:
        await conn.close()


def test_list_show_replay_twice_and_purge(data_dir: Path) -> None:
    events = make_events(3, seed=21)
    running = start(data_dir)
    try:
        url = database_url(data_dir)
        letters = [(e["source"], json.dumps(e).encode()) for e in events[:2]]
        letters.append(("tiktok", b'{"not": "an event"}'))
        asyncio.run(add_letters(url, letters))

        listed = dlq(data_dir, "list", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)
        assert [r["source"] for r in rows] == [source for source, _ in letters]
        assert all(r["replayed_at"] is None and r["attempts"] == 3 for r in rows)
        ids = [r["id"] for r in rows]
        only = json.loads(dlq(data_dir, "list", "--source", "tiktok", "--json").stdout)
        assert {r["source"] for r in only} == {"tiktok"} and ids[2] in [r["id"] for r in only]
        table = dlq(data_dir, "list")
        assert "NumericValueOutOfRangeError" in table.stdout

        shown = dlq(data_dir, "show", str(ids[0]))
        assert shown.returncode == 0, shown.stderr
        assert json.loads(json.loads(shown.stdout)["payload"]) == events[0]
        assert dlq(data_dir, "show", "999999").returncode == 1

        replayed = dlq(data_dir, "replay", str(ids[0]), str(ids[1]))
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        wanted = {events[0]["eventId"], events[1]["eventId"]}
        assert set(wait_for_rows(url, 2)) == wanted
        again = dlq(data_dir, "replay", str(ids[0]))  # replaying twice stores once
        assert again.returncode == 0, again.stdout + again.stderr
        # the bad one is refused by the webhook's validation and stays pending
        rest = dlq(data_dir, "replay", "--all")
        assert rest.returncode == 1 and f"{ids[2]}: not replayed" in rest.stdout
        assert sorted(wait_for_rows(url, 3, timeout=3)) == sorted(wanted)
        after = {
            r["id"]: r["replayed_at"] for r in json.loads(dlq(data_dir, "list", "--json").stdout)
        }
        assert after[ids[0]] and after[ids[1]] and after[ids[2]] is None

        purged = dlq(data_dir, "purge", "--before", "2999-01-01")
        assert purged.returncode == 0 and "purged 3" in purged.stdout
        assert json.loads(dlq(data_dir, "list", "--json").stdout) == []
    finally:
        running.proc.send_signal(signal.SIGTERM)
    assert finish(running) == 0, "".join(running.output)


def test_without_a_running_engine_it_says_what_to_set(tmp_path: Path) -> None:
    result = dlq(tmp_path / "nothing", "list")
    assert result.returncode == 2
    assert "no running sluice found: set DATABASE_URL" in result.stderr
