"""Decoding and checking events against the registered source schemas.

The body is parsed once into `msgspec.Raw` slices (one per event, no copies), then each
slice is decoded into its source's Struct by a cached Decoder, so an error belongs to one
event and `ValidEvent.raw` is the publisher's own bytes.
"""

import math
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from sluice.ports import EventRow

from ._common import (
    END_TIMESTAMP,
    MIN_TIMESTAMP,
    TIMESTAMP_RANGE,
    BadBody,
    EnumPaths,
    EventBase,
    InvalidEvent,
    Rejection,
    RoutedEvent,
    SourceSchema,
    Validated,
    ValidEvent,
    describe,
    enum_paths,
    join_path,
    merge_enum_paths,
    split_error,
)
from ._strict import strict_twin

_JSON_SPACE = b" \t\n\r"
_NUL = b"\\u0000"  # PostgreSQL's jsonb cannot store U+0000
# Numbers anywhere in an event (unknown fields and metadata too) must be what jsonb can
# hold (at most 131,072 digits before the point and 16,383 after) and a JSON reader can
# read back: at most 4,000 characters; with a fraction or exponent, finite as a double
# and an exponent within +-999. Typed fields are checked by msgspec as they are decoded;
# other values only when `_check` says msgspec did not read them all (unknown fields), or
# when the event is long enough to hold a longer number.
MAX_NUMBER_LENGTH = 4000
_LONG_DIGITS = re.compile(rb"(?<![eE\d])(?<![eE][+-])\d{%d,}" % MAX_NUMBER_LENGTH)
MAX_EXPONENT = 999
_INT_BOUND = 10**MAX_NUMBER_LENGTH  # integers of at most MAX_NUMBER_LENGTH digits
# msgspec counts the caller's Python frames against its nesting limit, so an event the
# webhook's body split could read may be too deep for a decode from a deeper stack.
_TOO_DEEP = "event: nested too deeply"
_JSON_TYPES = {str: "string", int: "number", float: "number", bool: "boolean"}
_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
_raw_one = msgspec.json.Decoder(msgspec.Raw)


class _Probe(msgspec.Struct):
    """Read only after an event failed: what can still be said about it."""

    eventId: Any = None  # the wire name
    event_id: Any = None  # the wire name of untagged sources
    source: Any = None


_probe = msgspec.json.Decoder(_Probe)


class _Plan:
    """Per source: the schema plus, per funnel stage, the engagement decoder."""

    __slots__ = ("engagement", "schema")

    def __init__(self, schema: SourceSchema) -> None:
        self.schema = schema
        # per stage: strict decoder, decoder keeping unknown fields, enum paths, and the
        # schema's `may_hide_numbers` hook (None: none)
        self.engagement: dict[
            str, tuple[_Decoder, _Decoder, EnumPaths, Callable[[Any], bool] | None]
        ] = {
            stage: (
                msgspec.json.Decoder(strict_twin(struct)),
                msgspec.json.Decoder(struct),
                enum_paths(struct, "data.engagement"),
                schema.may_hide_numbers.get(stage),
            )
            for stage, struct in schema.engagement.items()
        }


_Decoder = msgspec.json.Decoder[Any]


class Validator:
    """Validates event bodies against a fixed set of source schemas (thread-safe)."""

    def __init__(self, schemas: Sequence[SourceSchema]) -> None:
        tagged = [s for s in schemas if s.tagged]
        if not tagged:
            raise ValueError("at least one tagged source schema is needed")
        self.source_names: tuple[str, ...] = tuple(s.name for s in schemas)
        self.tagged_names: tuple[str, ...] = tuple(s.name for s in tagged)
        self._plans: dict[type[msgspec.Struct], _Plan] = {}
        for s in schemas:
            self._plans[s.event] = self._plans[strict_twin(s.event)] = _Plan(s)
        self._by_name = {s.name: s for s in schemas}
        # A union finds the `source` tag before anything else, so a bad source is
        # reported as such (a lone tagged Struct would not even require the tag).
        self._strict: _Decoder = msgspec.json.Decoder(
            _union([strict_twin(s.event) for s in tagged])
        )
        self._decoder: _Decoder = msgspec.json.Decoder(_union([s.event for s in tagged]))
        self._enums = merge_enum_paths(*(enum_paths(s.event) for s in tagged))
        # Untagged sources: decoded as such only when the route (or `source`) names them.
        # Their free-form values (generic `metadata`) are read by msgspec, floats through
        # `_checked_float`.
        self._routed: dict[str, tuple[_Decoder, _Decoder, EnumPaths]] = {
            s.name: (
                msgspec.json.Decoder(strict_twin(s.event), float_hook=_checked_float),
                msgspec.json.Decoder(s.event, float_hook=_checked_float),
                enum_paths(s.event),
            )
            for s in schemas
            if not s.tagged
        }
        self._expected_sources = "expected one of " + ", ".join(self.source_names)
        self._routes_hint = "".join(
            f"; {name} events go to POST /webhook/{name}" for name in self._routed
        )

    def schema(self, name: str) -> SourceSchema:
        """The schema of source `name` (KeyError when unknown)."""
        return self._by_name[name]

    def _known_source(self, raw: bytes | msgspec.Raw) -> str | None:
        """The `source` a rejected event names, when it is a known one (else None)."""
        try:
            source = _probe.decode(raw).source
        except msgspec.ValidationError:
            return None
        return source if isinstance(source, str) and source in self._by_name else None

    def validate_body(self, body: bytes, *, route_source: str | None = None) -> Validated:
        """Validate a webhook body: one event object or a JSON array of them.

        Raises `BadBody` when the body is not UTF-8 JSON whose top level is an object or
        an array; an array element that is not an object is a `Rejection`. With
        `route_source` (the request came in on /webhook/<source>) every event's `source`
        must equal it. Raises ValueError for a `route_source` that is not a known source.
        """
        if route_source is not None and route_source not in self._by_name:
            raise ValueError(f"unknown source {route_source!r}")
        items = _split_body(body)
        has_nul = _NUL in body
        groups: dict[str, list[ValidEvent]] = {name: [] for name in self.source_names}
        rejected: list[Rejection] = []
        seen: set[str] = set()
        copies: list[ValidEvent] = []
        check = self._check
        for index, raw in enumerate(items):
            try:
                event, schema, _, unread = check(raw, route_source, " (from the URL)")
                data = bytes(raw)
                if unread or (has_nul and _NUL in data) or len(data) > MAX_NUMBER_LENGTH:
                    _raise_if_unstorable(data)
            except InvalidEvent as exc:
                rejected.append(
                    Rejection(index, _event_id(raw), exc.error, self._known_source(raw))
                )
                continue
            except RecursionError:  # see _TOO_DEEP; probing it would recurse as deep
                rejected.append(Rejection(index, None, _TOO_DEEP))
                continue
            event_id = event.event_id
            if event_id in seen:
                copies.append(ValidEvent(event_id, schema.name, data, index))
                continue
            seen.add(event_id)
            groups[schema.name].append(ValidEvent(event_id, schema.name, data, index))
        by_source = {name: events for name, events in groups.items() if events}
        return Validated(by_source, rejected, len(copies), copies)

    def parse_event(
        self,
        source: str,
        raw: bytes,
        *,
        received_at: datetime,
        correlation_id: str | None,
    ) -> EventRow:
        """Re-validate one event read back from the log and shape it as an `EventRow`.

        Raises `InvalidEvent` when it does not validate (now), or is not from `source`.
        """
        if source not in self._by_name:
            raise InvalidEvent(f"source: {source!r} is not a known source")
        try:
            text = raw.decode()
        except UnicodeDecodeError as exc:
            raise InvalidEvent(f"event: not valid UTF-8 (byte {exc.start})") from None
        try:
            event, schema, engagement, unread = self._check(raw, source, "")
            if unread or _NUL in raw or len(raw) > MAX_NUMBER_LENGTH:
                _raise_if_unstorable(raw)
        except RecursionError:
            raise InvalidEvent(_TOO_DEEP) from None
        fields = schema.row(event, engagement)
        amount = fields.purchase_amount
        # Positional, in EventRow's field order: keywords cost ~1 us more per event, and
        # this runs for every event a consumer decodes.
        return EventRow(
            event.event_id,
            schema.name,  # source
            event.funnel_stage,
            event.event_type,
            _utc(event.timestamp),  # occurred_at
            received_at,
            fields.user_id,
            fields.country,
            fields.campaign_id,
            amount,  # purchase_amount
            correlation_id,
            text,  # data
            amount if event.event_type in schema.revenue_types else None,  # revenue
            fields.account_id,
            fields.age,
            fields.gender,
            fields.city,
            fields.followers,
            fields.device,
            fields.video_id,
        )

    def _check(
        self, raw: bytes | msgspec.Raw, route: str | None, origin: str
    ) -> tuple[EventBase | RoutedEvent, SourceSchema, msgspec.Struct | None, bool]:
        """Decode and check one event; raise InvalidEvent naming the first bad field.

        Returns the event, its schema, its decoded engagement (None for an untagged
        source) and whether it holds values msgspec skipped (unknown fields).
        """
        if route is not None and route in self._routed:
            return self._check_routed(raw, route)
        unread = False
        try:
            event = self._strict.decode(raw)
        except msgspec.ValidationError:
            unread = True  # an unknown field, or an error the next decode names
            try:
                event = self._decoder.decode(raw)
            except msgspec.ValidationError as exc:
                if route is None and self._routed:
                    source = _source(raw)
                    if isinstance(source, str) and source in self._routed:
                        return self._check_routed(raw, source)
                raise InvalidEvent(self._event_error(raw, exc, route, origin)) from None
        plan = self._plans[type(event)]
        schema = plan.schema
        if route is not None and schema.name != route:
            raise InvalidEvent(f"source: expected {route!r}{origin}, got {schema.name!r}")
        stage = event.funnel_stage
        if event.event_type not in schema.event_types[stage]:
            raise InvalidEvent(
                f"eventType: {event.event_type!r} is not a {stage} event type for {schema.name}"
            )
        strict, decoder, enums, may_hide_numbers = plan.engagement[stage]
        try:
            engagement = strict.decode(event.data.engagement)
        except msgspec.ValidationError:
            unread = True
            try:
                engagement = decoder.decode(event.data.engagement)
            except msgspec.ValidationError as exc:
                error = describe(*split_error(exc, "data.engagement"), enums)
                raise InvalidEvent(error) from None
        _check_timestamp(event.timestamp)
        if may_hide_numbers is not None and not unread:
            unread = may_hide_numbers(engagement)
        return event, schema, engagement, unread

    def _check_routed(
        self, raw: bytes | msgspec.Raw, name: str
    ) -> tuple[RoutedEvent, SourceSchema, None, bool]:
        strict, decoder, enums = self._routed[name]
        unread = False
        try:
            event = strict.decode(raw)
        except msgspec.ValidationError:
            unread = True
            try:
                event = decoder.decode(raw)
            except msgspec.ValidationError as exc:
                if "[...]" in str(exc):  # inside a free-form object: name the key itself
                    _raise_if_unstorable(bytes(raw))
                raise InvalidEvent(describe(*split_error(exc), enums)) from None
        _check_timestamp(event.timestamp)
        return event, self._by_name[name], None, unread

    def _event_error(
        self, raw: bytes | msgspec.Raw, exc: msgspec.ValidationError, route: str | None, origin: str
    ) -> str:
        path, message = split_error(exc)
        if route is not None:
            try:
                source = _probe.decode(raw).source
            except msgspec.ValidationError:
                source = None
            if isinstance(source, str) and source != route:
                return f"source: expected {route!r}{origin}, got {source!r}"
        if path == "source":
            if message == "required field missing":
                # Shaped like an untagged source's event (snake_case `event_id`)?
                hint = self._routes_hint if _probe_event_id(raw) else ""
                return f"source: required field missing{hint}"
            if message.startswith("Invalid value "):
                return f"source: {self._expected_sources}, got {message[14:]}"
            return f"source: {self._expected_sources}"
        return describe(path, message, self._enums)


def _split_body(body: bytes) -> list[msgspec.Raw]:
    """The body's events as raw JSON slices; BadBody unless it is an object or array."""
    if not body.isascii():
        try:
            body.decode()
        except UnicodeDecodeError as exc:
            raise BadBody(f"body is not valid UTF-8 (byte {exc.start})") from None
    first = body[:1]
    if first in _JSON_SPACE:  # also true for b""
        first = body.lstrip(_JSON_SPACE)[:1]
    try:
        if first == b"[":
            return _raw_list.decode(body)
        if first == b"{":
            return [_raw_one.decode(body)]
        if not first:
            raise BadBody("empty body")
        value = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise BadBody(_malformed(exc)) from None
    except RecursionError:  # msgspec's own depth limit, not Python's stack
        raise BadBody("malformed JSON: nested too deeply") from None
    kind = "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)
    raise BadBody(f"body must be a JSON object or array of objects, got {kind}")


def _malformed(exc: msgspec.DecodeError) -> str:
    message = str(exc).removeprefix("JSON is malformed: ")
    return "malformed JSON: " + message[:1].lower() + message[1:]


def _event_id(raw: bytes | msgspec.Raw) -> str | None:
    try:
        probe = _probe.decode(raw)
    except msgspec.ValidationError:
        return None
    for event_id in (probe.eventId, probe.event_id):
        if isinstance(event_id, str) and event_id:
            return event_id
    return None


def _probe_event_id(raw: bytes | msgspec.Raw) -> bool:
    try:
        return _probe.decode(raw).event_id is not None
    except msgspec.ValidationError:
        return False


def _source(raw: bytes | msgspec.Raw) -> Any:
    try:
        return _probe.decode(raw).source
    except msgspec.ValidationError:
        return None


def _check_timestamp(timestamp: datetime) -> None:
    if 1970 < timestamp.year < 9999:  # the common case, whatever the offset
        return
    try:
        if MIN_TIMESTAMP <= _utc(timestamp) < END_TIMESTAMP:
            return
    except OverflowError:  # past the end of year 9999 once moved to UTC
        pass
    raise InvalidEvent(f"timestamp: {TIMESTAMP_RANGE}")


def _union(members: Sequence[type[msgspec.Struct]]) -> Any:
    union: Any = members[0]
    for member in members[1:]:
        union = union | member
    return union


class _BadNumber:
    """What `_scan_decoder` makes of a number literal that cannot be stored."""

    __slots__ = ()


_BAD_NUMBER = _BadNumber()


def _read_float(text: str) -> float | _BadNumber:
    exponent = text.lower().partition("e")[2]
    try:
        value = float(text)
        if (
            len(text) > MAX_NUMBER_LENGTH
            or (exponent and abs(int(exponent)) > MAX_EXPONENT)
            or not math.isfinite(value)
        ):
            return _BAD_NUMBER
    except ValueError:  # an exponent past int()'s digit limit
        return _BAD_NUMBER
    return value


_scan_decoder = msgspec.json.Decoder(Any, float_hook=_read_float)


def _checked_float(text: str) -> float:
    """float_hook for free-form values: msgspec reports the ValueError at the value."""
    value = _read_float(text)
    if isinstance(value, _BadNumber):
        raise ValueError(_NUMBER_REASON)
    return value


def _raise_if_unstorable(data: bytes) -> None:
    """Raise InvalidEvent naming the first string (or key) holding U+0000, or the first
    number PostgreSQL or a JSON reader cannot hold.

    Called only when one may be there: the event holds values msgspec skipped (unknown
    fields), holds the text `\\u0000` (which may also be an escaped backslash), or is
    long enough for a number longer than MAX_NUMBER_LENGTH.
    """
    try:
        value = _scan_decoder.decode(data)
    except msgspec.ValidationError as exc:  # an integer of thousands of digits
        # msgspec names object keys `[...]`: decode again with such digit runs made an
        # out-of-range float, which the walk below names by key (text is not kept).
        try:
            value = _scan_decoder.decode(_LONG_DIGITS.sub(b"1e999", data))
        except msgspec.DecodeError:  # e.g. the run was an exponent
            path, _ = split_error(exc)
            raise InvalidEvent(f"{path or 'event'}: number out of range") from None
    found = _find_unstorable(value)
    if found is not None:
        path, reason = found
        if len(path) > _MAX_PATH:  # keys of unknown fields can be any length
            path = path[: _MAX_PATH - 3] + "..."
        raise InvalidEvent(f"{path or 'event'}: {reason}")


_MAX_PATH = 1000


_NUL_REASON = "contains U+0000, which cannot be stored"
_NUMBER_REASON = "number out of range"


def _find_unstorable(document: object) -> tuple[str, str] | None:
    """The path and reason of the first value (in document order) that cannot be stored.

    Iterative: values may nest as deep as msgspec allows (~1,000 levels), more than
    Python's recursion limit leaves to a request handler.
    """
    stack: list[tuple[str, object]] = [("", document)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return path, _NUL_REASON
        elif value is _BAD_NUMBER:
            return path, _NUMBER_REASON
        elif isinstance(value, int) and not isinstance(value, bool):
            if not -_INT_BOUND < value < _INT_BOUND:
                return path, _NUMBER_REASON
        elif isinstance(value, dict):
            children = []
            for key, item in value.items():
                here = join_path(path, str(key))
                if "\x00" in key:
                    children.append((here, key))  # reported as the key's own path
                else:
                    children.append((here, item))
            stack.extend(reversed(children))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in reversed(list(enumerate(value))))
    return None


def _utc(timestamp: datetime) -> datetime:
    """An aware UTC datetime; a naive timestamp is taken to be UTC already."""
    tz = timestamp.tzinfo
    if tz is UTC:
        return timestamp
    if tz is None:
        return timestamp.replace(tzinfo=UTC)
    return timestamp.astimezone(UTC)
