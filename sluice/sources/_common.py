"""What every source schema shares: result types, the base Structs, error wording.

A source module declares msgspec Structs for its events and a `SourceSchema` that names
them; `_validate.Validator` does the decoding for all sources alike.
"""

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

import msgspec

# --- results -------------------------------------------------------------------------


class BadBody(Exception):
    """The request body as a whole is unusable (HTTP 400); the message says why."""


class InvalidEvent(Exception):
    """One event does not validate; `error` names the field, as `Rejection.error` does."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


class ValidEvent(msgspec.Struct, frozen=True, gc=False):
    """A frozen msgspec Struct rather than a dataclass: one is made per accepted event,
    and this is ~8x cheaper to build and untracked by the cyclic GC."""

    event_id: str
    source: str
    raw: bytes  # the element's JSON exactly as sent, unknown fields included
    index: int  # position in the body (0 for a single object), as in Rejection


@dataclass(frozen=True, slots=True)
class Rejection:
    index: int  # position in the body (0 for a single object)
    event_id: str | None  # when it could be read
    error: str  # "<dotted.field.path>: <what is wrong>"
    # the event's own `source` when it names a known one (the metrics label); not compared
    source: str | None = dataclasses.field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Validated:
    by_source: dict[str, list[ValidEvent]]  # only sources with events, body order kept
    rejected: list[Rejection]
    duplicates: int  # later copies of an eventId already valid in this body, dropped
    # Those copies, so that a copy of a source the request may not send is refused with
    # it rather than counted a duplicate (not compared: `duplicates` says as much).
    copies: list[ValidEvent] = dataclasses.field(default_factory=list, compare=False)

    @property
    def accepted(self) -> int:
        return sum(len(events) for events in self.by_source.values())


# --- schema building blocks ----------------------------------------------------------

Stage = Literal["top", "bottom"]

# --- limits: what the store can hold and the reports can add up (README "Limits") ---
# Identifiers and everything else a btree index or a rollup key holds: 256 characters
# (at most 1 KiB of UTF-8), so the widest rollup key (city and country together) stays
# well under PostgreSQL's ~2.7 KB limit on an index entry.
MAX_ID_LENGTH = 256
# Other strings the schemas name (names, free text), stored only inside `data` (jsonb).
MAX_TEXT_LENGTH = 1000
MAX_INT4 = 2**31 - 1  # PostgreSQL integer
MAX_INT8 = 2**63 - 1  # PostgreSQL bigint
# purchaseAmount: numeric with at most 18 significant digits, at most 2 after the point,
# so sums over any number of rows stay exact in numeric and in Python's Decimal.
MAX_AMOUNT_DIGITS = 18
MAX_AMOUNT_PLACES = 2
# Event timestamps: from the Unix epoch to the end of year 9999 (Python's datetime range;
# PostgreSQL's timestamptz and the rollups' date_trunc go further), but before
# datetime.max, which asyncpg writes as PostgreSQL's `infinity`.
MIN_TIMESTAMP = datetime(1970, 1, 1, tzinfo=UTC)
END_TIMESTAMP = datetime.max.replace(tzinfo=UTC)  # exclusive
TIMESTAMP_RANGE = "out of range (1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999998Z)"

Id = Annotated[str, msgspec.Meta(max_length=MAX_ID_LENGTH)]
NonEmptyId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT_LENGTH)]
Int4 = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT4)]
Int8 = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT8)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]


class Data(msgspec.Struct, gc=False):
    """`data`: each source adds its `user`; `engagement` is decoded once the stage is known."""

    engagement: msgspec.Raw


class EventBase(msgspec.Struct, rename="camel", tag_field="source", gc=False):
    """The common envelope; a source subclasses it with `tag=<source name>`."""

    event_id: NonEmptyId
    timestamp: datetime  # naive means UTC
    funnel_stage: Stage
    event_type: str  # checked against the source's types for the stage
    data: Data


class RowFields(NamedTuple):
    """The source-specific columns of an `EventRow`."""

    user_id: str | None
    country: str | None
    campaign_id: str | None
    purchase_amount: Decimal | None
    account_id: str | None = None
    age: int | None = None
    gender: str | None = None
    city: str | None = None
    followers: int | None = None
    device: str | None = None
    video_id: str | None = None


class RoutedEvent(msgspec.Struct, gc=False):
    """Base of an untagged source's event (no `source` field, no funnel stages): it is
    decoded as that source only when the route or the envelope names the source."""

    event_id: NonEmptyId
    timestamp: datetime  # naive means UTC
    event_type: str

    funnel_stage: ClassVar[None] = None


@dataclass(frozen=True, slots=True)
class SourceSchema:
    """Everything the validator needs to know about one source.

    A tagged source's `event` is an `EventBase` declared with tag=name, with engagement
    Structs and allowed event types per funnel stage. An untagged source's `event` is a
    `RoutedEvent` (no stages: `engagement` and `event_types` stay empty, any type goes).
    """

    name: str
    event: type[EventBase] | type[RoutedEvent]
    engagement: Mapping[str, type[msgspec.Struct]]  # by funnel stage
    event_types: Mapping[str, frozenset[str]]  # by funnel stage
    row: Callable[[Any, Any], RowFields]  # (event, decoded engagement or None) -> columns
    revenue_types: frozenset[str] = frozenset()  # event types whose purchaseAmount is revenue
    # By funnel stage: (engagement) -> whether a typed float may hide a literal msgspec
    # read as 0 but jsonb refuses (1e-99999); then every number is read as written.
    may_hide_numbers: Mapping[str, Callable[[Any], bool]] = dataclasses.field(default_factory=dict)

    @property
    def tagged(self) -> bool:
        return issubclass(self.event, EventBase)


def field_error(field: str, message: str) -> ValueError:
    """For a Struct's `__post_init__`: msgspec reports it at the Struct, we at the field."""
    return ValueError(f"{_FIELD_MARK}{field}{_FIELD_MARK}{message}")


def check_amount(amount: Decimal | None) -> None:
    """purchaseAmount: a non-negative decimal of at most 18 digits, 2 after the point
    (or null). "1e3" reads as 1E+3 (a positive exponent), so it is refused too."""
    if amount is None:
        return
    if not amount.is_finite() or amount < 0:
        raise field_error("purchaseAmount", "invalid decimal")
    _, digits, exponent = amount.as_tuple()
    assert isinstance(exponent, int)  # finite
    if exponent > 0 or exponent < -MAX_AMOUNT_PLACES:
        raise field_error(
            "purchaseAmount", f"expected at most {MAX_AMOUNT_PLACES} decimal places, no exponent"
        )
    if len(digits) > MAX_AMOUNT_DIGITS:
        raise field_error("purchaseAmount", f"expected at most {MAX_AMOUNT_DIGITS} digits")


# --- error wording -------------------------------------------------------------------

_FIELD_MARK = "\x1f"
_AT = re.compile(r"^(.*?)(?: - at `\$(.*)`)?$", re.DOTALL)
_EXPECTED = re.compile(r"^Expected `(.+?)`, got `(.+?)`$")
_MISSING = re.compile(r"^Object missing required field `(.+)`$")
_ENUM = re.compile(r"^Invalid enum value (.+)$")
_PLAIN = {
    "Invalid RFC3339 encoded datetime": "invalid datetime",
    "Invalid decimal string": "invalid decimal",
    "Expected `str` of length >= 1": "must be a non-empty string",
    "Number out of range": "number out of range",
}
_LENGTH = re.compile(r"^Expected `str` of length <= (\d+)$")
_BOUND = re.compile(r"^Expected `(?:int|float)` (>=|<=) (\S+)$")

# Allowed values of each Literal field, by dotted path; None where sources disagree.
EnumPaths = Mapping[str, tuple[str, ...] | None]


def split_error(exc: msgspec.ValidationError, prefix: str = "") -> tuple[str, str]:
    """Turn msgspec's "Expected `int`, got `str` - at `$.data.user.age`" into
    ("data.user.age", "Expected `int`, got `str`"); `prefix` is where the decoded
    document sits in the event ("" for the event itself)."""
    match = _AT.match(str(exc))
    assert match is not None  # the pattern matches any text
    message, at = match.group(1), match.group(2) or ""
    path = join_path(prefix, at.removeprefix("."))
    if message.startswith(_FIELD_MARK):
        _, field, message = message.split(_FIELD_MARK, 2)
        return join_path(path, field), message
    missing = _MISSING.match(message)
    if missing:
        return join_path(path, missing.group(1)), "required field missing"
    return path, message


def describe(path: str, message: str, enums: EnumPaths) -> str:
    """The error text for a field: "<path>: <lower-case reason>"."""
    expected = _EXPECTED.match(message)
    if expected:
        reason = f"expected {expected.group(1)}, got {expected.group(2)}"
    elif message in _PLAIN:
        reason = _PLAIN[message]
    elif length := _LENGTH.match(message):
        reason = f"longer than {length.group(1)} characters"
    elif bound := _BOUND.match(message):
        side = "at least" if bound.group(1) == ">=" else "at most"
        reason = f"out of range (must be {side} {bound.group(2)})"
    elif enum := _ENUM.match(message):
        allowed = enums.get(path)
        got = enum.group(1)
        reason = (
            f"expected one of {', '.join(allowed)}, got {got}"
            if allowed
            else f"invalid value {got}"
        )
    else:
        reason = message[:1].lower() + message[1:]
    return f"{path or 'event'}: {reason}"


def join_path(prefix: str, rest: str) -> str:
    if not prefix:
        return rest
    if not rest:
        return prefix
    return prefix + rest if rest.startswith("[") else f"{prefix}.{rest}"


def enum_paths(struct: type[msgspec.Struct], prefix: str = "") -> dict[str, tuple[str, ...]]:
    """Map the dotted path of every Literal field under `struct` to its allowed values."""
    found: dict[str, tuple[str, ...]] = {}
    for field in msgspec.structs.fields(struct):
        path = join_path(prefix, field.encode_name)
        for member in _members(field.type):
            if typing.get_origin(member) is Literal:
                found[path] = tuple(str(v) for v in typing.get_args(member))
            elif isinstance(member, type) and issubclass(member, msgspec.Struct):
                found.update(enum_paths(member, path))
    return found


def merge_enum_paths(*maps: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[str, ...] | None]:
    merged: dict[str, tuple[str, ...] | None] = {}
    for mapping in maps:
        for path, allowed in mapping.items():
            merged[path] = allowed if merged.get(path, allowed) == allowed else None
    return merged


def _members(tp: Any) -> list[Any]:
    """The alternatives of a union (Optional included), unwrapping Annotated."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _members(typing.get_args(tp)[0])
    if origin is typing.Union or origin is types.UnionType:
        return [m for arg in typing.get_args(tp) for m in _members(arg)]
    return [tp]
