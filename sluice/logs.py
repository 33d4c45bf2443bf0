"""Logging: one JSON object per line, or readable lines for the dev profile.

Every record carries `timestamp`, `level`, `logger`, `message`, and `actor` (the
supervised child whose task logged it, see `sluice.engine.current_actor`) when there is
one; fields passed with `extra=` follow as they are (lists and mappings stay JSON).

Secrets never reach the output: every record goes through `sluice.config.mask_secrets`
(its message, its text fields and its traceback) before either format sees it.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from sluice.config import mask_secrets
from sluice.engine import current_actor

if TYPE_CHECKING:
    from types import TracebackType

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
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
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


def _masked(value: Any) -> Any:
    """`value` with its secrets masked: itself when it has none."""
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, (list, tuple)):
        masked = [mask_secrets(item) if isinstance(item, str) else item for item in value]
        if masked != list(value):
            return masked
    return value


class MaskSecrets(logging.Filter):
    """Rewrites each record with its secrets masked: the message (formatted once here),
    text fields, the traceback and the stack. Never drops a record."""

    _tracebacks = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: the handler reports it as usual
            return True
        record.msg, record.args = mask_secrets(message), None
        fields = vars(record)
        for key in fields.keys() - _STANDARD:
            value = fields[key]
            masked = _masked(value)
            if masked is not value:
                fields[key] = masked
        if record.exc_info and not record.exc_text:
            record.exc_text = self._tracebacks.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        return True


def _print_masked(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    text = "".join(traceback.format_exception(kind, exc, tb))
    sys.stderr.write(mask_secrets(text))


def _thread_masked(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is not None:
        sys.stderr.write(f"Exception in thread {getattr(args.thread, 'name', '?')}:\n")
        _print_masked(args.exc_type, args.exc_value, args.exc_traceback)


def mask_uncaught() -> None:
    """Mask secrets in the traceback of an exception nothing caught, as Python prints it
    (replaces sys.excepthook and threading.excepthook: for the `sluice` command)."""
    sys.excepthook = _print_masked
    threading.excepthook = _thread_masked


def setup_logging(level: str, *, json: bool) -> None:
    """Send every log record to stderr: JSON lines, or text lines when `json` is False.
    Secrets are masked in every record (`MaskSecrets`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(MaskSecrets())
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("asyncio", "nats"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
