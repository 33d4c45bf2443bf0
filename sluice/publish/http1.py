"""A minimal HTTP/1.1 keep-alive client: POST a body, read the answer.

General clients cost 150-400 CPU-us per request in Python; at thousands of requests a
second on a 2-core machine that would measure the client, not the server. This one does
only what `sluice publish` needs: one connection, one request at a time, Content-Length
or chunked answers, `Connection: close` honoured, http and https.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

_MAX_HEAD = 64 * 1024


class HttpError(Exception):
    """The connection failed or the answer was not HTTP/1.x."""


@dataclass(frozen=True, slots=True)
class Target:
    scheme: str
    host: str
    port: int
    path: bytes
    host_header: bytes

    @classmethod
    def parse(cls, url: str) -> Target:
        """Raises ValueError unless `url` is an absolute http(s) URL."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.scheme, parts.hostname, port, path.encode(), parts.netloc.encode())


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


class Connection:
    """One keep-alive connection, opened on first use and reopened after a close."""

    def __init__(self, target: Target, *, timeout: float = 30.0) -> None:
        self._target = target
        self._timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes, headers: dict[str, str] | None = None) -> Answer:
        """POST `body` as JSON. Raises HttpError (connection or protocol failure).

        A request that fails on a reused connection (the server closed it while idle) is
        sent once more on a new one; the bodies sluice publishes are safe to repeat.
        """
        reused = self._writer is not None
        try:
            async with asyncio.timeout(self._timeout):
                return await self._exchange(body, headers)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, HttpError) as exc:
            await self.close()
            if not reused or isinstance(exc, TimeoutError):
                raise HttpError(f"{type(exc).__name__}: {exc}") from exc
        try:
            async with asyncio.timeout(self._timeout):
                return await self._exchange(body, headers)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, HttpError) as exc:
            await self.close()
            raise HttpError(f"{type(exc).__name__}: {exc}") from exc

    async def _exchange(self, body: bytes, headers: dict[str, str] | None) -> Answer:
        t = self._target
        if self._writer is None:
            context = ssl.create_default_context() if t.scheme == "https" else None
            self._reader, self._writer = await asyncio.open_connection(
                t.host, t.port, ssl=context, limit=_MAX_HEAD
            )
        reader, writer = self._reader, self._writer
        assert reader is not None
        extra = b"".join(
            b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in (headers or {}).items()
        )
        writer.write(
            b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nUser-Agent: sluice-publish\r\n%s\r\n"
            % (t.path, t.host_header, len(body), extra)
        )
        writer.write(body)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status, answer_headers = _parse_head(head)
        if "content-length" in answer_headers:
            data = await reader.readexactly(int(answer_headers["content-length"]))
        elif answer_headers.get("transfer-encoding", "").lower() == "chunked":
            data = await _read_chunked(reader)
        elif status in (204, 304) or 100 <= status < 200:
            data = b""
        else:
            data = await reader.read()
            answer_headers["connection"] = "close"
        if answer_headers.get("connection", "").lower() == "close":
            await self.close()
        return Answer(status, answer_headers, data)

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0]
    if not status_line.startswith("HTTP/1.") or len(status_line) < 12:
        raise HttpError(f"not an HTTP/1.x answer: {status_line[:40]!r}")
    try:
        status = int(status_line[9:12])
    except ValueError:
        raise HttpError(f"bad status line: {status_line[:40]!r}") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise HttpError("bad chunk size") from None
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
