"""Signed webhooks (Standard Webhooks): per-source secrets, checked on each request.

A source with a secret (SLUICE_WEBHOOK_SECRETS) takes only requests that carry
`webhook-id`, `webhook-timestamp` and `webhook-signature`, where the signature is
HMAC-SHA256 over `id.timestamp.body` with one of that source's secrets (two at once
during a rotation) and the timestamp is within TOLERANCE seconds of now, either way.
The signature itself (`v1,` + base64 HMAC-SHA256 of `id.timestamp.body`, keyed with the
decoded `whsec_` secret) is made by the `standardwebhooks` package's `Webhook.sign`, one
`Webhook` per secret built once at start-up; this module checks the headers and the
timestamp (naming what is wrong) and compares each signature sent with the expected one
in constant time (`hmac.compare_digest`). That is what `Webhook.verify` does, at about
twice the CPU per request (it parses the headers and the timestamp again, through
datetime): bench/README.md, "Auth and signature cost".

A replayed request within the tolerance passes here; the events' ids decide whether it
stores anything (it does not: its events are counted as duplicates).
"""

from __future__ import annotations

import hmac
import itertools
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from standardwebhooks import Webhook

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
            sent = self._sent(msg_id, timestamp, signature, route_source)
            if isinstance(sent, str):
                return Verdict(sent)
            assert msg_id is not None and signature is not None
            signatures = signature.encode().split(b" ")
            for wh in verifiers:
                if _signed_by(wh, msg_id, sent, body, signatures):
                    return _PASS
            return Verdict(f"no webhook-signature matches a {route_source} webhook secret")
        if msg_id is None and timestamp is None and signature is None:
            return Verdict(unsigned=self.sources) if self.sources else _PASS
        sent = self._sent(msg_id, timestamp, signature, None)
        if isinstance(sent, str):
            return Verdict(sent)
        assert msg_id is not None and signature is not None
        signatures = signature.encode().split(b" ")
        signed: frozenset[str] = frozenset()
        for wh, sources in self._every:
            if _signed_by(wh, msg_id, sent, body, signatures):
                signed |= sources
        if not signed:
            return Verdict("no webhook-signature matches a configured webhook secret")
        unsigned = self.sources - signed
        return Verdict(unsigned=unsigned) if unsigned else _PASS

    def _sent(
        self, msg_id: str | None, timestamp: str | None, signature: str | None, source: str | None
    ) -> datetime | str:
        """When the request was signed, or what is wrong with its headers."""
        if not (msg_id and timestamp and signature):
            missing = [
                name
                for name, value in zip(HEADERS, (msg_id, timestamp, signature), strict=True)
                if not value
            ]
            whose = f"the {source} webhook takes" if source else "a signed request needs"
            return f"missing {', '.join(missing)}: {whose} Standard Webhooks signature headers"
        if not (timestamp.isascii() and timestamp.isdigit()):
            return "webhook-timestamp must be a Unix time in whole seconds"
        sent = int(timestamp)
        now = self._clock()
        if sent < now - TOLERANCE:
            return f"webhook-timestamp too old (more than {TOLERANCE} s before the server's clock)"
        if sent > now + TOLERANCE:
            return f"webhook-timestamp too new (more than {TOLERANCE} s after the server's clock)"
        return datetime.fromtimestamp(sent, UTC)


def _signed_by(
    wh: Webhook, msg_id: str, sent: datetime, body: bytes, signatures: list[bytes]
) -> bool:
    """Is one of `signatures` (as sent, `v1,<base64>`) the one `wh`'s secret makes?"""
    expected = wh.sign(msg_id, sent, body).encode()
    return any(hmac.compare_digest(expected, signature) for signature in signatures)


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
