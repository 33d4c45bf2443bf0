"""Settings: environment variables over defaults, checked all at once at start-up."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

MiB = 1024 * 1024
GiB = 1024 * MiB


class ConfigError(Exception):
    """One or more settings are invalid; the message lists every bad key and why."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a positive number")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number (0-65535)")
    return value


def _names(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise ValueError("must name at least one source")
    return names


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return level


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


def _env(name: str, parse: Callable[[str], Any], default: Any, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"env": name, "parse": parse, "secret": secret})


@dataclass(frozen=True)
class Settings:
    """Every knob of a sluice process. Field metadata names its environment variable."""

    nats_url: str | None = _env("NATS_URL", _text, None, secret=True)
    database_url: str | None = _env("DATABASE_URL", _text, None, secret=True)
    env: str = _env("SLUICE_ENV", _text, "dev")
    log_level: str = _env("LOG_LEVEL", _log_level, "INFO")

    http_host: str = _env("SLUICE_HTTP_HOST", _text, "127.0.0.1")
    http_port: int = _env("SLUICE_HTTP_PORT", _port, 8000)
    data_dir: Path = _env("SLUICE_DATA_DIR", lambda t: Path(_text(t)), Path(".sluice"))
    max_body_bytes: int = _env("SLUICE_MAX_BODY_BYTES", _positive_int, 16 * MiB)
    max_inflight_publishes: int = _env("SLUICE_MAX_INFLIGHT_PUBLISHES", _positive_int, 256)
    publish_timeout: float = _env("SLUICE_PUBLISH_TIMEOUT", _positive_float, 5.0)
    retry_after_seconds: int = _env("SLUICE_RETRY_AFTER", _positive_int, 1)

    sources: tuple[str, ...] = _env("SLUICE_SOURCES", _names, ("facebook", "tiktok"))
    stream: str = _env("SLUICE_STREAM", _text, "EVENTS")
    subject_prefix: str = _env("SLUICE_SUBJECT_PREFIX", _text, "events")
    stream_max_age: float = _env("SLUICE_STREAM_MAX_AGE", _positive_float, 7 * 24 * 3600.0)
    stream_max_bytes: int = _env("SLUICE_STREAM_MAX_BYTES", _positive_int, 20 * GiB)
    duplicate_window: float = _env("SLUICE_DUPLICATE_WINDOW", _positive_float, 120.0)

    ack_wait: float = _env("SLUICE_ACK_WAIT", _positive_float, 30.0)
    max_deliver: int = _env("SLUICE_MAX_DELIVER", _positive_int, 50)
    max_ack_pending: int = _env("SLUICE_MAX_ACK_PENDING", _positive_int, 1000)
    fetch_batch: int = _env("SLUICE_FETCH_BATCH", _positive_int, 64)
    fetch_timeout: float = _env("SLUICE_FETCH_TIMEOUT", _positive_float, 1.0)

    dedup_capacity: int = _env("SLUICE_DEDUP_CAPACITY", _positive_int, 200_000)
    writers: int = _env("SLUICE_WRITERS", _positive_int, 2)
    flush_rows: int = _env("SLUICE_FLUSH_ROWS", _positive_int, 5000)
    flush_interval: float = _env("SLUICE_FLUSH_INTERVAL", _positive_float, 0.05)
    channel_capacity: int = _env("SLUICE_CHANNEL_CAPACITY", _positive_int, 64)

    drain_timeout: float = _env("SLUICE_DRAIN_TIMEOUT", _positive_float, 30.0)
    metrics_interval: float = _env("SLUICE_METRICS_INTERVAL", _positive_float, 5.0)

    def subject(self, source: str) -> str:
        return f"{self.subject_prefix}.{source}"

    def masked(self) -> dict[str, str]:
        """The effective settings by environment name, secrets masked."""
        shown: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata["secret"] and value is not None:
                value = _mask_url(str(value))
            if isinstance(value, tuple):
                value = ",".join(value)
            shown[f.metadata["env"]] = "" if value is None else str(value)
        return shown


def _mask_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read settings from `environ` (default: the process environment).

    Raises ConfigError naming every bad variable at once.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    problems: list[str] = []
    for f in dataclasses.fields(Settings):
        raw = environ.get(f.metadata["env"])
        if raw is None or raw == "":
            continue
        try:
            values[f.name] = f.metadata["parse"](raw)
        except ValueError as exc:
            reason = str(exc) if "must" in str(exc) else f"cannot parse {raw!r}"
            problems.append(f"{f.metadata['env']}={raw!r}: {reason}")
    if problems:
        raise ConfigError(problems)
    values.update(overrides)
    return Settings(**values)
