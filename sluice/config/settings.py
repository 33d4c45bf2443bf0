"""Settings: environment variables over a profile file over defaults, checked at once.

The profile is `sluice/config/profiles/<SLUICE_ENV>.toml` (dev, staging or prod; dev by
default), keyed by the same names as the environment variables. `SLUICE_PROFILE_FILE`
names one more TOML file of your own, read after the profile. Precedence, lowest first:
defaults < profile < SLUICE_PROFILE_FILE < environment.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sluice.config.masking import MASK, mask_url, url_secrets

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

MiB = 1024 * 1024
GiB = 1024 * MiB

PROFILES_DIR = Path(__file__).with_name("profiles")
PROFILES = ("dev", "staging", "prod")
ROLES = ("all", "ingress", "worker", "reports")
# Variables that choose the profile, so no profile may set them.
_META = ("SLUICE_ENV", "SLUICE_PROFILE_FILE")


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


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be a non-negative integer")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a positive number")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be a non-negative number")
    return value


def _replicas(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 5:
        raise ValueError("must be 1 to 5 (JetStream keeps at most 5 replicas)")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number (0-65535)")
    return value


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be a boolean (1/0, true/false, yes/no, on/off)")


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


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return parse


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


WEBHOOK_SECRET_PREFIX = "whsec_"


def is_webhook_secret(text: str) -> bool:
    """Is `text` a Standard Webhooks secret: whsec_ and non-empty base64?"""
    body = text.removeprefix(WEBHOOK_SECRET_PREFIX)
    try:
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except binascii.Error:
        return False
    return body != text and bool(key)


def _webhook_secrets(text: str) -> tuple[tuple[str, str], ...]:
    """`source=whsec_<base64>` entries, whitespace- or comma-separated, in order.

    Errors name the entry by its source (or position), never by its secret."""
    entries: list[tuple[str, str]] = []
    for n, entry in enumerate(text.replace(",", " ").split(), 1):
        source, sep, secret = entry.partition("=")
        source = source.strip()
        if not sep or not source or not re.fullmatch(r"[a-z0-9_-]+", source):
            raise ValueError(f"must be source=whsec_... entries (entry {n} is not)")
        if not is_webhook_secret(secret):
            raise ValueError(f"must hold whsec_<base64> secrets (the one for {source!r} does not)")
        entries.append((source, secret))
    return tuple(entries)


def _env(name: str, parse: Callable[[str], Any], default: Any, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"env": name, "parse": parse, "secret": secret})


@dataclass(frozen=True)
class Settings:
    """Every knob of a sluice process. Field metadata names its environment variable."""

    nats_url: str | None = _env("NATS_URL", _text, None, secret=True)
    database_url: str | None = _env("DATABASE_URL", _text, None, secret=True)
    env: str = _env("SLUICE_ENV", _choice(*PROFILES), "dev")
    profile_file: Path | None = _env("SLUICE_PROFILE_FILE", lambda t: Path(_text(t)), None)
    role: str = _env("SLUICE_ROLE", _choice(*ROLES), "all")
    log_level: str = _env("LOG_LEVEL", _log_level, "INFO")
    log_format: str = _env("SLUICE_LOG_FORMAT", _choice("json", "text"), "json")

    http_host: str = _env("SLUICE_HTTP_HOST", _text, "127.0.0.1")
    http_port: int = _env("SLUICE_HTTP_PORT", _port, 8000)
    # SO_REUSEPORT on the listening socket: several ingress processes on one port, the
    # kernel spreading connections over them (Linux). Off: a second bind fails.
    http_reuse_port: bool = _env("SLUICE_HTTP_REUSE_PORT", _flag, False)
    data_dir: Path = _env("SLUICE_DATA_DIR", lambda t: Path(_text(t)), Path(".sluice"))
    max_body_bytes: int = _env("SLUICE_MAX_BODY_BYTES", _positive_int, 16 * MiB)
    max_inflight_publishes: int = _env("SLUICE_MAX_INFLIGHT_PUBLISHES", _positive_int, 256)
    publish_timeout: float = _env("SLUICE_PUBLISH_TIMEOUT", _positive_float, 5.0)
    # Admission, before any work: requests being served at once (health and metrics are
    # always served), the bytes their bodies may add up to (from Content-Length, before
    # reading), and how long a body may take to arrive (a head that trickles is cut at
    # the keep-alive timeout).
    max_requests_in_flight: int = _env("SLUICE_MAX_REQUESTS_IN_FLIGHT", _positive_int, 1024)
    max_body_bytes_in_flight: int = _env(
        "SLUICE_MAX_BODY_BYTES_IN_FLIGHT", _positive_int, 256 * MiB
    )
    body_timeout: float = _env("SLUICE_BODY_TIMEOUT", _positive_float, 30.0)
    retry_after_seconds: int = _env("SLUICE_RETRY_AFTER", _positive_int, 1)
    # 429 while more than this many messages wait in the consumers (0: never), or about
    # this many events (the messages times the events per message this process publishes).
    max_backlog: int = _env("SLUICE_MAX_BACKLOG", _non_negative_int, 2000)
    max_backlog_events: int = _env("SLUICE_MAX_BACKLOG_EVENTS", _non_negative_int, 200_000)
    # Group commit: JetStream publishes in flight per source (1: fewest fsyncs, measured
    # fastest with sync_interval always); requests arriving meanwhile share the next
    # message, up to this many bytes of events waiting per source.
    group_commit_inflight: int = _env("SLUICE_GROUP_COMMIT_INFLIGHT", _positive_int, 1)
    group_commit_max_bytes: int = _env("SLUICE_GROUP_COMMIT_MAX_BYTES", _positive_int, 4 * MiB)

    sources: tuple[str, ...] = _env("SLUICE_SOURCES", _names, ("facebook", "tiktok", "generic"))
    stream: str = _env("SLUICE_STREAM", _text, "EVENTS")
    subject_prefix: str = _env("SLUICE_SUBJECT_PREFIX", _text, "events")
    # The stream the consumers read is a work queue: a message leaves it once acked, so
    # these bound only the backlog not yet written (past max_bytes: 503).
    stream_max_age: float = _env("SLUICE_STREAM_MAX_AGE", _positive_float, 7 * 24 * 3600.0)
    stream_max_bytes: int = _env("SLUICE_STREAM_MAX_BYTES", _positive_int, 4 * GiB)
    duplicate_window: float = _env("SLUICE_DUPLICATE_WINDOW", _positive_float, 120.0)
    # Copies of each stream (and of its durable consumers) kept on as many NATS nodes:
    # 1 on one server, 3 on a cluster of 3 (a node may die and nothing is lost).
    stream_replicas: int = _env("SLUICE_STREAM_REPLICAS", _replicas, 1)
    # History for replay: a second stream mirroring the first, dropping its oldest
    # messages past these limits (it never refuses one). Default name: <stream>_HISTORY.
    # nats-server reserves both max_bytes on its disk: 4 + 16 GiB, what one stream of
    # 20 GiB took before.
    history_stream: str | None = _env("SLUICE_HISTORY_STREAM", _text, None)
    history_max_age: float = _env("SLUICE_HISTORY_MAX_AGE", _positive_float, 7 * 24 * 3600.0)
    history_max_bytes: int = _env("SLUICE_HISTORY_MAX_BYTES", _positive_int, 16 * GiB)

    # A message held past ack_wait without an ack or a progress signal is redelivered;
    # the process that holds one signals progress every ack_wait / 3, so a short wait
    # costs nothing while it lives and brings a dead process's messages back quickly.
    ack_wait: float = _env("SLUICE_ACK_WAIT", _positive_float, 5.0)
    max_deliver: int = _env("SLUICE_MAX_DELIVER", _positive_int, 50)
    max_ack_pending: int = _env("SLUICE_MAX_ACK_PENDING", _positive_int, 1000)
    fetch_batch: int = _env("SLUICE_FETCH_BATCH", _positive_int, 64)
    fetch_timeout: float = _env("SLUICE_FETCH_TIMEOUT", _positive_float, 1.0)
    # Pause after a fetch that brought less than half a batch (0: never pause).
    fetch_linger: float = _env("SLUICE_FETCH_LINGER", _non_negative_float, 0.05)
    # Bytes of messages one fetch may bring (at the size recently seen; at least one).
    fetch_max_bytes: int = _env("SLUICE_FETCH_MAX_BYTES", _positive_int, 8 * MiB)
    # Bytes of messages a worker process holds at once, fetched and not yet acked (in
    # its channels, dedup guard and writers' batches): the consumers fetch only while
    # there is room. Decoded, the rows take about 3x their message's bytes.
    max_held_bytes: int = _env("SLUICE_MAX_HELD_BYTES", _positive_int, 32 * MiB)

    dedup_capacity: int = _env("SLUICE_DEDUP_CAPACITY", _positive_int, 200_000)
    writers: int = _env("SLUICE_WRITERS", _positive_int, 2)
    flush_rows: int = _env("SLUICE_FLUSH_ROWS", _positive_int, 5000)
    flush_interval: float = _env("SLUICE_FLUSH_INTERVAL", _positive_float, 0.1)
    channel_capacity: int = _env("SLUICE_CHANNEL_CAPACITY", _positive_int, 64)

    # API keys (README "Security"): optional serves requests without a key (a key that
    # is sent must be valid); required refuses them (401) but on /health/*, /metrics,
    # /docs, /openapi.json and /. The profiles staging and prod require them.
    auth: str = _env("SLUICE_AUTH", _choice("optional", "required"), "optional")
    # The secret keys are hashed with (else <SLUICE_DATA_DIR>/key.secret, made once):
    # every process of a deployment must share it.
    key_secret: str | None = _env("SLUICE_KEY_SECRET", _text, None, secret=True)
    # Verified keys are cached this long per process: a revocation takes effect within it.
    key_cache_ttl: float = _env("SLUICE_KEY_CACHE_TTL", _positive_float, 30.0)
    metrics_auth: bool = _env("SLUICE_METRICS_AUTH", _flag, False)  # /metrics: scope admin
    # Rate limits (README "Rate limits"), per API key, or per client address without one,
    # in each process: requests/s and events/s (0: no limit; a key's own values override
    # these), and the seconds of rate a bucket holds (the largest burst, and array).
    rate_limit_requests: int = _env("SLUICE_RATE_LIMIT_REQUESTS", _non_negative_int, 0)
    rate_limit_events: int = _env("SLUICE_RATE_LIMIT_EVENTS", _non_negative_int, 0)
    rate_limit_burst: int = _env("SLUICE_RATE_LIMIT_BURST", _positive_int, 1)
    # Signed webhooks (README "Security"): `source=whsec_...` entries; a source with a
    # secret takes only requests signed with it (Standard Webhooks). A source listed
    # twice takes either secret: a rotation.
    webhook_secrets: tuple[tuple[str, str], ...] = _env(
        "SLUICE_WEBHOOK_SECRETS", _webhook_secrets, (), secret=True
    )

    drain_timeout: float = _env("SLUICE_DRAIN_TIMEOUT", _positive_float, 30.0)
    metrics_interval: float = _env("SLUICE_METRICS_INTERVAL", _positive_float, 5.0)

    def subject(self, source: str) -> str:
        return f"{self.subject_prefix}.{source}"

    @property
    def history_stream_name(self) -> str:
        return self.history_stream or f"{self.stream}_HISTORY"

    def secrets(self) -> list[str]:
        """The secret values among the settings (a URL gives its passwords and tokens):
        for `sluice.config.remember_secrets`, so they are masked wherever they appear."""
        found: list[str] = []
        for f in dataclasses.fields(self):
            if f.metadata["secret"]:
                value = getattr(self, f.name)
                if f.name == "webhook_secrets":  # (source, secret) pairs: the secrets only
                    value = tuple(secret for _, secret in value)
                for text in _texts(value):
                    found += url_secrets(text) if "://" in text else [text]
        return found

    def masked(self) -> dict[str, str]:
        """The effective settings by environment name, secrets masked."""
        shown: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata["secret"] and f.name == "webhook_secrets":
                value = tuple(f"{source}={WEBHOOK_SECRET_PREFIX}{MASK}" for source, _ in value)
            elif f.metadata["secret"] and value is not None:
                value = mask_url(str(value)) if "://" in str(value) else MASK
            if isinstance(value, tuple):
                value = ",".join(value)
            shown[f.metadata["env"]] = "" if value is None else str(value)
        return shown


def _texts(value: Any) -> list[str]:
    """The strings in a setting's value (a text, or texts in tuples and mappings)."""
    if value is None:
        return []
    if isinstance(value, dict):
        value = tuple(value.values())
    if isinstance(value, tuple | list | set | frozenset):
        return [text for item in value for text in _texts(item)]
    return [str(value)]


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read settings: `environ` (default: the process environment) over the profile
    file that SLUICE_ENV names over the defaults; `overrides` (field names) win over all.

    Raises ConfigError naming every bad variable at once (from any layer).
    """
    settings, _ = load_settings_with_origins(environ, **overrides)
    return settings


def load_settings_with_origins(
    environ: Mapping[str, str] | None = None, **overrides: Any
) -> tuple[Settings, dict[str, str]]:
    """`load_settings`, plus where each value came from, by variable name: "default",
    "profile <env>", "file <SLUICE_PROFILE_FILE>", "environment" or "override".

    Raises ConfigError."""
    environ = os.environ if environ is None else environ
    fields = {f.metadata["env"]: f for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}
    origins = dict.fromkeys(fields, "default")
    problems: list[str] = []

    def take(name: str, raw: str, origin: str) -> None:
        f = fields[name]
        try:
            values[f.name] = f.metadata["parse"](raw)
        except ValueError as exc:
            shown = repr(MASK) if f.metadata["secret"] else repr(raw)  # never echo a secret
            reason = str(exc) if "must" in str(exc) else f"cannot parse {shown}"
            where = "" if origin == "environment" else f" (in {origin})"
            problems.append(f"{name}={shown}{where}: {reason}")
        else:
            origins[name] = origin

    for name in _META:  # the environment alone chooses the profile
        raw = environ.get(name)
        if raw:
            take(name, raw, "environment")
    env = values.get("env", "dev")
    profile_files = [(f"profile {env}", PROFILES_DIR / f"{env}.toml")]
    if environ.get("SLUICE_ENV") and "env" not in values:
        profile_files = []  # a bad SLUICE_ENV is reported; no profile to read
    if values.get("profile_file") is not None:
        profile_files.append((f"file {values['profile_file']}", values["profile_file"]))
    for label, path in profile_files:
        for name, raw in _read_profile(path, fields, problems).items():
            take(name, raw, label)
    for name in fields:
        raw = environ.get(name)
        if name not in _META and raw is not None and raw != "":
            take(name, raw, "environment")
    for f in fields.values():
        if f.name in overrides:
            origins[f.metadata["env"]] = "override"
    values.update(overrides)
    settings = None
    if not problems:
        settings = Settings(**values)
        problems.extend(_consistency(settings))
    if problems or settings is None:
        raise ConfigError(problems)
    return settings, origins


def _read_profile(path: Path, fields: Mapping[str, Any], problems: list[str]) -> dict[str, str]:
    """The profile's values as text (so the environment's parsers check them)."""
    try:
        with path.open("rb") as file:
            table = tomllib.load(file)
    except FileNotFoundError:
        problems.append(f"profile {path}: no such file")
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        problems.append(f"profile {path}: {exc}")
        return {}
    found: dict[str, str] = {}
    for key, value in table.items():
        if key in _META or key not in fields:
            why = "chosen by the environment only" if key in _META else "unknown setting"
            problems.append(f"{key} (in {path}): {why}")
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            found[key] = ",".join(value)
        elif isinstance(value, bool):
            found[key] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            found[key] = str(value)
        else:
            problems.append(f"{key} (in {path}): must be a string, a number or a list of strings")
    return found


def _consistency(settings: Settings) -> list[str]:
    """Problems no single value shows, named by the variable to change."""
    problems = []
    if settings.fetch_timeout >= settings.ack_wait:
        # A fetch that outlasts ack_wait gets messages redelivered while still in hand.
        problems.append(
            f"SLUICE_FETCH_TIMEOUT={settings.fetch_timeout:g}: must be below "
            f"SLUICE_ACK_WAIT={settings.ack_wait:g}"
        )
    if settings.history_stream_name == settings.stream:
        problems.append(
            f"SLUICE_HISTORY_STREAM={settings.history_stream_name}: must differ from "
            f"SLUICE_STREAM={settings.stream}"
        )
    if settings.flush_interval >= settings.ack_wait:
        problems.append(
            f"SLUICE_FLUSH_INTERVAL={settings.flush_interval:g}: must be below "
            f"SLUICE_ACK_WAIT={settings.ack_wait:g}"
        )
    for source in dict(settings.webhook_secrets):
        if source not in settings.sources:
            problems.append(
                f"SLUICE_WEBHOOK_SECRETS: unknown source {source!r}; expected one of "
                + ", ".join(settings.sources)
            )
    return problems
