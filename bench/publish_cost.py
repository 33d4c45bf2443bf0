"""What `sluice publish` itself costs: client CPU per request and per event.

    .venv/bin/python bench/publish_cost.py                 # single, array100, array1000
    .venv/bin/python bench/publish_cost.py single --repeat 3
    .venv/bin/python bench/publish_cost.py --src /tmp/before single   # another tree's client
    .venv/bin/python bench/publish_cost.py --publish-args "--users 0" array100

A sink in its own process (uvloop, one `Protocol`, answers 202 with the body's event
count, at once or after `--delay-ms`) stands in for sluice, so nothing but the client's
own work is measured. The client runs as `python -m sluice.cli publish`; its CPU (user +
system, from `wait4`) minus that of a one-event run (interpreter start, imports, pools)
is reported per request and per event sent.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SCENARIOS: dict[str, tuple[int, int, int]] = {
    # name: (batch, total events, connections), as bench/e2e.py sends them
    "single": (1, 30_000, 32),
    "array100": (100, 300_000, 32),
    "array1000": (1000, 300_000, 32),
}


class _Sink(asyncio.Protocol):
    delay = 0.0  # seconds before each answer

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buffer[:end].lower()
            at = head.index(b"content-length:") + 15
            stop = head.find(b"\r\n", at)
            length = int(head[at:] if stop < 0 else head[at:stop])
            if len(buffer) < end + 4 + length:
                break
            body = buffer[end + 4 : end + 4 + length]
            buffer = buffer[end + 4 + length :]
            payload = b'{"accepted":%d,"duplicates":0,"rejected":[]}' % body.count(b'"eventId"')
            assert self.transport is not None
            answer = (
                b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
            )
            if self.delay:
                asyncio.get_running_loop().call_later(self.delay, self.transport.write, answer)
            else:
                self.transport.write(answer)
        self.buffer = buffer


def sink(port: int, delay: float) -> None:
    import uvloop

    _Sink.delay = delay

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Sink, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    uvloop.run(serve())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def client_cpu(
    url: str, batch: int, total: int, concurrency: int, src: Path | None, extra: list[str]
) -> float:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    cmd = [sys.executable, "-m", "sluice.cli", "publish", "--url", url]
    cmd += ["--batch", str(batch), "--total", str(total), "--concurrency", str(concurrency)]
    cmd += ["--seed", "1", "--progress", "0", *extra]
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, cwd=src or Path.cwd())
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            out.seek(0)
            raise SystemExit(f"publish failed ({proc.returncode}): {out.read().decode()}")
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("scenarios", nargs="*", help=f"of {', '.join(SCENARIOS)} [all]")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--src", type=Path, default=None, help="run the client from this tree")
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the events")
    p.add_argument(
        "--delay-ms", type=float, default=0.0, help="the sink answers after this long [0]"
    )
    p.add_argument("--sink", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--publish-args", default="", help="more `sluice publish` flags, quoted")
    args = p.parse_args()
    if args.sink is not None:
        sink(args.sink, args.delay_ms / 1000)
        return
    extra = shlex.split(args.publish_args)
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--sink", str(port), "--delay-ms", str(args.delay_ms)]
    )
    url = f"http://127.0.0.1:{port}/webhook"
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        results: list[dict[str, Any]] = []
        for name in args.scenarios or SCENARIOS:
            batch, total, concurrency = SCENARIOS[name]
            total = max(batch, int(total * args.scale))
            for _ in range(args.repeat):
                fixed = client_cpu(url, 1, 1, 1, args.src, extra)
                cpu = client_cpu(url, batch, total, concurrency, args.src, extra)
                work = cpu - fixed
                requests = -(-total // batch)
                results.append(
                    {
                        "scenario": name,
                        "events": total,
                        "requests": requests,
                        "cpu_s": round(cpu, 3),
                        "startup_cpu_s": round(fixed, 3),
                        "us_per_request": round(work / requests * 1e6, 1),
                        "us_per_event": round(work / total * 1e6, 2),
                    }
                )
                r = results[-1]
                print(
                    f"{name}: {total:,} events in {requests:,} requests: client {cpu:.2f} CPU-s"
                    f" (start-up {fixed:.2f}); {r['us_per_request']} CPU-us/request,"
                    f" {r['us_per_event']} CPU-us/event",
                    flush=True,
                )
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
