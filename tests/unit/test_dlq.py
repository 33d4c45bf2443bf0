"""`sluice dlq` pieces that need no servers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sluice import envelope
from sluice.config import Settings
from sluice.dlq import DlqError, engine_urls, replay_body


def test_a_letter_of_one_event_is_replayed_as_that_event() -> None:
    raw = b'{"eventId": "e1", "source": "facebook"}'
    assert replay_body(raw) == raw


def test_a_letter_of_a_whole_message_is_replayed_as_its_events() -> None:
    events = [("e1", b'{"eventId":"e1"}'), ("e2", b'{"eventId":"e2"}')]
    (chunk,) = envelope.encode(
        "facebook", events, received_at=datetime(2026, 1, 1, tzinfo=UTC), max_bytes=10_000
    )
    assert json.loads(replay_body(chunk.payload)) == [{"eventId": "e1"}, {"eventId": "e2"}]


def test_urls_come_from_the_running_engines_servers_json(tmp_path: Path) -> None:
    (tmp_path / "servers.json").write_text(
        json.dumps({"database_url": "postgresql://db", "nats_url": "nats://n", "sluice_pid": 1})
    )
    settings = Settings(data_dir=tmp_path)
    resolved = engine_urls(settings, nats=True)
    assert (resolved.database_url, resolved.nats_url) == ("postgresql://db", "nats://n")
    explicit = Settings(data_dir=tmp_path, database_url="postgresql://mine")
    assert engine_urls(explicit, nats=False).database_url == "postgresql://mine"


def test_no_running_engine_is_an_error_naming_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(DlqError, match="set DATABASE_URL and NATS_URL"):
        engine_urls(Settings(data_dir=tmp_path), nats=True)
