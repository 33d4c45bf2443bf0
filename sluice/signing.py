"""Signed webhooks (Standard Webhooks): per-source secrets, checked on each request.

A source with a secret (SLUICE_WEBHOOK_SECRETS) takes only requests that carry
`webhook-id`, `webhook-timestamp` and `webhook-signature`, where the signature is
HMAC-SHA256 over `id.timestamp.body` with one of that source's secrets (two at once
during a rotation) and the timestamp is within TOLERANCE seconds of now, either way.
The scheme (signing, the constant-time comparison) is the `standardwebhooks` package's:
this module builds its verifiers once, at start-up, and names what is wrong.

A replayed request within the tolerance passes here; the events' ids decide whether it
stores anything (it does not: its events are counted as duplicates).
"""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from standardwebhooks import Webhook, WebhookVerificationError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = [
    "HEADERS",
    "TOLERANCE",
    "Signer",
    "Verdict",
    "WebhookSignatures",
]

TOLERANCE = 300  # seconds between a webhook-timestamp and the server's clock, either way
HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a request's signature allows: `error` (a 401) or the sources whose events
    must be refused because the request is not signed with one of their secrets."""

    error: str | None = None
    unsigned: frozenset[str] | None = None  # None: no source to refuse


_PASS = Verdict()


class WebhookSignatures:
    """The verifiers of every source with a secret, built once.

    `secrets`: (source, whsec_...) pairs, as SLUICE_WEBHOOK_SECRETS gives them; a source
    may come twice (rotation). `clock`: Unix time (tests move it).
    """

    def __init__(
        self, secrets: Iterable[tuple[str, str]], *, clock: Callable[[], float] = time.time
    ) -> None:
        by_source: dict[str, list[Webhook]] = {}
        sources_of: dict[str, set[str]] = {}  # one verifier per distinct secret
        verifiers: dict[str, Webhook] = {}
        for source, secret in secrets:
            if secret not in verifiers:
                verifiers[secret] = Webhook(secret)
            by_source.setdefault(source, []).append(verifiers[secret])
            sources_of.setdefault(secret, set()).add(source)
        self._by_source = {source: tuple(whs) for source, whs in by_source.items()}
        self._every = tuple((verifiers[s], frozenset(sources_of[s])) for s in verifiers)
        self.sources = frozenset(by_source)  # the sources that take signed requests only
        self._clock = clock

    def check(
        self,
        route_source: str | None,
        body: bytes,
        msg_id: str | None,
        timestamp: str | None,
        signature: str | None,
    ) -> Verdict:
        """The verdict on a request to /webhook/<route_source> (None: /webhook or /events,
        the sources in the body) with these header values (None: absent).

        A route source with a secret needs a valid signature by one of its secrets. On the
        other routes a signature, when sent, must be valid for some secret, and the events
        of the sources with a secret that did not sign are refused one by one.
        """
        if route_source is not None:
            verifiers = self._by_source.get(route_source)
            if verifiers is None:
                return _PASS  # a source without a secret is unaffected
            error = self._headers_problem(msg_id, timestamp, signature, route_source)
            if error is None:
                headers = _as_dict(msg_id, timestamp, signature)
                if not any(_verifies(wh, body, headers) for wh in verifiers):
                    error = f"no webhook-signature matches a {route_source} webhook secret"
            return Verdict(error) if error else _PASS
        if msg_id is None and timestamp is None and signature is None:
            return Verdict(unsigned=self.sources) if self.sources else _PASS
        error = self._headers_problem(msg_id, timestamp, signature, None)
        if error is not None:
            return Verdict(error)
        headers = _as_dict(msg_id, timestamp, signature)
        signed: frozenset[str] = frozenset()
        for wh, sources in self._every:
            if _verifies(wh, body, headers):
                signed |= sources
        if not signed:
            return Verdict("no webhook-signature matches a configured webhook secret")
        unsigned = self.sources - signed
        return Verdict(unsigned=unsigned) if unsigned else _PASS

    def _headers_problem(
        self, msg_id: str | None, timestamp: str | None, signature: str | None, source: str | None
    ) -> str | None:
        missing = [
            name
            for name, value in zip(HEADERS, (msg_id, timestamp, signature), strict=True)
            if not value
        ]
        if missing:
            whose = f"the {source} webhook takes" if source else "a signed request needs"
            return f"missing {', '.join(missing)}: {whose} Standard Webhooks signature headers"
        assert timestamp is not None
        try:
            sent = int(timestamp)
        except ValueError:
            return "webhook-timestamp must be a Unix time in whole seconds"
        now = self._clock()
        if sent < now - TOLERANCE:
            return f"webhook-timestamp too old (more than {TOLERANCE} s before the server's clock)"
        if sent > now + TOLERANCE:
            return f"webhook-timestamp too new (more than {TOLERANCE} s after the server's clock)"
        return None


def _as_dict(msg_id: str | None, timestamp: str | None, signature: str | None) -> dict[str, str]:
    assert msg_id is not None and timestamp is not None and signature is not None
    return {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": signature}


def _verifies(wh: Webhook, body: bytes, headers: dict[str, str]) -> bool:
    try:
        wh.verify(body, headers, json_parse=False)
    except WebhookVerificationError:
        return False
    return True


# A random per-process prefix and a counter: a fresh webhook-id per request, unique
# across publishers, without reading the OS's random source each time.
_ID_PREFIX = "msg_" + uuid.uuid4().hex[:16]
_ids = itertools.count(1)


class Signer:
    """Signs requests as a Standard Webhooks sender (`sluice publish --sign-secret`).

    With several secrets (a rotation), each request carries one signature per secret.
    """

    def __init__(self, secrets: Iterable[str], *, clock: Callable[[], float] = time.time) -> None:
        self._webhooks = tuple(Webhook(secret) for secret in secrets)
        if not self._webhooks:
            raise ValueError("at least one secret is needed")
        self._clock = clock

    @staticmethod
    def new_id() -> str:
        """A fresh webhook-id (one per request; its retries may keep it)."""
        return f"{_ID_PREFIX}{next(_ids):x}"

    def headers(self, msg_id: str, body: bytes) -> dict[str, str]:
        """The three headers for `body` sent now as message `msg_id`."""
        now = int(self._clock())
        when = datetime.fromtimestamp(now, UTC)
        signature = " ".join(wh.sign(msg_id, when, body) for wh in self._webhooks)
        return {"webhook-id": msg_id, "webhook-timestamp": str(now), "webhook-signature": signature}
