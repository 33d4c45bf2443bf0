"""Decoding and checking events against the registered source schemas.

The body is parsed once into `msgspec.Raw` slices (one per event, no copies), then each
slice is decoded into its source's Struct by a cached Decoder, so an error belongs to one
event and `ValidEvent.raw` is the publisher's own bytes.
"""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from sluice.ports import EventRow

from ._common import (
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

_JSON_SPACE = b" \t\n\r"
_NUL = b"\\u0000"  # PostgreSQL's jsonb cannot store U+0000
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
        self.engagement: dict[str, tuple[msgspec.json.Decoder[Any], EnumPaths]] = {
            stage: (msgspec.json.Decoder(struct), enum_paths(struct, "data.engagement"))
            for stage, struct in schema.engagement.items()
        }


class Validator:
    """Validates event bodies against a fixed set of source schemas (thread-safe)."""

    def __init__(self, schemas: Sequence[SourceSchema]) -> None:
        tagged = [s for s in schemas if s.tagged]
        if not tagged:
            raise ValueError("at least one tagged source schema is needed")
        self.source_names: tuple[str, ...] = tuple(s.name for s in schemas)
        self.tagged_names: tuple[str, ...] = tuple(s.name for s in tagged)
        self._plans = {s.event: _Plan(s) for s in schemas}
        self._by_name = {s.name: s for s in schemas}
        union: Any = tagged[0].event
        for s in tagged[1:]:
            union = union | s.event
        # A union finds the `source` tag before anything else, so a bad source is
        # reported as such (a lone tagged Struct would not even require the tag).
        self._decoder: msgspec.json.Decoder[EventBase] = msgspec.json.Decoder(union)
        self._enums = merge_enum_paths(*(enum_paths(s.event) for s in tagged))
        # Untagged sources: decoded as such only when the route (or `source`) names them.
        self._routed: dict[str, tuple[msgspec.json.Decoder[RoutedEvent], EnumPaths]] = {
            s.name: (msgspec.json.Decoder(s.event), enum_paths(s.event))
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
        duplicates = 0
        check = self._check
        for index, raw in enumerate(items):
            try:
                event, schema, _ = check(raw, route_source, " (from the URL)")
                data = bytes(raw)
                if has_nul and _NUL in data:
                    _raise_if_nul(data)
            except InvalidEvent as exc:
                rejected.append(
                    Rejection(index, _event_id(raw), exc.error, self._known_source(raw))
                )
                continue
            event_id = event.event_id
            if event_id in seen:
                duplicates += 1
                continue
            seen.add(event_id)
            groups[schema.name].append(ValidEvent(event_id, schema.name, data, index))
        by_source = {name: events for name, events in groups.items() if events}
        return Validated(by_source, rejected, duplicates)

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
        event, schema, engagement = self._check(raw, source, "")
        if _NUL in raw:
            _raise_if_nul(raw)
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
    ) -> tuple[EventBase | RoutedEvent, SourceSchema, msgspec.Struct | None]:
        """Decode and check one event; raise InvalidEvent naming the first bad field."""
        if route is not None and route in self._routed:
            return self._check_routed(raw, route)
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
        decoder, enums = plan.engagement[stage]
        try:
            engagement = decoder.decode(event.data.engagement)
        except msgspec.ValidationError as exc:
            raise InvalidEvent(describe(*split_error(exc, "data.engagement"), enums)) from None
        _check_timestamp(event.timestamp)
        return event, schema, engagement

    def _check_routed(
        self, raw: bytes | msgspec.Raw, name: str
    ) -> tuple[RoutedEvent, SourceSchema, None]:
        decoder, enums = self._routed[name]
        try:
            event = decoder.decode(raw)
        except msgspec.ValidationError as exc:
            raise InvalidEvent(describe(*split_error(exc), enums)) from None
        _check_timestamp(event.timestamp)
        return event, self._by_name[name], None

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
    if timestamp.year in (1, 9999):  # the only years where moving to UTC can overflow
        try:
            _utc(timestamp)
        except OverflowError:
            raise InvalidEvent("timestamp: out of range") from None


def _raise_if_nul(data: bytes) -> None:
    """Raise InvalidEvent naming the first string (or key) that holds U+0000.

    Called only when the text `\\u0000` occurs, which may also be an escaped backslash.
    """
    path = _find_nul(msgspec.json.decode(data), "")
    if path is not None:
        raise InvalidEvent(f"{path or 'event'}: contains U+0000, which cannot be stored")


def _find_nul(value: object, path: str) -> str | None:
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            here = join_path(path, str(key))
            if "\x00" in key:
                return here
            found = _find_nul(item, here)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _find_nul(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def _utc(timestamp: datetime) -> datetime:
    """An aware UTC datetime; a naive timestamp is taken to be UTC already."""
    tz = timestamp.tzinfo
    if tz is UTC:
        return timestamp
    if tz is None:
        return timestamp.replace(tzinfo=UTC)
    return timestamp.astimezone(UTC)
