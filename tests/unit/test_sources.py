"""Event validation against the contract in docs/events.md (sluice.sources)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from sluice.ports import EventRow
from sluice.sources import (
    SOURCE_NAMES,
    BadBody,
    InvalidEvent,
    Rejection,
    Validated,
    ValidEvent,
    parse_event,
    validate_body,
)
from tests.factories import (
    EVENT_TYPES,
    MISSING,
    PURCHASE_TYPES,
    make_event,
    make_events,
    override,
)

RECEIVED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
COMBOS = [(src, stage, t) for (src, stage), types in EVENT_TYPES.items() for t in types]


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


def event(source: str = "facebook", stage: str = "top", /, **changes: Any) -> dict[str, Any]:
    """A valid event with `changes` applied; keys are dotted paths ("data.user.age")."""
    rng = random.Random(f"{source}{stage}{sorted(changes)}")
    kind = {"eventType": changes.pop("eventType")} if "eventType" in changes else {}
    made = make_event(source, stage, rng=rng, **kind)
    for path, value in changes.items():
        override(made, path, value)
    return made


def only_error(body: bytes, **kwargs: Any) -> str:
    result = validate_body(body, **kwargs)
    assert result.accepted == 0
    assert len(result.rejected) == 1
    return result.rejected[0].error


def test_source_names() -> None:
    assert SOURCE_NAMES == ("facebook", "tiktok", "generic")


# --- valid events --------------------------------------------------------------------


@pytest.mark.parametrize(("source", "stage", "event_type"), COMBOS)
def test_every_source_stage_and_type_is_accepted(source: str, stage: str, event_type: str) -> None:
    body = encode(event(source, stage, eventType=event_type))
    result = validate_body(body)
    assert result.rejected == []
    assert result.duplicates == 0
    assert result.accepted == 1
    [valid] = result.by_source[source]
    assert valid == ValidEvent(json.loads(body)["eventId"], source, body, 0)


def test_a_generated_batch_is_all_accepted() -> None:
    events = make_events(300, seed=3)
    result = validate_body(encode(events))
    assert result.rejected == []
    assert result.accepted == 300
    assert {src for src, _, _ in COMBOS} == set(result.by_source)
    seen = {(e["source"], e["funnelStage"], e["eventType"]) for e in events}
    assert seen == set(COMBOS)


def test_factory_events_are_realistic() -> None:
    for e in make_events(100, seed=11):
        purchase = e["data"]["engagement"].get("purchaseAmount")
        assert (purchase is not None) == (e["eventType"] in PURCHASE_TYPES)
    assert len({e["eventId"] for e in make_events(500, seed=1)}) == 500
    assert make_events(20, seed=5, now=RECEIVED) == make_events(20, seed=5, now=RECEIVED)


@pytest.mark.parametrize(
    ("source", "stage", "changes"),
    [
        ("facebook", "top", {"data.engagement.videoId": None}),
        ("facebook", "bottom", {"data.engagement.purchaseAmount": None}),
        ("facebook", "bottom", {"data.engagement.purchaseAmount": "0"}),
        ("facebook", "bottom", {"data.engagement.purchaseAmount": "9999999999999999.99"}),
        ("facebook", "bottom", {"data.engagement.purchaseAmount": 19.99}),
        ("facebook", "bottom", {"data.engagement.purchaseAmount": 20}),
        ("tiktok", "top", {"data.engagement.watchTime": 12}),
        ("tiktok", "top", {"data.engagement.percentageWatched": 100}),
        ("tiktok", "bottom", {"data.engagement.profileId": "p1"}),
        ("tiktok", "bottom", {"data.engagement.purchasedItem": None}),
        ("tiktok", "top", {"timestamp": "2024-05-01T12:00:00"}),
        ("tiktok", "top", {"timestamp": "2024-05-01T12:00:00+02:00"}),
        ("tiktok", "top", {"timestamp": "2024-05-01T12:00:00.123456Z"}),
        ("facebook", "top", {"eventId": " "}),
    ],
)
def test_edge_values_that_are_valid(source: str, stage: str, changes: dict[str, Any]) -> None:
    result = validate_body(encode(event(source, stage, **changes)))
    assert result.rejected == []
    assert result.accepted == 1


def test_unknown_fields_are_allowed_and_kept_in_raw() -> None:
    e = event("tiktok", "bottom")
    e["extra"] = {"nested": [1, 2, {"deep": True}]}
    e["data"]["note"] = "hello"
    e["data"]["user"]["verified"] = True
    e["data"]["engagement"]["sessionId"] = "s-1"
    body = encode([e])
    [valid] = validate_body(body).by_source["tiktok"]
    assert json.loads(valid.raw) == e
    row = parse_event("tiktok", valid.raw, received_at=RECEIVED, correlation_id="c")
    assert json.loads(row.data)["extra"] == {"nested": [1, 2, {"deep": True}]}


def test_raw_is_the_publishers_bytes_exactly() -> None:
    one = b'{ "eventId" : "e1", "extra": 1.50e2,\n "source":"facebook"'
    one += b', "timestamp":"2024-05-01T12:00:00Z","funnelStage":"top","eventType":"comment",'
    one += b'"data":{"user":{"userId":"u","name":"n","age":3,"gender":"male",'
    one += b'"location":{"country":"US","city":"x"}},'
    one += b'"engagement":{"actionTime":"t","referrer":"groups","videoId":null}} }'
    assert validate_body(b" \n" + one + b"\n").by_source["facebook"][0].raw == one
    body = b"[ " + one + b" ,\n\t" + one.replace(b'"e1"', b'"e2"') + b" ]"
    raws = [v.raw for v in validate_body(body).by_source["facebook"]]
    assert raws == [one, one.replace(b'"e1"', b'"e2"')]


# --- one rule broken at a time ---------------------------------------------------------

MISSING_FIELD = "required field missing"
TIMESTAMP_OUT_OF_RANGE = "out of range (1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999998Z)"
E = "data.engagement."
FACEBOOK_RULES: list[tuple[str, str, Any, str]] = [
    # (stage, dotted field, value, reason): the error is "<field>: <reason>"
    ("top", "eventId", MISSING, MISSING_FIELD),
    ("top", "eventId", "", "must be a non-empty string"),
    ("top", "eventId", 123, "expected str, got int"),
    ("top", "timestamp", MISSING, MISSING_FIELD),
    ("top", "timestamp", "yesterday", "invalid datetime"),
    ("top", "timestamp", "2024-05-01", "invalid datetime"),
    ("top", "timestamp", "2024-13-01T00:00:00Z", "invalid datetime"),
    ("top", "timestamp", 1714567890, "expected datetime, got int"),
    (
        "top",
        "timestamp",
        "0001-01-01T00:00:00+01:00",
        "out of range (1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999998Z)",
    ),
    ("top", "source", MISSING, MISSING_FIELD),
    ("top", "source", "myspace", "expected one of facebook, tiktok, generic, got 'myspace'"),
    ("top", "source", 7, "expected one of facebook, tiktok, generic"),
    ("top", "funnelStage", MISSING, MISSING_FIELD),
    ("top", "funnelStage", "middle", "expected one of top, bottom, got 'middle'"),
    ("top", "funnelStage", None, "expected str, got null"),
    ("top", "eventType", MISSING, MISSING_FIELD),
    ("top", "eventType", 5, "expected str, got int"),
    ("top", "eventType", "ad.click", "'ad.click' is not a top event type for facebook"),
    ("bottom", "eventType", "page.like", "'page.like' is not a bottom event type for facebook"),
    ("bottom", "eventType", "purchase", "'purchase' is not a bottom event type for facebook"),
    ("top", "data", MISSING, MISSING_FIELD),
    ("top", "data", None, "expected object, got null"),
    ("top", "data.user", MISSING, MISSING_FIELD),
    ("top", "data.user", "u1", "expected object, got str"),
    ("top", "data.engagement", MISSING, MISSING_FIELD),
    ("top", "data.engagement", [], "expected object, got array"),
    ("top", "data.user.userId", 42, "expected str, got int"),
    ("top", "data.user.name", None, "expected str, got null"),
    ("top", "data.user.age", "30", "expected int, got str"),
    ("top", "data.user.age", True, "expected int, got bool"),
    ("top", "data.user.age", 30.5, "expected int, got float"),
    ("top", "data.user.age", MISSING, MISSING_FIELD),
    ("top", "data.user.gender", "other", "expected one of male, female, non-binary, got 'other'"),
    ("top", "data.user.location", MISSING, MISSING_FIELD),
    ("top", "data.user.location.country", MISSING, MISSING_FIELD),
    ("top", "data.user.location.city", 5, "expected str, got int"),
    ("top", E + "actionTime", MISSING, MISSING_FIELD),
    (
        "top",
        E + "referrer",
        "search",
        "expected one of newsfeed, marketplace, groups, got 'search'",
    ),
    ("top", E + "videoId", 5, "expected str | null, got int"),
    ("top", E + "videoId", MISSING, MISSING_FIELD),
    ("bottom", E + "adId", MISSING, MISSING_FIELD),
    ("bottom", E + "campaignId", 5, "expected str, got int"),
    (
        "bottom",
        E + "clickPosition",
        "middle",
        "expected one of top_left, bottom_right, center, got 'middle'",
    ),
    ("bottom", E + "device", "tablet", "expected one of mobile, desktop, got 'tablet'"),
    ("bottom", E + "browser", "Edge", "expected one of Chrome, Firefox, Safari, got 'Edge'"),
    ("bottom", E + "browser", "chrome", "expected one of Chrome, Firefox, Safari, got 'chrome'"),
    ("bottom", E + "purchaseAmount", MISSING, MISSING_FIELD),
    ("bottom", E + "purchaseAmount", "abc", "invalid decimal"),
    ("bottom", E + "purchaseAmount", "12,50", "invalid decimal"),
    ("bottom", E + "purchaseAmount", "-1.00", "invalid decimal"),
    ("bottom", E + "purchaseAmount", -3, "invalid decimal"),
    ("bottom", E + "purchaseAmount", "NaN", "invalid decimal"),
    ("bottom", E + "purchaseAmount", "Infinity", "invalid decimal"),
    ("bottom", E + "purchaseAmount", True, "expected decimal | null, got bool"),
    ("bottom", E + "purchaseAmount", {}, "expected decimal | null, got object"),
]
TIKTOK_RULES: list[tuple[str, str, Any, str]] = [
    ("top", "eventType", "page.like", "'page.like' is not a top event type for tiktok"),
    ("bottom", "eventType", "like", "'like' is not a bottom event type for tiktok"),
    ("top", "data.user.userId", None, "expected str, got null"),
    ("top", "data.user.username", MISSING, MISSING_FIELD),
    ("top", "data.user.followers", "many", "expected int, got str"),
    ("top", "data.user.followers", 1.5, "expected int, got float"),
    ("top", "data.user.followers", False, "expected int, got bool"),
    ("top", E + "watchTime", "long", "expected float, got str"),
    ("top", E + "watchTime", MISSING, MISSING_FIELD),
    ("top", E + "percentageWatched", True, "expected float, got bool"),
    ("top", E + "device", "Windows", "expected one of Android, iOS, Desktop, got 'Windows'"),
    ("top", E + "device", "mobile", "expected one of Android, iOS, Desktop, got 'mobile'"),
    ("top", E + "country", MISSING, MISSING_FIELD),
    ("top", E + "videoId", None, "expected str, got null"),
    ("bottom", E + "actionTime", 5, "expected str, got int"),
    ("bottom", E + "profileId", 5, "expected str | null, got int"),
    ("bottom", E + "purchasedItem", MISSING, MISSING_FIELD),
    ("bottom", E + "purchaseAmount", "12.5.0", "invalid decimal"),
    ("bottom", E + "purchaseAmount", "-0.01", "invalid decimal"),
]
RULES = [("facebook", *rule) for rule in FACEBOOK_RULES] + [
    ("tiktok", *rule) for rule in TIKTOK_RULES
]


@pytest.mark.parametrize(
    ("source", "stage", "field", "value", "reason"), RULES, ids=[f"{r[0]}-{r[2]}" for r in RULES]
)
def test_each_rule_names_its_field(
    source: str, stage: str, field: str, value: Any, reason: str
) -> None:
    error = f"{field}: {reason}"
    e = event(source, stage, **{field: value})
    assert only_error(encode(e)) == error
    # The consumer's re-validation says the same.
    if isinstance(e.get("source"), str) and e["source"] in SOURCE_NAMES:
        with pytest.raises(InvalidEvent) as info:
            parse_event(e["source"], encode(e), received_at=RECEIVED, correlation_id=None)
        assert info.value.error == error
        assert str(info.value) == error


def test_rejection_carries_index_and_event_id() -> None:
    bad = event("facebook", "top", **{"data.user.age": "x"})
    result = validate_body(encode([event("tiktok"), bad]))
    assert result.rejected == [Rejection(1, bad["eventId"], "data.user.age: expected int, got str")]
    no_id = event("facebook", "top", eventId=MISSING, source="nope")
    wrong_id = event("facebook", "top", eventId=["x"])
    result = validate_body(encode([no_id, wrong_id]))
    assert [(r.index, r.event_id) for r in result.rejected] == [(0, None), (1, None)]


@pytest.mark.parametrize(
    ("element", "error"),
    [
        (1, "event: expected object, got int"),
        ("x", "event: expected object, got str"),
        (None, "event: expected object, got null"),
        ([{"eventId": "a"}], "event: expected object, got array"),
        ({}, "source: required field missing"),
    ],
)
def test_array_elements_that_are_not_events(element: Any, error: str) -> None:
    result = validate_body(encode([event(), element]))
    assert result.accepted == 1
    assert result.rejected == [Rejection(1, None, error)]


def test_nul_characters_are_rejected_where_they_cannot_be_stored() -> None:
    e = event("tiktok", "top")
    e["data"]["user"]["bio"] = "a\x00b"
    assert only_error(encode(e)) == "data.user.bio: contains U+0000, which cannot be stored"
    e = event("facebook", "top")
    e["tags"] = ["ok", {"k\x00": 1}]
    assert only_error(encode(e)) == "tags[1].k\x00: contains U+0000, which cannot be stored"
    with pytest.raises(InvalidEvent):
        parse_event("facebook", encode(e), received_at=RECEIVED, correlation_id=None)
    # An escaped backslash followed by "u0000" is just text.
    e = event("facebook", "top", note="\\u0000")
    assert b"\\\\u0000" in encode(e)
    assert validate_body(encode(e)).accepted == 1


# --- batches ------------------------------------------------------------------------


def test_mixed_batch_keeps_valid_events_in_order() -> None:
    events = [
        event("facebook", "top", eventId="f1"),
        event("tiktok", "bottom", eventId="t1"),
        event("facebook", "bottom", eventId="bad1", **{"data.engagement.device": "tv"}),
        event("facebook", "bottom", eventId="f2"),
        event("tiktok", "top", eventId="bad2", eventType="purchase"),
        event("tiktok", "top", eventId="t2"),
    ]
    result = validate_body(encode(events))
    assert {s: [v.event_id for v in vs] for s, vs in result.by_source.items()} == {
        "facebook": ["f1", "f2"],
        "tiktok": ["t1", "t2"],
    }
    assert all(v.source == s for s, vs in result.by_source.items() for v in vs)
    assert [(r.index, r.event_id) for r in result.rejected] == [(2, "bad1"), (4, "bad2")]
    assert [v.index for v in result.by_source["facebook"]] == [0, 3]
    assert [v.index for v in result.by_source["tiktok"]] == [1, 5]
    assert result.accepted == 4
    assert result.duplicates == 0


def test_duplicates_in_a_body_are_dropped_and_counted() -> None:
    a, b = event("facebook", eventId="a"), event("tiktok", eventId="b")
    a_again = event("facebook", "bottom", eventId="a")  # same id, other content
    a_as_tiktok = event("tiktok", eventId="a")
    result = validate_body(encode([a, b, a_again, b, a_as_tiktok]))
    assert [v.event_id for v in result.by_source["facebook"]] == ["a"]
    assert [v.event_id for v in result.by_source["tiktok"]] == ["b"]
    assert result.by_source["facebook"][0].raw == encode(a)
    assert result.duplicates == 3
    assert result.rejected == []


def test_an_invalid_first_copy_does_not_shadow_a_valid_later_one() -> None:
    bad = event("facebook", eventId="x", **{"data.user.age": None})
    good = event("facebook", eventId="x")
    bad_again = event("facebook", eventId="x", funnelStage="side")
    result = validate_body(encode([bad, good, bad_again, good]))
    assert [v.raw for v in result.by_source["facebook"]] == [encode(good)]
    assert [r.index for r in result.rejected] == [0, 2]
    assert result.duplicates == 1


def test_empty_array_is_valid() -> None:
    assert validate_body(b"[]") == Validated({}, [], 0)
    assert validate_body(b" [ ]\n").accepted == 0


# --- route source -------------------------------------------------------------------


def test_route_source_must_match_each_event() -> None:
    body = encode([event("tiktok", eventId="t"), event("facebook", eventId="f")])
    result = validate_body(body, route_source="tiktok")
    assert [v.event_id for v in result.by_source["tiktok"]] == ["t"]
    assert result.rejected == [
        Rejection(1, "f", "source: expected 'tiktok' (from the URL), got 'facebook'")
    ]


def test_route_mismatch_is_reported_before_other_errors() -> None:
    e = event("facebook", **{"data.user.age": "x"})
    assert only_error(encode(e), route_source="tiktok") == (
        "source: expected 'tiktok' (from the URL), got 'facebook'"
    )
    e = event("facebook", source="myspace")
    assert only_error(encode(e), route_source="tiktok") == (
        "source: expected 'tiktok' (from the URL), got 'myspace'"
    )
    e = event("facebook", source=MISSING)
    assert only_error(encode(e), route_source="tiktok") == "source: required field missing"


def test_unknown_route_source_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="myspace"):
        validate_body(b"[]", route_source="myspace")


# --- bodies that are unusable as a whole ---------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty body"),
        (b" \r\n\t", "empty body"),
        (b"{", "malformed JSON: input data was truncated"),
        (b'[{"eventId": "a"},', "malformed JSON: input data was truncated"),
        (b'{"a": tru}', "malformed JSON: invalid character (byte 7)"),
        (b"[1,]", "malformed JSON: trailing comma in array (byte 3)"),
        (b'{"a": 1} {"b": 2}', "malformed JSON: trailing characters (byte 10)"),
        (b"not json", "malformed JSON: invalid character (byte 4)"),
        (b'"hello"', "body must be a JSON object or array of objects, got string"),
        (b"42", "body must be a JSON object or array of objects, got number"),
        (b"-1.5", "body must be a JSON object or array of objects, got number"),
        (b"true", "body must be a JSON object or array of objects, got boolean"),
        (b" null ", "body must be a JSON object or array of objects, got null"),
        (b'{"a": "\xff"}', "body is not valid UTF-8 (byte 7)"),
    ],
)
def test_bad_bodies(body: bytes, message: str) -> None:
    with pytest.raises(BadBody) as info:
        validate_body(body)
    assert str(info.value) == message


# --- decimals and parse_event --------------------------------------------------------


def row_of(e: dict[str, Any]) -> EventRow:
    [valid] = validate_body(encode(e)).by_source[e["source"]]
    return parse_event(valid.source, valid.raw, received_at=RECEIVED, correlation_id="c-1")


@pytest.mark.parametrize("amount", ["624844.19", 624844.19, "0.10", "9999999999999999.99"])
def test_purchase_amount_stays_exact(amount: str | float) -> None:
    e = event("facebook", "bottom", eventType="checkout.complete")
    e["data"]["engagement"]["purchaseAmount"] = amount
    row = row_of(e)
    assert isinstance(row.purchase_amount, Decimal)
    assert str(row.purchase_amount) == str(amount)


def test_a_json_number_amount_is_read_from_its_text_not_through_a_float() -> None:
    e = event("tiktok", "bottom", eventType="purchase")
    e["data"]["engagement"]["purchaseAmount"] = "@"
    raw = encode(e).replace(b'"@"', b"9999999999999999.99")  # not exact as a double
    [valid] = validate_body(raw).by_source["tiktok"]
    row = parse_event("tiktok", valid.raw, received_at=RECEIVED, correlation_id=None)
    assert row.purchase_amount == Decimal("9999999999999999.99")


def test_parse_event_facebook_bottom() -> None:
    e = event(
        "facebook", "bottom", eventType="checkout.complete", timestamp="2024-05-01T14:00:00+02:00"
    )
    e["data"]["engagement"]["purchaseAmount"] = "120.50"
    row = row_of(e)
    assert row == EventRow(
        event_id=e["eventId"],
        source="facebook",
        funnel_stage="bottom",
        event_type="checkout.complete",
        occurred_at=datetime(2024, 5, 1, 12, tzinfo=UTC),
        received_at=RECEIVED,
        user_id=e["data"]["user"]["userId"],
        country=e["data"]["user"]["location"]["country"],
        campaign_id=e["data"]["engagement"]["campaignId"],
        purchase_amount=Decimal("120.50"),
        correlation_id="c-1",
        data=encode(e).decode(),
        revenue=Decimal("120.50"),
        age=e["data"]["user"]["age"],
        gender=e["data"]["user"]["gender"],
        city=e["data"]["user"]["location"]["city"],
    )
    assert row.occurred_at.tzinfo is UTC


def test_parse_event_facebook_top() -> None:
    e = event("facebook", "top", timestamp="2024-05-01T12:00:00")
    row = row_of(e)
    assert row.occurred_at == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert row.occurred_at.utcoffset() == timedelta(0)
    assert (row.country, row.campaign_id, row.purchase_amount) == (
        e["data"]["user"]["location"]["country"],
        None,
        None,
    )


def test_parse_event_tiktok() -> None:
    top = event("tiktok", "top", eventType="share", timestamp="2024-05-01T12:00:00.5-05:00")
    row = row_of(top)
    assert (row.funnel_stage, row.event_type, row.user_id, row.country) == (
        "top",
        "share",
        top["data"]["user"]["userId"],
        top["data"]["engagement"]["country"],
    )
    assert row.occurred_at == datetime(2024, 5, 1, 17, 0, 0, 500000, tzinfo=UTC)
    assert (row.campaign_id, row.purchase_amount) == (None, None)

    bottom = event("tiktok", "bottom", eventType="purchase")
    bottom["data"]["engagement"]["purchaseAmount"] = "19.99"
    row = row_of(bottom)
    assert (row.country, row.campaign_id, row.purchase_amount) == (None, None, Decimal("19.99"))
    assert json.loads(row.data) == bottom


@pytest.mark.parametrize(("source", "stage", "event_type"), COMBOS)
def test_parse_event_round_trip(source: str, stage: str, event_type: str) -> None:
    e = event(source, stage, eventType=event_type)
    row = row_of(e)
    assert (row.event_id, row.source, row.funnel_stage, row.event_type) == (
        e["eventId"],
        source,
        stage,
        event_type,
    )
    assert row.data == encode(e).decode()
    assert row.occurred_at.tzinfo is UTC
    assert row.correlation_id == "c-1"


def test_parse_event_rejects_what_no_longer_fits() -> None:
    raw = encode(event("facebook"))
    with pytest.raises(InvalidEvent, match=r"^source: expected 'tiktok', got 'facebook'$"):
        parse_event("tiktok", raw, received_at=RECEIVED, correlation_id=None)
    with pytest.raises(InvalidEvent, match=r"^source: 'myspace' is not a known source$"):
        parse_event("myspace", raw, received_at=RECEIVED, correlation_id=None)
    with pytest.raises(InvalidEvent, match=r"^event: not valid UTF-8 \(byte 2\)$"):
        parse_event("facebook", b'{"\xff": 1}', received_at=RECEIVED, correlation_id=None)
    with pytest.raises(InvalidEvent, match=r"^event: expected object, got array$"):
        parse_event("facebook", b"[]", received_at=RECEIVED, correlation_id=None)


def test_parse_event_accepts_any_whole_event_from_an_envelope() -> None:
    # The consumer reads raws back out of an envelope encoded with msgspec.Raw.
    result = validate_body(encode(make_events(30, seed=9)))
    envelope = msgspec.json.encode([msgspec.Raw(v.raw) for v in result.by_source["tiktok"]])
    raws = msgspec.json.decode(envelope, type=list[msgspec.Raw])
    rows = [
        parse_event("tiktok", bytes(r), received_at=RECEIVED, correlation_id=None) for r in raws
    ]
    assert [r.event_id for r in rows] == [v.event_id for v in result.by_source["tiktok"]]


def test_occurred_at_is_utc_for_any_offset() -> None:
    stamp = datetime(2024, 2, 29, 23, 30, tzinfo=timezone(timedelta(hours=-9, minutes=-30)))
    row = row_of(event("tiktok", timestamp=stamp.isoformat()))
    assert row.occurred_at == stamp
    assert row.occurred_at.tzinfo is UTC
