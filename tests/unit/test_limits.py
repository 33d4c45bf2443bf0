"""The limits of README "Limits": what the store can hold and the reports can add up.

Each limit is checked on both sides (the last value accepted, the first refused), at the
webhook (`validate_body`) and in the consumer's re-validation (`parse_event`), which must
agree.
"""

from __future__ import annotations

import json
import random
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice.sources import BadBody, InvalidEvent, parse_event, validate_body
from tests.factories import make_event, override

RECEIVED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
E = "data.engagement."
RAW = "@@raw@@"  # replaced by raw JSON text after encoding
INT4 = 2**31 - 1
INT8 = 2**63 - 1
MAX = "9999-12-31T23:59:59.999999Z"
TIMESTAMP_RANGE = "out of range (1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999998Z)"
PLACES = "expected at most 2 decimal places, no exponent"


def event(source: str, stage: str, /, **changes: Any) -> dict[str, Any]:
    """A valid event with `changes` applied at dotted paths."""
    kind = {"eventType": changes.pop("eventType")} if "eventType" in changes else {}
    made = make_event(source, stage, rng=random.Random(7), **kind)
    for path, value in changes.items():
        override(made, path, value)
    return made


def generic(**changes: Any) -> dict[str, Any]:
    made: dict[str, Any] = {
        "event_id": "g-1",
        "account_id": "acc-1",
        "user_id": "u-1",
        "type": "page.view",
        "timestamp": "2025-01-02T03:00:00Z",
        "metadata": {"path": "/pricing"},
    }
    made.update(changes)
    return made


def encode(value: Any, raw: str | None = None) -> bytes:
    body = json.dumps(value).encode()
    return body if raw is None else body.replace(json.dumps(RAW).encode(), raw.encode())


def outcome(body: bytes, route: str | None = None) -> str | None:
    """The error of the one event in `body` (None when accepted); the consumer agrees."""
    result = validate_body(body, route_source=route)
    assert result.accepted + len(result.rejected) == 1
    source = route or ("tiktok" if b'"source": "tiktok"' in body else "facebook")
    try:
        parse_event(source, body, received_at=RECEIVED, correlation_id=None)
        again = None
    except InvalidEvent as exc:
        again = exc.error
    error = result.rejected[0].error if result.rejected else None
    assert again == error, "the consumer's re-validation disagrees with the webhook"
    return error


def long(n: int) -> str:
    return "é" * n  # two bytes each in UTF-8: limits count characters


# (source, stage, dotted field, last accepted, first refused, reason)
BOUNDS: list[tuple[str, str, str, Any, Any, str]] = [
    ("facebook", "top", "eventId", long(256), long(257), "longer than 256 characters"),
    ("facebook", "top", "data.user.userId", long(256), long(257), "longer than 256 characters"),
    ("facebook", "top", "data.user.name", long(1000), long(1001), "longer than 1000 characters"),
    ("facebook", "top", "data.user.age", INT4, INT4 + 1, f"out of range (must be at most {INT4})"),
    ("facebook", "top", "data.user.age", 0, -1, "out of range (must be at least 0)"),
    (
        "facebook",
        "top",
        "data.user.location.country",
        long(256),
        long(257),
        "longer than 256 characters",
    ),
    (
        "facebook",
        "top",
        "data.user.location.city",
        long(256),
        long(257),
        "longer than 256 characters",
    ),
    ("facebook", "top", E + "videoId", long(256), long(257), "longer than 256 characters"),
    ("facebook", "top", E + "actionTime", long(1000), long(1001), "longer than 1000 characters"),
    ("facebook", "bottom", E + "campaignId", long(256), long(257), "longer than 256 characters"),
    ("facebook", "bottom", E + "adId", long(256), long(257), "longer than 256 characters"),
    ("facebook", "bottom", E + "purchaseAmount", "0.00", "-1", "invalid decimal"),
    ("facebook", "bottom", E + "purchaseAmount", "1.23", "1.234", PLACES),
    ("facebook", "bottom", E + "purchaseAmount", "1000", "1e3", PLACES),
    ("facebook", "bottom", E + "purchaseAmount", "1000", "1e1200", PLACES),
    ("facebook", "bottom", E + "purchaseAmount", "0", "NaN", "invalid decimal"),
    ("facebook", "bottom", E + "purchaseAmount", "0", "-Infinity", "invalid decimal"),
    ("facebook", "bottom", E + "purchaseAmount", 19.99, 19.999, PLACES),
    (
        "facebook",
        "bottom",
        E + "purchaseAmount",
        "9999999999999999.99",
        "99999999999999999.99",
        "expected at most 18 digits",
    ),
    (
        "facebook",
        "bottom",
        E + "purchaseAmount",
        "999999999999999999",
        "9999999999999999999",
        "expected at most 18 digits",
    ),
    (
        "tiktok",
        "top",
        "data.user.followers",
        INT8,
        INT8 + 1,
        f"out of range (must be at most {INT8})",
    ),
    ("tiktok", "top", "data.user.followers", 0, -1, "out of range (must be at least 0)"),
    ("tiktok", "top", "data.user.userId", long(256), long(257), "longer than 256 characters"),
    ("tiktok", "top", "data.user.username", long(1000), long(1001), "longer than 1000 characters"),
    ("tiktok", "top", E + "watchTime", 0, -0.5, "out of range (must be at least 0.0)"),
    ("tiktok", "top", E + "percentageWatched", 0.0, -1, "out of range (must be at least 0.0)"),
    ("tiktok", "top", E + "country", long(256), long(257), "longer than 256 characters"),
    ("tiktok", "top", E + "videoId", long(256), long(257), "longer than 256 characters"),
    ("tiktok", "bottom", E + "profileId", long(256), long(257), "longer than 256 characters"),
    (
        "tiktok",
        "bottom",
        E + "purchasedItem",
        long(1000),
        long(1001),
        "longer than 1000 characters",
    ),
    (
        "tiktok",
        "top",
        "timestamp",
        "1970-01-01T00:00:00Z",
        "1969-12-31T23:59:59.999999Z",
        TIMESTAMP_RANGE,
    ),
    (
        "tiktok",
        "top",
        "timestamp",
        "1970-01-01T01:00:00+01:00",
        "1970-01-01T00:59:59+01:00",
        TIMESTAMP_RANGE,
    ),
    (
        "tiktok",
        "top",
        "timestamp",
        "9999-12-31T23:59:59.999998Z",
        "9999-12-31T23:00:00-02:00",
        TIMESTAMP_RANGE,
    ),
    # asyncpg writes datetime.max as PostgreSQL's infinity
    ("tiktok", "top", "timestamp", "9999-12-31T23:59:59.999998+00:00", MAX, TIMESTAMP_RANGE),
    ("tiktok", "top", "timestamp", "9999-12-31T23:59:59", MAX[:-1], TIMESTAMP_RANGE),
    (
        "facebook",
        "top",
        "timestamp",
        "9999-12-31T23:59:59",
        "0001-01-01T00:00:00Z",
        TIMESTAMP_RANGE,
    ),
]


@pytest.mark.parametrize(
    ("source", "stage", "field", "good", "bad", "reason"),
    BOUNDS,
    ids=[f"{b[0]}-{b[2]}-{str(b[4])[:24]}" for b in BOUNDS],
)
def test_each_limit_accepts_its_last_value_and_names_the_field_past_it(
    source: str, stage: str, field: str, good: Any, bad: Any, reason: str
) -> None:
    kind = {"eventType": "checkout.complete"} if "purchaseAmount" in field else {}
    assert outcome(encode(event(source, stage, **kind, **{field: good}))) is None
    assert outcome(encode(event(source, stage, **kind, **{field: bad}))) == f"{field}: {reason}"


GENERIC_BOUNDS = [
    ("event_id", long(256), long(257)),
    ("account_id", long(256), long(257)),
    ("user_id", long(256), long(257)),
    ("type", long(256), long(257)),
]


@pytest.mark.parametrize(("field", "good", "bad"), GENERIC_BOUNDS)
def test_generic_identifiers_are_bounded(field: str, good: str, bad: str) -> None:
    assert outcome(encode(generic(**{field: good})), "generic") is None
    error = outcome(encode(generic(**{field: bad})), "generic")
    assert error == f"{field}: longer than 256 characters"


# Numbers anywhere: in fields the schema does not know, and in generic `metadata`.
STORABLE_NUMBERS = [
    "1e308",
    "-1.7976931348623157e308",
    "1e-999",
    "123456789012345678901234567890",
    "9" * 308,
    "1" + "0" * 400,
    "-" + "9" * 3999,
    "0." + "0" * 300 + "1",
    "1E+99",
    "1e0000000000000000000099",
]
UNSTORABLE_NUMBERS = [
    "1e309",
    "-1e400",
    "1e99999",
    "1e-1000",
    "1e-99999",
    "1" + "0" * 4000,
    "9" * 5000,
    "0." + "0" * 20000 + "1",
    "1e" + "9" * 5000,
]


@pytest.mark.parametrize("number", STORABLE_NUMBERS, ids=lambda n: n[:16])
def test_numbers_jsonb_and_json_readers_hold_are_accepted_anywhere(number: str) -> None:
    made = event("facebook", "top", **{"data.extra": [1, {"n": RAW}]})
    assert outcome(encode(made, number)) is None
    assert outcome(encode(generic(metadata={"n": RAW}), number), "generic") is None


@pytest.mark.parametrize("number", UNSTORABLE_NUMBERS, ids=lambda n: n[:16])
def test_numbers_that_cannot_be_stored_are_refused_anywhere(number: str) -> None:
    made = event("facebook", "top", **{"data.extra": [1, {"n": RAW}]})
    assert outcome(encode(made, number)) == "data.extra[1].n: number out of range"
    error = outcome(encode(generic(metadata={"n": RAW}), number), "generic")
    assert error == "metadata.n: number out of range"


@pytest.mark.parametrize("number", ["1e309", "1" + "0" * 400, "1e-99999", "-0e-99999"])
@pytest.mark.parametrize("field", ["watchTime", "percentageWatched"])
def test_a_declared_number_field_out_of_range_is_named(field: str, number: str) -> None:
    made = event("tiktok", "top", **{E + field: RAW})
    assert outcome(encode(made, number)) == f"data.engagement.{field}: number out of range"


def test_a_zero_written_plainly_is_a_zero() -> None:
    made = event("tiktok", "top", **{E + "watchTime": 0, E + "percentageWatched": 0.0})
    assert outcome(encode(made)) is None


def test_number_like_text_inside_strings_is_only_text() -> None:
    made = event("facebook", "top", **{"data.user.name": "a:1e99999,[" + "9" * 400})
    assert outcome(encode(made)) is None


def test_a_bad_number_rejects_its_event_only() -> None:
    good = event("facebook", "top", eventId="good")
    bad = event("facebook", "top", eventId="bad", **{"data.extra": RAW})
    result = validate_body(b"[" + encode(good) + b"," + encode(bad, "1e400") + b"]")
    assert [e.event_id for e in result.by_source["facebook"]] == ["good"]
    [rejection] = result.rejected
    assert (rejection.index, rejection.event_id, rejection.error) == (
        1,
        "bad",
        "data.extra: number out of range",
    )


def test_nul_and_bad_numbers_are_found_in_one_event() -> None:
    made = event("facebook", "top", **{"data.extra": RAW, "data.user.name": "a\x00"})
    assert (
        outcome(encode(made, "1e400")) == "data.user.name: contains U+0000, which cannot be stored"
    )


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"eventId": "x", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'[{"a": 1}, ' + b"{" + b'"a":{' * 3000 + b"}" * 3001 + b"]",
    ],
    ids=["array", "object", "second-element"],
)
def test_nesting_past_the_decoders_depth_is_a_bad_body(body: bytes) -> None:
    with pytest.raises(BadBody) as info:
        validate_body(body)
    assert str(info.value) == "malformed JSON: nested too deeply"


# --- property: purchaseAmount is accepted exactly when numeric(18, 2) holds it as sent ---

AMOUNT_TEXT = re.compile(r"^[0-9]+(\.[0-9]*)?$")


@given(
    integer=st.text("0123456789", min_size=1, max_size=21),
    fraction=st.none() | st.text("0123456789", max_size=4),
)
def test_amount_accepted_iff_at_most_18_digits_and_2_places(
    integer: str, fraction: str | None
) -> None:
    text = integer if fraction is None else f"{integer}.{fraction}"
    made = event("tiktok", "bottom", eventType="purchase", **{E + "purchaseAmount": text})
    error = outcome(encode(made))
    places = 0 if fraction is None else len(fraction)
    significant = (integer + (fraction or "")).lstrip("0")
    fits = places <= 2 and len(significant) <= 18
    assert (error is None) == fits, (text, error)
    if error is None:
        row = parse_event("tiktok", encode(made), received_at=RECEIVED, correlation_id=None)
        assert row.purchase_amount == Decimal(text)
        assert row.revenue == Decimal(text)


def test_a_huge_integer_next_to_a_huge_exponent_is_named_not_a_crash() -> None:
    made = generic(metadata={"a": RAW, "b": 1})
    body = encode(made, "1e" + "9" * 5000 + ', "c": ' + "9" * 5000)
    assert outcome(body, "generic") == "metadata.a: number out of range"


def _at_depth(frames: int, call: Any) -> Any:
    """`call()` from `frames` Python frames down, as a request handler runs."""
    return call() if frames == 0 else _at_depth(frames - 1, call)


@pytest.mark.parametrize(
    ("inner", "error"),
    [
        ("1", None),
        ("1e400", "number out of range"),
        ('"a\\u0000"', "contains U+0000, which cannot be stored"),
    ],
)
def test_values_nested_as_deep_as_the_decoder_allows_are_checked(
    inner: str, error: str | None
) -> None:
    depth = 500  # msgspec counts the caller's Python frames against its ~1,000 too
    made = event("facebook", "top", **{"data.extra": RAW})
    body = encode(made, "[" * depth + inner + "]" * depth)
    result = _at_depth(400, lambda: validate_body(body))
    if error is None:
        assert result.rejected == []
    else:
        path = ("data.extra" + "[0]" * depth)[:997] + "..."  # paths are cut at 1,000
        assert result.rejected[0].error == f"{path}: {error}"


def test_an_event_too_deep_for_a_deeper_stack_is_rejected_not_raised() -> None:
    made = event("facebook", "top", **{"data.extra": RAW})
    body = encode(made, "[" * 900 + "]" * 900)
    assert validate_body(body).rejected == []  # fine from a shallow stack
    with pytest.raises(InvalidEvent) as info:
        _at_depth(
            300, lambda: parse_event("facebook", body, received_at=RECEIVED, correlation_id=None)
        )
    assert info.value.error == "event: nested too deeply"


def test_at_every_depth_validate_body_answers_or_raises_bad_body() -> None:
    made = event("facebook", "top", **{"data.extra": RAW})
    outcomes = set()
    for depth in range(650, 720):
        body = b"[" + encode(made, "[" * depth + "]" * depth) + b"]"
        try:
            result = _at_depth(300, lambda body=body: validate_body(body))
        except BadBody as exc:
            outcomes.add(str(exc))
        else:
            outcomes.add(result.rejected[0].error if result.rejected else "accepted")
    assert outcomes <= {"accepted", "event: nested too deeply", "malformed JSON: nested too deeply"}


def test_a_field_path_in_an_error_is_at_most_1000_characters() -> None:
    made = event("facebook", "top", **{"data.extra": {"k" * 100_000: RAW}})
    error = outcome(encode(made, "1e400"))
    assert error == "data.extra." + "k" * (1000 - 14) + "...: number out of range"
