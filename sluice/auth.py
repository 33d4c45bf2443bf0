"""API keys: their format, their keyed hash, scopes, and the check each request gets.

A key is `slk_` + 32 random bytes (urlsafe base64, no padding), sent as
`Authorization: Bearer <key>` (or as the password of HTTP Basic authentication, which is
what a browser can send when it opens the dashboard). The store holds only
HMAC-SHA256(server secret, key), so a stolen table gives no key, and checking one costs
one HMAC. The server secret is
SLUICE_KEY_SECRET, else `<SLUICE_DATA_DIR>/key.secret` (made on first use, owner-only).

`Authenticator.check` answers allow / 401 / 403 (503 when a key cannot be looked up)
without a database round trip per request: verified keys are cached by hash for the TTL
(SLUICE_KEY_CACHE_TTL), unknown ones for UNKNOWN_TTL, so a revocation takes effect
within the TTL and bad keys cannot hammer the database. A lookup also notes the key as
used, so `last_used_at` moves at most once per TTL per key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from sluice.ports import ApiKey, KeyStore, StoreUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

__all__ = [
    "KEY_PREFIX",
    "SCOPES",
    "Authenticator",
    "Decision",
    "hash_key",
    "key_from",
    "load_secret",
    "new_key",
]

SCOPES = ("ingest", "report", "admin")  # admin implies the others
KEY_PREFIX = "slk_"
SECRET_FILE = "key.secret"
UNKNOWN_TTL = 5.0  # seconds an unknown key is remembered as unknown (at most the TTL)
MAX_CACHED = 10_000  # keys remembered at once; past it the expired ones are dropped


def new_key() -> str:
    """A new random API key (shown once; store only its `hash_key`)."""
    return KEY_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def hash_key(secret: bytes, key: str) -> bytes:
    """The keyed hash the store keeps for `key`."""
    return hmac.new(secret, key.encode(), hashlib.sha256).digest()


def load_secret(configured: str | None, data_dir: Path) -> bytes:
    """The server secret: `configured` (SLUICE_KEY_SECRET) when set, else the bytes of
    `<data_dir>/key.secret`, created (32 random bytes, mode 0600) when missing.

    Raises OSError when the file can be neither read nor created.
    """
    if configured:
        return configured.encode()
    path = data_dir / SECRET_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return path.read_bytes()
    with os.fdopen(fd, "wb") as file:
        file.write(secret)
    return secret


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to a request's credentials: `status` 200 lets it through."""

    status: int
    error: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    key: ApiKey | None = None  # the key that was sent, when it is valid

    @property
    def allowed(self) -> bool:
        return self.status == 200

    @property
    def sources(self) -> frozenset[str] | None:
        """The sources the request may send events of; None: every one."""
        return None if self.key is None else self.key.sources


ANONYMOUS = Decision(200)
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
MISSING = Decision(401, "missing API key: send Authorization: Bearer <key>", _CHALLENGE)
MALFORMED = Decision(401, "malformed Authorization header: expected Bearer <key>", _CHALLENGE)


def key_from(authorization: str) -> str | None:
    """The key in an `Authorization` header value: `Bearer <key>`, or HTTP Basic with the
    key as the password or the user name (what a browser can send: the dashboard); None
    when the value is neither."""
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if not credentials:
        return None
    scheme = scheme.lower()
    if scheme == "bearer":
        return credentials
    if scheme != "basic":
        return None
    try:
        decoded = base64.b64decode(credentials, validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    user, _, password = decoded.partition(":")
    return password or user or None


UNKNOWN = Decision(401, "unknown or revoked API key", _CHALLENGE)


class Authenticator:
    """Checks the `Authorization` header of a request against the key store.

    `required`: a request without a key is refused (401); otherwise it is served as
    anonymous, but a key that is sent must be valid and hold the scope all the same.
    `store` None: this process cannot look keys up (every sent key gets 503).
    `secret`: the server secret, or how to get it (called once, when a key first comes).
    """

    def __init__(
        self,
        store: KeyStore | None,
        secret: bytes | Callable[[], bytes],
        *,
        required: bool,
        ttl: float = 30.0,
        unknown_ttl: float = UNKNOWN_TTL,
        retry_after: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.required = required
        self._secret = secret if isinstance(secret, bytes) else None
        self._load_secret = secret
        self._ttl = ttl
        self._unknown_ttl = min(unknown_ttl, ttl)
        self._retry_after = {"Retry-After": str(retry_after)}
        self._clock = clock
        # hash -> (the answer for it, allowed or UNKNOWN, built once; its expiry)
        self._cache: dict[bytes, tuple[Decision, float]] = {}
        self._lookups: dict[bytes, anyio.Event] = {}  # hashes being looked up now
        # key -> its hash, so a key sent again costs a dict lookup, not an HMAC (~25k
        # instructions): in this process's memory only, where each request brings it anyway.
        self._hashes: dict[str, bytes] = {}

    @property
    def keyless(self) -> Decision:
        """The decision for a request without an `Authorization` header (what `check`
        answers for it, whatever the scope)."""
        return MISSING if self.required else ANONYMOUS

    async def check(
        self, authorization: str | None, scope: str, source: str | None = None
    ) -> Decision:
        """May a request with this `Authorization` header value use `scope` (and send
        events of `source`, when given)? Never raises for the store: 503 instead."""
        if authorization is None:
            return self.keyless
        key = key_from(authorization)
        if key is None:
            return MALFORMED
        if not key.startswith(KEY_PREFIX):
            return UNKNOWN
        decision = await self._known(self._hash(key))
        found = decision.key
        if found is None:
            return decision  # unknown, or 503
        if scope not in found.scopes and "admin" not in found.scopes:
            return Decision(403, f"this API key lacks the {scope} scope", key=found)
        if source is not None and found.sources is not None and source not in found.sources:
            return Decision(403, f"this API key may not send {source} events", key=found)
        return decision

    def _hash(self, key: str) -> bytes:
        key_hash = self._hashes.get(key)
        if key_hash is None:
            if self._secret is None:
                assert callable(self._load_secret)
                self._secret = self._load_secret()
            if len(self._hashes) >= MAX_CACHED:
                self._hashes.clear()  # bad keys by the thousand: start again
            key_hash = self._hashes[key] = hash_key(self._secret, key)
        return key_hash

    async def _known(self, key_hash: bytes) -> Decision:
        """Allowed (with its key) or UNKNOWN for the key of this hash, from the cache
        while fresh; a 503 when the store cannot be asked and nothing is cached."""
        cached = self._cache.get(key_hash)
        if cached is not None and cached[1] > self._clock():
            return cached[0]
        while (pending := self._lookups.get(key_hash)) is not None:
            await pending.wait()  # one lookup per key at a time; its answer serves all
            cached = self._cache.get(key_hash)
            if cached is not None and cached[1] > self._clock():
                return cached[0]
        if self.store is None:
            return Decision(503, "API keys cannot be checked here: no database (set DATABASE_URL)")
        done = self._lookups[key_hash] = anyio.Event()
        try:
            found = await self.store.use(key_hash)
        except StoreUnavailable:
            if cached is not None and cached[0].key is not None:
                # Verified before: it keeps working while the store is away, asked again
                # only every unknown_ttl (a lookup may take its whole timeout meanwhile).
                self._cache[key_hash] = (cached[0], self._clock() + self._unknown_ttl)
                return cached[0]
            return Decision(
                503,
                "API key cannot be checked now (key store unavailable); retry later",
                self._retry_after,
            )
        finally:
            del self._lookups[key_hash]
            done.set()
        return self._remember(key_hash, found)

    def _remember(self, key_hash: bytes, key: ApiKey | None) -> Decision:
        now = self._clock()
        if len(self._cache) >= MAX_CACHED:
            self._cache = {h: entry for h, entry in self._cache.items() if entry[1] > now}
            if len(self._cache) >= MAX_CACHED:
                self._cache = {h: e for h, e in self._cache.items() if e[0].key is not None}
        if key is None:
            self._cache[key_hash] = (UNKNOWN, now + self._unknown_ttl)
            return UNKNOWN
        allowed = Decision(200, key=key)
        self._cache[key_hash] = (allowed, now + self._ttl)
        return allowed
