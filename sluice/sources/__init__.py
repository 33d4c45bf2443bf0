"""Event schemas, one module per source, and validation against them (EVENTS.md).

Adding a source: write its schema module (Structs plus a `SourceSchema`) and add it to
`_validator` below; nothing else changes.

    validate_body(body, route_source=None) -> Validated    raises BadBody
    parse_event(source, raw, received_at=, correlation_id=) -> EventRow    raises InvalidEvent

Error texts name the field first: "data.user.age: expected int, got str".
"""

from . import facebook, tiktok
from ._common import BadBody, InvalidEvent, Rejection, SourceSchema, Validated, ValidEvent
from ._validate import Validator

_validator = Validator([facebook.SCHEMA, tiktok.SCHEMA])  # the registry: one entry per source

SOURCE_NAMES: tuple[str, ...] = _validator.source_names
validate_body = _validator.validate_body
parse_event = _validator.parse_event

__all__ = [
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
