"""The HTTP client of `sluice publish`: the hand-written one (sluice/publish/http1.py)
against aiohttp's, in client CPU per request on loopback.

    .venv/bin/python -m pip install aiohttp     # not a dependency of sluice
    .venv/bin/python bench/http_client.py                   # single and array100, 3 rounds
    .venv/bin/python bench/http_client.py --rounds 5 single

The server is bench/publish_cost.py's sink (uvloop, answers 202 at once) in a process of
its own. Each client runs in a process of its own under uvloop, as `sluice publish` does,
and POSTs the same ready-made body (one event, or an array of 100) from `--concurrency`
keep-alive connections: only the HTTP client's work differs. Its CPU (user + system,
from `wait4`) less that of a one-request run (start-up, imports) is divided by the
requests. The clients take turns within each round, so machine load hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = {"single": (1, 20_000), "array100": (100, 4_000)}  # events per body, requests
CLIENTS = ("http1", "aiohttp")


async def post_all(client: str, url: str, body: bytes, requests: int, concurrency: int) -> None:
    remaining = requests

    def take() -> bool:
        nonlocal remaining
        remaining -= 1
        return remaining >= 0

    if client == "http1":
        from sluice.publish.http1 import Connection, Target

        async def worker() -> None:
            connection = Connection(Target.parse(url), timeout=30)
            try:
                while take():
                    answer = await connection.post(body)
                    assert answer.status == 202, answer.status
            finally:
                await connection.close()

        async with asyncio.TaskGroup() as tg:
            for _ in range(concurrency):
                tg.create_task(worker())
        return

    import aiohttp

    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while take():
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    assert response.status == 202, response.status

        async with asyncio.TaskGroup() as tg:
            for _ in range(concurrency):
                tg.create_task(worker())


def client_cpu(client: str, url: str, body: Path, requests: int, concurrency: int) -> float:
    cmd = [sys.executable, __file__, "--client", client, "--url", url, "--body", str(body)]
    cmd += ["--requests", str(requests), "--concurrency", str(concurrency)]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{client} client failed")
    return usage.ru_utime + usage.ru_stime


def make_body(events: int) -> bytes:
    from sluice.publish.bodies import BodyMaker

    return BodyMaker(seed=1).make(events, bare=events == 1).body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("scenarios", nargs="*", help=f"of {', '.join(SCENARIOS)} [all]")
    p.add_argument("--rounds", type=int, default=3, help="[%(default)s]")
    p.add_argument("--concurrency", type=int, default=32, help="connections [%(default)s]")
    p.add_argument("--client", choices=CLIENTS, help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--body", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--requests", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client is not None:  # one measured client process
        import uvloop

        body = args.body.read_bytes()
        uvloop.run(post_all(args.client, args.url, body, args.requests, args.concurrency))
        return

    port = free_port()
    sink = [sys.executable, str(ROOT / "bench/publish_cost.py"), "--sink", str(port)]
    server = subprocess.Popen(sink)
    url = f"http://127.0.0.1:{port}/webhook"
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.scenarios or SCENARIOS:
                events, requests = SCENARIOS[name]
                body = Path(tmp) / f"{name}.json"
                body.write_bytes(make_body(events))
                per_request: dict[str, list[float]] = {c: [] for c in CLIENTS}
                for _ in range(args.rounds):
                    for client in CLIENTS:
                        fixed = client_cpu(client, url, body, 1, 1)
                        cpu = client_cpu(client, url, body, requests, args.concurrency)
                        per_request[client].append((cpu - fixed) / requests * 1e6)
                medians = {c: statistics.median(v) for c, v in per_request.items()}
                rounds = {c: ", ".join(f"{x:.0f}" for x in v) for c, v in per_request.items()}
                print(
                    f"{name} ({len(body.read_bytes()):,} B bodies, {requests:,} requests,"
                    f" {args.concurrency} connections): CPU-us/request median"
                    f" http1 {medians['http1']:.0f} [{rounds['http1']}],"
                    f" aiohttp {medians['aiohttp']:.0f} [{rounds['aiohttp']}];"
                    f" aiohttp / http1 = {medians['aiohttp'] / medians['http1']:.2f}",
                    flush=True,
                )
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
