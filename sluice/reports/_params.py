"""Query parameters of the report endpoints: declared once, parsed and documented from here.

Each endpoint's parameters are a msgspec Struct (its encode names are the parameter names,
its types and `Meta` constraints the rules, its docstring-like `Meta.description`s the
docs). `parse(Struct, args)` reads a query string into one and raises `BadParam` naming
the first bad parameter; cross-parameter rules live in `__post_init__`.
"""

from __future__ import annotations

import types
import typing
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from sluice.sources import FUNNEL_SOURCES, SCHEMAS, SOURCE_NAMES

if typing.TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "GROUP_KEYS",
    "MAX_LIMIT",
    "AccountQuery",
    "BadParam",
    "CountriesQuery",
    "EventListQuery",
    "EventsQuery",
    "RangeQuery",
    "RevenueQuery",
    "TopQuery",
    "parse",
]

S = TypeVar("S", bound=msgspec.Struct)

MAX_LIMIT = 1000

# The funnel sources are the report sources (generic events have their own summary).
ReportSource = Literal["facebook", "tiktok"]
AnySource = Literal["facebook", "tiktok", "generic"]
assert typing.get_args(ReportSource) == FUNNEL_SOURCES, "keep in step with the registry"
assert typing.get_args(AnySource) == SOURCE_NAMES, "keep in step with the registry"

EVENT_TYPES: frozenset[str] = frozenset(
    t for name in FUNNEL_SOURCES for types_ in SCHEMAS[name].event_types.values() for t in types_
)
GROUP_KEYS: tuple[str, ...] = ("source", "funnelStage", "eventType", "country")
DEFAULT_GROUP_BY = "source,funnelStage,eventType"

Interval = Literal["minute", "hour", "day"]
Limit = Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]
# A cursor is the base64 of [instant, eventId]: an id of 256 4-byte characters makes ~1,430.
Cursor = Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]


class BadParam(Exception):
    """A query parameter is invalid: HTTP 400 `{"error": message, "field": field}`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _doc(text: str) -> msgspec.Meta:
    return msgspec.Meta(description=text)


_FROM = "ISO 8601 instant (or date), inclusive, on the event's own timestamp; naive = UTC"
_TO = "ISO 8601 instant (or date), exclusive; must not be before `from`"


class RangeQuery(msgspec.Struct, kw_only=True, rename="camel"):
    """`from`/`to` (default: all time) and `source` (default: facebook and tiktok)."""

    from_: Annotated[datetime | None, _doc(_FROM)] = msgspec.field(default=None, name="from")
    to: Annotated[datetime | None, _doc(_TO)] = None
    source: Annotated[ReportSource | None, _doc("only this source")] = None

    def __post_init__(self) -> None:
        if self.from_ is not None and self.to is not None and self.to < self.from_:
            raise BadParam("to", "must not be before from")

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.source,) if self.source else FUNNEL_SOURCES


class EventsQuery(RangeQuery, kw_only=True):
    funnel_stage: Annotated[Literal["top", "bottom"] | None, _doc("only this stage")] = None
    event_type: Annotated[Text | None, _doc("only this event type")] = None
    group_by: Annotated[str, _doc("comma list of " + ", ".join(GROUP_KEYS) + " (at least one)")] = (
        DEFAULT_GROUP_BY
    )
    interval: Annotated[Interval | None, _doc("add a series with buckets this wide")] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.event_type is not None and self.event_type not in EVENT_TYPES:
            raise BadParam("eventType", f"unknown event type {self.event_type!r}")
        keys = [k.strip() for k in self.group_by.split(",")]
        unknown = [k for k in keys if k not in GROUP_KEYS]
        if unknown or not keys:
            raise BadParam(
                "groupBy", f"expected a comma list of {', '.join(GROUP_KEYS)}, got {unknown[0]!r}"
            )

    @property
    def group_keys(self) -> tuple[str, ...]:
        keys = [k.strip() for k in self.group_by.split(",")]
        return tuple(k for k in GROUP_KEYS if k in keys)  # canonical order, no repeats


class RevenueQuery(RangeQuery, kw_only=True):
    campaign_id: Annotated[Text | None, _doc("only this campaign")] = None
    interval: Annotated[Interval | None, _doc("add a series with buckets this wide")] = None


class CountriesQuery(RangeQuery, kw_only=True):
    limit: Annotated[Limit | None, _doc("at most this many countries (default: all)")] = None


class TopQuery(RangeQuery, kw_only=True):
    entity: Annotated[Literal["campaigns", "users", "videos"], _doc("what to rank")]
    by: Annotated[Literal["events", "revenue"], _doc("rank by event count or revenue")] = "events"
    limit: Annotated[Limit, _doc("at most this many")] = 10


class AccountQuery(msgspec.Struct, kw_only=True):
    """Default: the 24 hours up to now."""

    from_: Annotated[datetime | None, _doc(_FROM + "; default `to` - 24 h")] = msgspec.field(
        default=None, name="from"
    )
    to: Annotated[datetime | None, _doc(_TO + "; default now")] = None

    def __post_init__(self) -> None:
        if self.from_ is not None and self.to is not None and self.to < self.from_:
            raise BadParam("to", "must not be before from")

    def window(self, now: datetime) -> tuple[datetime, datetime]:
        hi = self.to if self.to is not None else now
        if self.from_ is not None:
            return self.from_, max(hi, self.from_)
        try:
            return hi - timedelta(hours=24), hi
        except OverflowError:
            return datetime.min.replace(tzinfo=UTC), hi


class EventListQuery(msgspec.Struct, kw_only=True, rename="camel"):
    """Events in (occurredAt, eventId) order; follow `nextCursor` for the next page."""

    from_: Annotated[datetime | None, _doc(_FROM)] = msgspec.field(default=None, name="from")
    to: Annotated[datetime | None, _doc(_TO)] = None
    source: Annotated[AnySource | None, _doc("only this source")] = None
    event_type: Annotated[Text | None, _doc("only this event type")] = None
    limit: Annotated[Limit, _doc("page size")] = 100
    cursor: Annotated[Cursor | None, _doc("`nextCursor` of the previous page")] = None

    def __post_init__(self) -> None:
        if self.from_ is not None and self.to is not None and self.to < self.from_:
            raise BadParam("to", "must not be before from")


# --- parsing ---------------------------------------------------------------------------


def parse(struct: type[S], args: Mapping[str, str]) -> S:
    """Read query `args` into `struct`; raise BadParam naming the first bad parameter.

    A parameter the struct does not declare is refused (a typo such as `form=` would
    otherwise widen the report silently to all time).
    """
    fields = msgspec.structs.fields(struct)
    known = [f.encode_name for f in fields]
    unknown = [name for name in args if name not in known]
    if unknown:
        listed = ", ".join(repr(name[:64]) for name in unknown[:5])
        expected = f"expected {', '.join(known)}" if known else "this report takes none"
        raise BadParam(unknown[0][:64], f"unknown parameter {listed}; {expected}")
    values: dict[str, Any] = {}
    for f in fields:
        raw = args.get(f.encode_name)
        if raw is None:
            if f.required:
                raise BadParam(f.encode_name, "required")
            continue
        if "\x00" in raw:  # PostgreSQL text cannot hold it: it can match nothing
            raise BadParam(f.encode_name, "must not contain U+0000")
        values[f.name] = _convert(f.encode_name, raw, f.type)
    try:
        return struct(**values)
    except OverflowError:  # comparing extreme instants; anything else is a bug
        raise BadParam("to", "out of range") from None


def _convert(name: str, raw: str, tp: Any) -> Any:
    base, meta = _unwrap(tp)
    if datetime in base:
        return _instant(name, raw)
    target = base[0] if len(base) == 1 else typing.Union[tuple(base)]  # noqa: UP007
    if meta is not None:
        target = Annotated[target, meta]
    if int in base:
        raw_value: Any = raw.strip()
        if not raw_value.lstrip("+-").isdigit() or len(raw_value) > 20:
            raise BadParam(name, _expected(base, meta))
        raw_value = int(raw_value)
    else:
        raw_value = raw
    try:
        return msgspec.convert(raw_value, target)
    except msgspec.ValidationError:
        raise BadParam(name, _expected(base, meta)) from None


def _unwrap(tp: Any) -> tuple[list[Any], msgspec.Meta | None]:
    """The non-None alternatives of `tp` and the first constraint on them."""
    meta: msgspec.Meta | None = None
    origin = typing.get_origin(tp)
    if origin is Annotated:
        inner, *extras = typing.get_args(tp)
        base, inner_meta = _unwrap(inner)
        for extra in extras:
            if isinstance(extra, msgspec.Meta) and (extra.ge is not None or extra.min_length):
                meta = extra
        return base, meta or inner_meta
    if origin is typing.Union or origin is types.UnionType:
        found: list[Any] = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            base, inner_meta = _unwrap(arg)
            found += base
            meta = meta or inner_meta
        return found, meta
    return [tp], None


def _expected(base: list[Any], meta: msgspec.Meta | None) -> str:
    tp = base[0]
    if typing.get_origin(tp) is Literal:
        return "expected one of " + ", ".join(str(v) for v in typing.get_args(tp))
    if tp is int:
        if meta is not None and meta.ge is not None and meta.le is not None:
            return f"expected an integer from {meta.ge} to {meta.le}"
        return "expected an integer"
    if meta is not None and meta.max_length is not None:
        return f"expected a non-empty string of at most {meta.max_length} characters"
    return "invalid value"


def _instant(name: str, raw: str) -> datetime:
    text = raw.strip()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadParam(name, f"expected an ISO 8601 date or instant, got {raw[:64]!r}") from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise BadParam(name, "out of range") from None
