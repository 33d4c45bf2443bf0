"""Secrets kept out of whatever sluice shows: logs, error bodies, `sluice config`, /metrics.

`mask_secrets(text)` is the one function every output goes through. It hides:

- the password or token of every URL (``user:***@``, ``***@`` for a bare token,
  ``password=***`` and ``token=***`` parameters), so DATABASE_URL and NATS_URL never show;
- API keys (``slk_***``) and webhook signing secrets (``whsec_***``) wherever they appear;
- ``password=...`` outside URLs (libpq-style connection strings);
- every secret this process was told about with `remember_secrets` (SLUICE_KEY_SECRET,
  the embedded PostgreSQL's password, the passwords inside the configured URLs), however
  it appears.

Text with none of these is returned as it came, after a few substring checks.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import unquote, urlsplit

__all__ = ["MASK", "mask_secrets", "mask_url", "mask_urls", "remember_secrets", "url_secrets"]

MASK = "***"
#: A remembered secret shorter than this is not masked as free text (it would mangle
#: every log line holding those few characters); URLs and prefixed keys still are.
MIN_SECRET_LENGTH = 6

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_TOKENS = re.compile(r"\b(slk|whsec)_[A-Za-z0-9+/=_-]+")
_PASSWORD_WORD = re.compile(r"\b(password|passwd|pwd)=(?!\*\*\*)[^\s&'\",;]+", re.IGNORECASE)
_SECRET_PARAMS = {"password", "pass", "passwd", "pwd", "token", "auth_token", "sslpassword"}
# Several servers in one URL (NATS): split where the next one's scheme begins, so that a
# comma inside a password does not cut a URL in two.
_NEXT_URL = re.compile(r",(?=[A-Za-z][A-Za-z0-9+.-]*://)")

# Longest first, so that a secret holding another is masked whole.
_remembered: tuple[str, ...] = ()
_remember_lock = threading.Lock()


def remember_secrets(*values: str | None) -> None:
    """Mask these values from now on, wherever `mask_secrets` sees them (process-wide:
    one process has one set of secrets). Empty and very short values are ignored."""
    global _remembered
    fresh = {v for v in values if v and len(v) >= MIN_SECRET_LENGTH}
    with _remember_lock:
        if fresh - set(_remembered):
            _remembered = tuple(sorted(fresh | set(_remembered), key=len, reverse=True))


def mask_secrets(text: str) -> str:
    """`text` with every secret in it replaced by ``***`` (see the module docstring)."""
    if "://" in text:
        text = mask_urls(text)
    if "slk_" in text or "whsec_" in text:
        text = _TOKENS.sub(r"\1_" + MASK, text)
    if "=" in text:
        text = _PASSWORD_WORD.sub(r"\1=" + MASK, text)
    for secret in _remembered:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def mask_urls(text: str) -> str:
    """`text` with the password or token of every URL in it masked (for error texts)."""
    if "://" not in text:
        return text
    return _URL.sub(lambda match: mask_url(match.group(0)), text)


def mask_url(url: str) -> str:
    """Hide passwords and tokens: user:pass@, token@, and password=/token= parameters.

    NATS takes several comma-separated server URLs: each is masked.
    """
    return ",".join(_mask_one(part) for part in _NEXT_URL.split(url))


def url_secrets(url: str) -> list[str]:
    """The passwords and tokens inside `url` (each server of a comma-separated list), as
    written and percent-decoded: what `remember_secrets` should know of a configured URL."""
    found: list[str] = []
    for part in _NEXT_URL.split(url.strip()):
        try:
            parts = urlsplit(part if "://" in part else f"x://{part}")
        except ValueError:
            continue
        if parts.password:
            found.append(parts.password)
        elif parts.username and "@" in parts.netloc:  # a bare token: nats://TOKEN@host
            found.append(parts.username)
        for param in parts.query.split("&"):
            key, eq, value = param.partition("=")
            if eq and value and key.lower() in _SECRET_PARAMS:
                found.append(value)
    return [variant for secret in found for variant in {secret, unquote(secret)}]


def _mask_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    location, qsep, query = rest.partition("?")
    if "@" in location:
        credentials, _, host = location.rpartition("@")
        if ":" in credentials:
            location = f"{credentials.split(':', 1)[0]}:{MASK}@{host}"
        else:
            location = f"{MASK}@{host}"  # a bare token
    if qsep:
        params = []
        for param in query.split("&"):
            key, eq, _ = param.partition("=")
            secret = key.lower() in _SECRET_PARAMS
            params.append(f"{key}={MASK}" if eq and secret else param)
        query = "&".join(params)
    return f"{scheme}{sep}{location}{qsep}{query}"
