"""The generic source: batched product events named by the route (docs/events.md, "generic")."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from sluice.sources import FUNNEL_SOURCES, InvalidEvent, parse_event, validate_body

RECEIVED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def generic(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": "g-1",
        "account_id": "acc-1",
        "user_id": "u-1",
        "type": "page.view",
        "timestamp": "2025-01-02T03:00:00+01:00",
        "metadata": {"path": "/pricing", "nested": {"a": [1, 2]}},
    }
    event.update(changes)
    return {k: v for k, v in event.items() if v is not ...}


def encode(body: Any) -> bytes:
    return msgspec.json.encode(body)


def test_a_batch_on_its_route_is_accepted() -> None:
    batch = [generic(event_id=f"g-{i}", type=f"t{i}") for i in range(3)]
    result = validate_body(encode(batch), route_source="generic")
    assert result.rejected == []
    assert [e.event_id for e in result.by_source["generic"]] == ["g-0", "g-1", "g-2"]


def test_parse_event_makes_a_row_without_funnel_stage() -> None:
    raw = encode(generic(unknown_extra=True))
    row = parse_event("generic", raw, received_at=RECEIVED, correlation_id="c")
    assert (row.event_id, row.source, row.funnel_stage, row.event_type) == (
        "g-1",
        "generic",
        None,
        "page.view",
    )
    assert (row.account_id, row.user_id) == ("acc-1", "u-1")
    assert row.occurred_at == datetime(2025, 1, 2, 2, tzinfo=UTC)
    assert row.data == raw.decode()  # unknown fields kept
    assert row.revenue is None and row.country is None


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"event_id": ...}, "event_id: required field missing"),
        ({"event_id": ""}, "event_id: must be a non-empty string"),
        ({"account_id": 7}, "account_id: expected str, got int"),
        ({"user_id": ...}, "user_id: required field missing"),
        ({"type": ...}, "type: required field missing"),
        ({"type": ""}, "type: must be a non-empty string"),
        ({"timestamp": "soon"}, "timestamp: invalid datetime"),
        ({"metadata": [1]}, "metadata: expected object, got array"),
        ({"metadata": ...}, "metadata: required field missing"),
    ],
)
def test_each_rule_names_its_field(changes: dict[str, Any], error: str) -> None:
    batch = [generic(**changes), generic(event_id="ok")]
    result = validate_body(encode(batch), route_source="generic")
    [rejection] = result.rejected
    assert rejection.error == error
    assert [e.event_id for e in result.by_source["generic"]] == ["ok"]


def test_on_the_plain_webhook_a_generic_event_needs_its_source_named() -> None:
    bare = generic()
    tagged = generic(event_id="g-2", source="generic")
    result = validate_body(encode([bare, tagged]))
    [rejection] = result.rejected
    assert rejection.index == 0 and rejection.event_id == "g-1"
    assert rejection.error == (
        "source: required field missing; generic events go to POST /webhook/generic"
    )
    assert [e.event_id for e in result.by_source["generic"]] == ["g-2"]


def test_ad_events_on_the_generic_route_are_rejected() -> None:
    result = validate_body(encode([{"eventId": "x", "source": "facebook"}]), route_source="generic")
    [rejection] = result.rejected
    assert rejection.error.startswith("event_id: ")


def test_generic_is_not_a_funnel_source() -> None:
    assert FUNNEL_SOURCES == ("facebook", "tiktok")
    with pytest.raises(InvalidEvent, match=r"^source: expected 'facebook'"):
        parse_event(
            "facebook", encode(generic(source="generic")), received_at=RECEIVED, correlation_id=None
        )
