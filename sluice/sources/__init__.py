"""Event schemas, one module per source, and validation against them (docs/events.md).

Adding a source: write its schema module (Structs plus a `SourceSchema`) and add it to
`_validator` below; nothing else changes.

    validate_body(body, route_source=None) -> Validated    raises BadBody
    parse_event(source, raw, received_at=, correlation_id=) -> EventRow    raises InvalidEvent

Error texts name the field first: "data.user.age: expected int, got str".
"""

from . import facebook, generic, tiktok
from ._common import (
    MAX_ID_LENGTH,
    MAX_TEXT_LENGTH,
    BadBody,
    InvalidEvent,
    Rejection,
    SourceSchema,
    Validated,
    ValidEvent,
)
from ._validate import Validator

# The registry: one entry per source.
_validator = Validator([facebook.SCHEMA, tiktok.SCHEMA, generic.SCHEMA])

SOURCE_NAMES: tuple[str, ...] = _validator.source_names
# The sources with funnel stages (ad platforms): the marketing reports cover these.
FUNNEL_SOURCES: tuple[str, ...] = _validator.tagged_names
SCHEMAS: dict[str, SourceSchema] = {name: _validator.schema(name) for name in SOURCE_NAMES}
validate_body = _validator.validate_body
parse_event = _validator.parse_event

__all__ = [
    "FUNNEL_SOURCES",
    "MAX_ID_LENGTH",
    "MAX_TEXT_LENGTH",
    "SCHEMAS",
    "SOURCE_NAMES",
    "BadBody",
    "InvalidEvent",
    "Rejection",
    "SourceSchema",
    "ValidEvent",
    "Validated",
    "Validator",
    "parse_event",
    "validate_body",
]
