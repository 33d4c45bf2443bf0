"""A scriptable HTTP/1.1 webhook on loopback, in a thread of its own.

It answers 202 with the counts a sluice webhook would give (every event accepted),
unless `script` holds answers to give first; it records every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import msgspec
import pytest


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeWebhook:
    url: str = ""
    requests: list[Request] = field(default_factory=list)
    script: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    close_after: int | None = None  # close the connection after this many answers
    handlers: set[asyncio.Task[None]] = field(default_factory=set)

    def answer(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.script:
            return self.script.pop(0)
        value = msgspec.json.decode(body)
        n = len(value) if isinstance(value, list) else 1
        return 202, {}, b'{"accepted":%d,"duplicates":0,"rejected":[]}' % n

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        answered = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append(Request(path, headers, body))
                status, extra, payload = self.answer(body)
                answered += 1
                closing = self.close_after is not None and answered >= self.close_after
                head_out = f"HTTP/1.1 {status} X\r\nContent-Length: {len(payload)}\r\n"
                head_out += "".join(f"{k}: {v}\r\n" for k, v in extra.items())
                if closing:
                    head_out += "Connection: close\r\n"
                writer.write(head_out.encode() + b"\r\n" + payload)
                await writer.drain()
                if closing:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()
            self.handlers.discard(task)


@pytest.fixture
def webhook() -> Iterator[FakeWebhook]:
    fake = FakeWebhook()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop: list[asyncio.Event] = []

    async def serve() -> None:
        server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        fake.url = f"http://127.0.0.1:{port}/webhook"
        stop.append(asyncio.Event())
        ready.set()
        async with server:
            await stop[0].wait()
        for task in list(fake.handlers):
            task.cancel()
        await asyncio.gather(*fake.handlers, return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield fake
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join(10)
        loop.close()
