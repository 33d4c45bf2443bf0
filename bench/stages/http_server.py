"""Stage: CPU per request of the HTTP server in front of sluice's ASGI app.

Each candidate server runs in its own process, on uvloop, on a pre-bound socket, serving
the real `front(create_app(...))` (WebhookFront before Quart) with an event log that
acks at once (no NATS): what is left is HTTP parsing and writing, the ASGI plumbing and
sluice's handler (validate one event, build its envelope, answer). A load process sends
small single-event POSTs over keep-alive connections; the figure is the server process's
CPU seconds (user + system, /proc via psutil) over a fixed number of requests.

Servers:
- `hypercorn`: bare hypercorn.asyncio.serve (no Server header, no access log) serving
  the same front;
- `ingress`: the `sluice.actors.ingress.Ingress` actor as it is in this tree (Hypercorn
  too, plus what the actor adds: the in-flight tracking and the head limit).

To compare with an older ingress (uvicorn, up to 2026-12), run this script from a
checkout of that commit with its own virtualenv, in the same sitting.

A `+log` suffix (`ingress+log`) sets up sluice's logging as `sluice run` does (JSON, INFO:
the webhook logs a line per request), writing to /dev/null; without it nothing is logged.

`+slow` acks each publish after SLOW_ACK (2 ms, an fsync's worth) instead of at once, so
concurrent requests wait in group commit's lanes and share messages, as they do against
nats-server. `+run` wires API keys (optional) and rate limits (none) as `sluice run` does
by default: both there, neither applying to a request without a key.

Suffixes combine (`ingress+key+sign`): `+key` requires an API key (SLUICE_AUTH=required,
the key cached as `sluice run` caches it; the store is in memory) and every request
carries one; `+sign` sets webhook secrets for facebook and tiktok (one secret for both)
and every request is signed with it (Standard Webhooks, signed by the load process with
`sluice publish`'s signer before the run). `--servers ingress,ingress+key,ingress+key+sign`
gives what auth and signature verification cost per request. `+unchecked` sends the
same headers to a server that checks nothing (`ingress+key+sign+unchecked`): what
carrying the headers costs the HTTP server, apart from the checks.

Rounds alternate the servers, so each round compares them under the same machine load;
the summary is the median per server and its ratio to the first server.

    .venv/bin/python bench/stages/http_server.py                 # 3 rounds, 20,000 requests each
    .venv/bin/python bench/stages/http_server.py --rounds 5 --requests 30000 --connections 32
    .venv/bin/python bench/stages/http_server.py --servers hypercorn,ingress
    .venv/bin/python bench/stages/http_server.py --servers ingress,ingress+key,ingress+key+sign
    .venv/bin/python bench/stages/http_server.py --servers ingress --instructions  # valgrind
    .venv/bin/python bench/stages/http_server.py --servers ingress+slow+run --connections 64
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

SERVERS = ("hypercorn", "ingress")


# --------------------------------------------------------------------------- server side


class InstantLog:
    """An EventLog whose publish is acked at once: the server and handler remain."""

    max_payload = 1024 * 1024

    def __init__(self, delay: float = 0.0) -> None:
        self.seq = 0
        self.delay = delay

    async def publish(self, source: str, payload: bytes, *, msg_id: str, headers: Any) -> Any:
        from sluice.ports import PublishAck

        if self.delay:  # `+slow`: acked after a while, as an fsync would
            await asyncio.sleep(self.delay)
        self.seq += 1
        return PublishAck("EVENTS", self.seq, False)

    def is_connected(self) -> bool:
        return True


# `+slow`: seconds before a publish is acked (group commit then shares messages).
SLOW_ACK = 0.002

# The API key and webhook secret of the `+key` and `+sign` variants (bench only).
BENCH_KEY = "slk_bench0000000000000000000000000000000000000"
BENCH_KEY_SECRET = b"bench-key-secret"
BENCH_WEBHOOK_SECRET = "whsec_YmVuY2gtd2ViaG9vay1zZWNyZXQtMDEyMzQ1Njc4OQ=="


class OneKey:
    """A KeyStore holding BENCH_KEY (ingest scope), in memory."""

    async def use(self, key_hash: bytes) -> Any:
        from sluice.auth import hash_key
        from sluice.ports import ApiKey

        if key_hash == hash_key(BENCH_KEY_SECRET, BENCH_KEY):
            return ApiKey(1, "bench", frozenset({"ingest"}), None)
        return None


def _app(options: set[str]) -> Any:
    from sluice.auth import Authenticator
    from sluice.config import Settings
    from sluice.http.app import HttpDeps, create_app
    from sluice.http.health import Health
    from sluice.metrics import Metrics
    from sluice.ratelimit import RateLimiter

    auth = limits = None
    settings = Settings()
    if "unchecked" in options:  # the client sends the headers; nothing checks them
        options = options - {"key", "sign"}
    if "run" in options:  # as `sluice run` wires them: always there, off by default
        auth = Authenticator(OneKey(), BENCH_KEY_SECRET, required=False)
        limits = RateLimiter(requests=0, events=0, burst=1)
    if "key" in options:
        auth = Authenticator(OneKey(), BENCH_KEY_SECRET, required=True)
        settings = dataclasses.replace(settings, auth="required")
    if "sign" in options:
        secrets = (("facebook", BENCH_WEBHOOK_SECRET), ("tiktok", BENCH_WEBHOOK_SECRET))
        settings = dataclasses.replace(settings, webhook_secrets=secrets)
    event_log = InstantLog(SLOW_ACK if "slow" in options else 0.0)
    return create_app(
        HttpDeps(settings, Metrics(), Health(), event_log=event_log, auth=auth, limits=limits)
    )


def _listen() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


def _announce(port: int) -> None:
    print(f"port {port}", flush=True)


async def _serve_hypercorn(app: Any, stop: asyncio.Event) -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    sock = _listen()
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.graceful_timeout = 5
    config.backlog = 1024
    config.accesslog = None
    config.errorlog = logging.getLogger("bench.hypercorn")
    config.keep_alive_timeout = 75
    config.include_server_header = False
    _announce(port)  # connections queue on the bound socket until serve accepts them
    await serve(app, config, shutdown_trigger=stop.wait, mode="asgi")


async def _serve_ingress(app: Any, stop: asyncio.Event) -> None:
    import anyio

    from sluice.actors.ingress import Ingress

    ingress = Ingress(app, host="127.0.0.1", port=0, graceful_timeout=5)
    async with anyio.create_task_group() as tg:
        await tg.start(ingress.run)
        assert ingress.bound is not None
        _announce(ingress.bound[1])
        await stop.wait()
        ingress.request_stop()


def serve(name: str) -> None:
    import uvloop

    from sluice.http.front import front

    name, *suffixes = name.split("+")
    options = set(suffixes)
    if "log" in options:  # as `sluice run` logs (one INFO line per request), to /dev/null
        from sluice.logs import setup_logging

        setup_logging("INFO", json=True)

    async def main() -> None:
        app = _app(options)
        served = app if name == "ingress" else front(app)  # the actor puts it in front itself
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_reader(sys.stdin.fileno(), stop.set)  # the runner closes our stdin
        if name == "hypercorn":
            await _serve_hypercorn(served, stop)
        else:
            await _serve_ingress(app, stop)

    uvloop.run(main())


# --------------------------------------------------------------------------- load side


class _Conn(asyncio.Protocol):
    """One keep-alive connection sending one request at a time."""

    def __init__(self, done: asyncio.Future[None], requests: list[bytes], counts: dict[int, int]):
        self.done = done
        self.requests = requests
        self.counts = counts
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._next()

    def _next(self) -> None:
        if not self.requests:
            assert self.transport is not None
            self.transport.close()
            if not self.done.done():
                self.done.set_result(None)
            return
        assert self.transport is not None
        self.transport.write(self.requests.pop())

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            at = head.index(b"content-length:") + 15
            eol = head.find(b"\r\n", at)
            length = int(head[at : eol if eol >= 0 else len(head)])
            if len(self.buf) < end + 4 + length:
                return
            status = int(self.buf[9:12])
            self.counts[status] = self.counts.get(status, 0) + 1
            self.buf = self.buf[end + 4 + length :]
            self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            if self.requests:
                self.done.set_exception(ConnectionError(f"closed early: {exc!r}"))
            else:
                self.done.set_result(None)


def _requests(n: int, seed: int, options: set[str]) -> list[bytes]:
    from sluice.publish.bodies import BodyMaker
    from sluice.signing import Signer

    maker = BodyMaker(seed=seed)
    signer = Signer([BENCH_WEBHOOK_SECRET]) if "sign" in options else None
    key = b"authorization: Bearer %s\r\n" % BENCH_KEY.encode() if "key" in options else b""
    out = []
    for _ in range(n):
        body = maker.make(1, bare=True).body
        extra = key
        if signer is not None:
            signed = signer.headers(signer.new_id(), body)
            extra += b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in signed.items())
        out.append(
            b"POST /webhook HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
            b"%scontent-length: %d\r\n\r\n%s" % (extra, len(body), body)
        )
    return out


def load(port: int, requests: int, connections: int, seed: int, server: str) -> dict[str, Any]:
    """Send `requests` POSTs over `connections` keep-alive connections; count statuses."""
    import uvloop

    all_requests = _requests(requests, seed, set(server.split("+")[1:]))
    per = [all_requests[i::connections] for i in range(connections)]
    counts: dict[int, int] = {}

    async def main() -> float:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        waits = []
        for chunk in per:
            done = loop.create_future()
            await loop.create_connection(
                lambda c=chunk, d=done: _Conn(d, c, counts), "127.0.0.1", port
            )
            waits.append(done)
        await asyncio.gather(*waits)
        return time.perf_counter() - started

    cpu = time.process_time()
    wall = uvloop.run(main())
    return {"wall": wall, "counts": counts, "client_cpu": time.process_time() - cpu}


# --------------------------------------------------------------------------- runner


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def _run_client(
    port: int, requests: int, connections: int, seed: int, server: str
) -> dict[str, Any]:
    load = [str(port), str(requests), str(connections), str(seed)]
    out = subprocess.run(
        [sys.executable, __file__, "--load", *load, "--server", server],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


# SLUICE_BENCH_PROFILE=DIR: py-spy (on PATH) samples each server while it is measured and
# writes DIR/<server>-<seed>.txt (raw collapsed stacks); its own CPU is not counted.
PROFILE_DIR = os.environ.get("SLUICE_BENCH_PROFILE")


def _profile(pid: int, name: str, seed: int) -> subprocess.Popen[bytes]:
    assert PROFILE_DIR is not None
    out = Path(PROFILE_DIR) / f"{name}-{seed}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = ["py-spy", "record", "--pid", str(pid), "-r", "400", "-f", "raw", "-o", str(out)]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # py-spy attaches before the load starts
    return spy


def measure(name: str, requests: int, connections: int, seed: int) -> dict[str, Any]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL if name.endswith("+log") else None,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        if not line.startswith("port "):
            raise RuntimeError(f"{name}: did not start ({line!r})")
        port = int(line.split()[1])
        ps = psutil.Process(proc.pid)
        _run_client(port, min(2000, requests), connections, seed + 1, name)  # warm-up
        spy = _profile(proc.pid, name, seed) if PROFILE_DIR else None
        before = _cpu(ps)
        result = _run_client(port, requests, connections, seed, name)
        used = _cpu(ps) - before
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=30)
        bad = {k: v for k, v in result["counts"].items() if k != "202"}
        if bad or sum(result["counts"].values()) != requests:
            raise RuntimeError(f"{name}: unexpected answers {result['counts']}")
        proc.stdin.close()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {
        "server": name,
        "cpu_us_per_request": round(used / requests * 1e6, 1),
        "requests_per_s": round(requests / result["wall"]),
        "client_cpu_us_per_request": round(result["client_cpu"] / requests * 1e6, 1),
    }


def run(
    servers: tuple[str, ...] = SERVERS,
    *,
    rounds: int = 3,
    requests: int = 20_000,
    connections: int = 32,
) -> dict[str, Any]:
    rows: dict[str, list[dict[str, Any]]] = {s: [] for s in servers}
    for r in range(rounds):
        order = servers if r % 2 == 0 else tuple(reversed(servers))
        for name in order:
            row = measure(name, requests, connections, seed=100 + r)
            rows[name].append(row)
            print(json.dumps({"round": r, **row}), file=sys.stderr, flush=True)
    summary: dict[str, Any] = {}
    base = statistics.median(x["cpu_us_per_request"] for x in rows[servers[0]])
    for name, runs in rows.items():
        cpu = statistics.median(x["cpu_us_per_request"] for x in runs)
        summary[name] = {
            "cpu_us_per_request_median": cpu,
            "cpu_us_per_request_runs": [x["cpu_us_per_request"] for x in runs],
            "requests_per_s_median": statistics.median(x["requests_per_s"] for x in runs),
            f"cpu_vs_{servers[0]}": round(cpu / base, 2),
        }
    return {
        "requests": requests,
        "connections": connections,
        "rounds": rounds,
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "servers": summary,
    }


def instructions(name: str, small: int, large: int, connections: int) -> dict[str, Any]:
    """Instructions per request under valgrind's callgrind: the server's total for `large`
    requests less its total for `small`, over the difference (start-up cancels out).
    Counts do not depend on what else the machine runs, so a change can be measured on
    a busy machine; callgrind runs the server ~50x slower."""
    totals = []
    for count in (small, large):
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch) / "callgrind.out"
            proc = subprocess.Popen(
                [
                    *("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"),
                    *(sys.executable, __file__, "--serve", name),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            assert proc.stdout is not None and proc.stdin is not None
            line = proc.stdout.readline()
            if not line.startswith("port "):
                raise RuntimeError(f"{name}: did not start under callgrind ({line!r})")
            _run_client(int(line.split()[1]), count, connections, 7, name)
            proc.stdin.close()
            proc.wait(timeout=900)
            found = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
            if found is None:
                raise RuntimeError(f"{name}: no totals in the callgrind output")
            totals.append(int(found.group(1)))
    return {
        "server": name,
        "requests": [small, large],
        "connections": connections,
        "instructions_per_request": round((totals[1] - totals[0]) / (large - small)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--load", nargs=4, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--server", default="", help=argparse.SUPPRESS)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per request under valgrind (500 and 2,500 requests)",
    )
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
    elif args.load:
        port, requests, connections, seed = args.load
        print(json.dumps(load(port, requests, connections, seed, args.server)))
    elif args.instructions:
        for name in (s for s in args.servers.split(",") if s):
            print(json.dumps(instructions(name, 500, 2500, min(args.connections, 8))), flush=True)
    else:
        servers = tuple(s for s in args.servers.split(",") if s)
        result = run(
            servers, rounds=args.rounds, requests=args.requests, connections=args.connections
        )
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
