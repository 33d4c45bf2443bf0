"""Logging: one JSON object per line, or readable lines for the dev profile.

Every record carries `timestamp`, `level`, `logger`, `message`, and `actor` (the
supervised child whose task logged it, see `sluice.engine.current_actor`) when there is
one; fields passed with `extra=` follow as they are (lists and mappings stay JSON).
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec

from sluice.engine import current_actor

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
_encoder = msgspec.json.Encoder()


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    found = {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD and not key.startswith("_") and key != "fields"
    }
    if "actor" not in found:
        actor = current_actor.get()
        if actor is not None:
            found = {"actor": actor, **found}
    return found


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    return repr(value)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _fields(record).items():
            entry.setdefault(key, _jsonable(value))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(entry).decode()


#: Text lines list at most this many items of a field; longer lists are summarised.
TEXT_LIST_ITEMS = 3


def _summary(items: list[Any] | tuple[Any, ...] | set[Any] | frozenset[Any]) -> str:
    """`a,b,c`, or for a longer list its count and first item: `42 (first a)`."""
    listed = [
        str(item)
        for item in (sorted(items, key=str) if isinstance(items, set | frozenset) else items)
    ]
    if len(listed) <= TEXT_LIST_ITEMS:
        return ",".join(listed)
    return f"{len(listed)} (first {listed[0]})"


class TextFormatter(logging.Formatter):
    """Readable lines for a person: a field holding a long list (the correlation ids of a
    batch) is shown as its count and first item; JSON lines keep the whole list."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s%(fields)s")

    def format(self, record: logging.LogRecord) -> str:
        shown = []
        for key, value in _fields(record).items():
            if isinstance(value, list | tuple | set | frozenset):
                value = _summary(value)
            shown.append(f" {key}={value}")
        record.fields = "".join(shown)
        return super().format(record)


def setup_logging(level: str, *, json: bool) -> None:
    """Send every log record to stderr: JSON lines, or text lines when `json` is False."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("asyncio", "nats"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
