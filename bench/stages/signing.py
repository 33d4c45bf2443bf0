"""Stage: CPU per request of the API key check and of webhook signature verification.

The checks alone, in-process, on the request a single-event POST makes (one ~330-byte
event): what `WebhookFront` adds per request when keys are required and a source has a
webhook secret, without the HTTP server's noise around it (`http_server.py` measures the
whole request: `--servers ingress,ingress+key,ingress+key+sign`). Rounds alternate the
cases; the summary is the median CPU-us per call (process CPU time over many calls).

Cases:
- `key`: `Authenticator.check` of a valid, cached key (the usual case: no database);
- `sign-route`: `WebhookSignatures.check` of POST /webhook/facebook signed with its secret;
- `sign-webhook`: the same request on POST /webhook (the sources named in the body);
- `sign-rotation`: /webhook/facebook with two secrets, signed with the second one;
- `publisher-sign`: what `sluice publish --sign-secret` spends signing one request.

`--front` measures whole requests instead: single-event POST /webhook requests through
`WebhookFront` in-process (the ASGI app `http_server.py` serves, same event log that
acks at once, no HTTP server or sockets), plain / `+key` / `+key+sign` as in
`http_server.py`; the difference is what auth and signatures add to a request, with much
less noise than the whole-server figure on a shared machine.

    .venv/bin/python bench/stages/signing.py               # 3 rounds of 20,000 calls
    .venv/bin/python bench/stages/signing.py --front --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sluice.auth import Authenticator, hash_key
from sluice.ports import ApiKey
from sluice.publish.bodies import BodyMaker
from sluice.signing import Signer, WebhookSignatures

SECRET = "whsec_YmVuY2gtd2ViaG9vay1zZWNyZXQtMDEyMzQ1Njc4OQ=="
OLD_SECRET = "whsec_YmVuY2gtd2ViaG9vay1zZWNyZXQtb2xkLTAxMjM0NQ=="
KEY = "slk_bench0000000000000000000000000000000000000"
KEY_SECRET = b"bench-key-secret"
CASES = ("key", "sign-route", "sign-webhook", "sign-rotation", "publisher-sign")


class OneKey:
    async def use(self, key_hash: bytes) -> ApiKey | None:
        if key_hash == hash_key(KEY_SECRET, KEY):
            return ApiKey(1, "bench", frozenset({"ingest"}), None)
        return None


def _done(coro: Any) -> Any:
    """Run a coroutine that does not suspend (a cached key) to its end."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    raise RuntimeError("the check suspended: the key is not cached")


def _cases() -> dict[str, Any]:
    body = BodyMaker(seed=1).make(1, bare=True).body
    signer = Signer([SECRET])
    headers = signer.headers(signer.new_id(), body)
    signed = (headers["webhook-id"], headers["webhook-timestamp"], headers["webhook-signature"])
    one = WebhookSignatures([("facebook", SECRET), ("tiktok", SECRET)])
    rotation = WebhookSignatures([("facebook", OLD_SECRET), ("facebook", SECRET)])
    auth = Authenticator(OneKey(), KEY_SECRET, required=True)
    bearer = f"Bearer {KEY}"
    _first_check(auth, bearer)  # fills the cache, as the first request does
    assert _done(auth.check(bearer, "ingest", None)).allowed
    assert one.check("facebook", body, *signed).error is None
    assert one.check(None, body, *signed).unsigned is None
    assert rotation.check("facebook", body, *signed).error is None
    return {
        "key": lambda: _done(auth.check(bearer, "ingest", None)),
        "sign-route": lambda: one.check("facebook", body, *signed),
        "sign-webhook": lambda: one.check(None, body, *signed),
        "sign-rotation": lambda: rotation.check("facebook", body, *signed),
        "publisher-sign": lambda: signer.headers(signer.new_id(), body),
    }


def _first_check(auth: Authenticator, bearer: str) -> None:
    import anyio

    async def check() -> None:
        await auth.check(bearer, "ingest", None)

    anyio.run(check)


def run(rounds: int = 3, calls: int = 20_000) -> dict[str, Any]:
    cases = _cases()
    runs: dict[str, list[float]] = {name: [] for name in CASES}
    for r in range(rounds):
        order = CASES if r % 2 == 0 else tuple(reversed(CASES))
        for name in order:
            call = cases[name]
            started = time.process_time()
            for _ in range(calls):
                call()
            runs[name].append(round((time.process_time() - started) / calls * 1e6, 2))
    return {
        "calls": calls,
        "rounds": rounds,
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "cpu_us_per_call": {
            name: {"median": statistics.median(values), "runs": values}
            for name, values in runs.items()
        },
    }


FRONT_VARIANTS = ("ingress", "ingress+key", "ingress+key+sign")


def _front_requests(n: int, options: set[str]) -> list[tuple[list[tuple[bytes, bytes]], bytes]]:
    from bench.stages.http_server import BENCH_KEY, BENCH_WEBHOOK_SECRET

    maker = BodyMaker(seed=3)
    signer = Signer([BENCH_WEBHOOK_SECRET])
    out = []
    for _ in range(n):
        body = maker.make(1, bare=True).body
        headers = [
            (b"host", b"bench"),
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
        ]
        if "key" in options:
            headers.append((b"authorization", b"Bearer " + BENCH_KEY.encode()))
        if "sign" in options:
            signed = signer.headers(signer.new_id(), body)
            headers.extend((k.encode(), v.encode()) for k, v in signed.items())
        out.append((headers, body))
    return out


async def _front(variant: str, n: int, warm_up: int = 500) -> float:
    """CPU-us per request of `n` single-event POST /webhook through WebhookFront."""
    from bench.stages.http_server import _app
    from sluice.http.front import front

    options = set(variant.split("+")[1:])
    app = front(_app(options))
    requests = _front_requests(n + warm_up, options)

    async def one(headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        scope = {"type": "http", "path": "/webhook", "method": "POST", "headers": headers}
        statuses = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app(scope, receive, send)
        if statuses != [202]:
            raise RuntimeError(f"{variant}: answered {statuses}")

    for headers, body in requests[:warm_up]:
        await one(headers, body)
    started = time.process_time()
    for headers, body in requests[warm_up:]:
        await one(headers, body)
    return (time.process_time() - started) / n * 1e6


def run_front(rounds: int = 5, requests: int = 10_000) -> dict[str, Any]:
    import asyncio

    runs: dict[str, list[float]] = {name: [] for name in FRONT_VARIANTS}
    for r in range(rounds):
        order = FRONT_VARIANTS if r % 2 == 0 else tuple(reversed(FRONT_VARIANTS))
        for name in order:
            runs[name].append(round(asyncio.run(_front(name, requests)), 1))
    base = statistics.median(runs[FRONT_VARIANTS[0]])
    return {
        "requests": requests,
        "rounds": rounds,
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "cpu_us_per_request": {
            name: {
                "median": statistics.median(values),
                "runs": values,
                "added_us": round(statistics.median(values) - base, 1),
            }
            for name, values in runs.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--front", action="store_true", help="whole requests through the front")
    args = parser.parse_args()
    result = run_front(args.rounds, args.calls // 2) if args.front else run(args.rounds, args.calls)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
