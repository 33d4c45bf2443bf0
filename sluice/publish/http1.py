"""A minimal HTTP/1.1 keep-alive client: POST a body, read the answer.

Why not a well-kept client: a load generator that shares 2 cores with the server it
measures must cost little per request, and aiohttp 3.14 costs 3-6x this client's CPU
per request on loopback (87 against 15 CPU-us for single events, 90 against 29 for
arrays of 100; bench/http_client.py, results in bench/README.md); it would replace this
one if it came within 20%. This one does only what `sluice publish` needs: one
connection, one request at a time, Content-Length or chunked answers, `Connection:
close` honoured, http and https.

It is an `asyncio.Protocol`, not streams: a request is one `write` (head and body
together: one send), the answer is parsed in `data_received` and hands its result to
one future. Streams cost a send per `write`, a future per `readuntil`/`readexactly` and
a timer per `asyncio.timeout`; here the timeout is one timer per connection, which is
re-armed only when it fires (a request is rarely that old).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
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
    head: bytes = field(repr=False)  # the status line and headers, as received
    body: bytes

    def header(self, name: str) -> str | None:
        """The value of header `name` (case-insensitive), or None."""
        wanted = name.lower().encode("latin-1")
        for line in self.head.split(b"\r\n")[1:]:
            key, sep, value = line.partition(b":")
            if sep and key.strip().lower() == wanted:
                return value.strip().decode("latin-1")
        return None

    @property
    def headers(self) -> dict[str, str]:
        """All headers, names in lower case (the last of repeated ones)."""
        out: dict[str, str] = {}
        for line in self.head.split(b"\r\n")[1:]:
            key, sep, value = line.partition(b":")
            if sep:
                out[key.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        return out


class Connection:
    """One keep-alive connection, opened on first use and reopened after a close."""

    def __init__(self, target: Target, *, timeout: float = 30.0) -> None:
        self._target = target
        self._timeout = timeout
        self._link: _Link | None = None
        self._request_head: tuple[dict[str, str] | None, bytes] | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def post(
        self,
        body: bytes,
        headers: dict[str, str] | None = None,
        per_request: dict[str, str] | None = None,
    ) -> Answer:
        """POST `body` as JSON. Raises HttpError (connection or protocol failure).

        `headers` go into a request head kept while the same dict is passed again;
        `per_request` headers (a signature) are added to this request only.
        A request that fails on a reused connection (the server closed it while idle) is
        sent once more on a new one; the bodies sluice publishes are safe to repeat.
        """
        reused = self._link is not None and self._link.open
        extra = _head_lines(per_request) if per_request else b""
        try:
            return await self._exchange(body, headers, extra)
        except (OSError, HttpError) as exc:
            await self.close()
            if not reused or isinstance(exc, _Timeout):
                raise HttpError(f"{type(exc).__name__}: {exc}") from exc
        try:
            return await self._exchange(body, headers, extra)
        except (OSError, HttpError) as exc:
            await self.close()
            raise HttpError(f"{type(exc).__name__}: {exc}") from exc

    async def _exchange(
        self, body: bytes, headers: dict[str, str] | None, extra: bytes = b""
    ) -> Answer:
        loop = asyncio.get_running_loop()
        link = self._link
        if link is None or not link.open:
            link = self._link = await self._connect(loop)
        cached = self._request_head
        if cached is None or cached[0] is not headers:
            cached = self._request_head = (headers, self._head_for(headers))
        if self._timer is None:
            self._timer = loop.call_at(loop.time() + self._timeout, self._check_timeout)
        data = b"%s%sContent-Length: %d\r\n\r\n%s" % (cached[1], extra, len(body), body)
        try:
            return await link.request(data, loop)
        except asyncio.CancelledError:
            link.abort()  # its answer, if it comes, must not be taken for the next one's
            raise

    def _head_for(self, headers: dict[str, str] | None) -> bytes:
        t = self._target
        extra = _head_lines(headers) if headers else b""
        return (
            b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"User-Agent: sluice-publish\r\n%s" % (t.path, t.host_header, extra)
        )

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Link:
        t = self._target
        context = ssl.create_default_context() if t.scheme == "https" else None
        try:
            async with asyncio.timeout(self._timeout):
                _, link = await loop.create_connection(_Link, t.host, t.port, ssl=context)
        except TimeoutError:
            raise _Timeout(f"no connection within {self._timeout:g} s") from None
        return link

    def _check_timeout(self) -> None:
        """Fail the request in flight once it is `timeout` old; re-arm for its deadline."""
        self._timer = None
        link = self._link
        if link is None or not link.busy:
            return  # idle: the next request arms the timer again
        loop = asyncio.get_running_loop()
        due = link.sent_at + self._timeout
        if loop.time() < due:
            self._timer = loop.call_at(due, self._check_timeout)
        else:
            link.fail(_Timeout(f"no answer within {self._timeout:g} s"))

    async def close(self) -> None:
        """Close the connection and wait until it is (a second at most, then abort)."""
        link, self._link = self._link, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if link is not None:
            link.close()
            if link.lost is not None and not link.lost.done():
                try:
                    async with asyncio.timeout(1.0):
                        await asyncio.shield(link.lost)
                except TimeoutError:
                    link.abort()


class _Link(asyncio.Protocol):
    """One transport's protocol: sends a request, parses its answer into a future."""

    def __init__(self) -> None:
        self.open = False
        self.sent_at = 0.0  # loop time of the request in flight
        self.lost: asyncio.Future[None] | None = None  # done once the transport is closed
        self._transport: asyncio.Transport | None = None
        self._closing: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Answer] | None = None
        # The answer being read:
        self._buffer = bytearray()
        self._status = 0
        self._head = b""
        self._length = -1  # body bytes; -1 until the head is read
        self._chunked = False
        self._until_close = False
        self._close_after = False

    @property
    def busy(self) -> bool:
        return self._waiter is not None and not self._waiter.done()

    def request(self, data: bytes, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Answer]:
        """Send `data` (head and body: one write, so one send) and return the answer's
        future. The transport buffers what the kernel does not take at once; the answer
        comes only after the server has read all of it, so there is nothing to drain."""
        assert self._transport is not None and not self.busy
        self._reset()
        waiter = self._waiter = loop.create_future()
        self.sent_at = loop.time()
        self._transport.write(data)
        return waiter

    def close(self) -> None:
        transport, self._transport = self._transport, None
        self.open = False
        if transport is not None:
            self._closing = transport
            transport.abort() if self.busy else transport.close()

    def abort(self) -> None:
        transport = self._transport or self._closing
        self.close()
        if transport is not None:
            transport.abort()

    def fail(self, exc: Exception) -> None:
        self.close()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.open = True
        self.lost = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = self._closing = None
        self.open = False
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._until_close and exc is None:
            self._finish(bytes(self._buffer))
        else:
            reason = f"connection lost: {exc}" if exc else "the server closed the connection"
            waiter.set_exception(ConnectionResetError(reason))

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            return  # nothing asked: stray bytes, dropped with the connection
        buffer = self._buffer
        buffer += data
        try:
            reading_head = self._length < 0 and not self._chunked and not self._until_close
            if reading_head and not self._read_head():
                return
            if self._until_close:
                return
            if self._chunked:
                body = _dechunk(buffer)
                if body is not None:
                    self._finish(body)
            elif len(buffer) >= self._length:
                self._finish(bytes(buffer[: self._length]))
        except HttpError as exc:
            self.fail(exc)

    def _read_head(self) -> bool:
        """Parse the status line and headers once they are in; False until then."""
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > _MAX_HEAD:
                raise HttpError("answer head too large")
            return False
        head = bytes(buffer[:end])
        del buffer[: end + 4]
        if not head.startswith(b"HTTP/1.") or len(head) < 12:
            raise HttpError(f"not an HTTP/1.x answer: {head[:40]!r}")
        try:
            status = int(head[9:12])
        except ValueError:
            raise HttpError(f"bad status line: {head[:40]!r}") from None
        lower = head.lower()
        self._status, self._head = status, head
        self._close_after = b"\r\nconnection:" in lower and _has(lower, b"connection", b"close")
        at = lower.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = lower.find(b"\r\n", at + 2)
            try:
                self._length = int(lower[at + 17 : stop if stop >= 0 else None])
            except ValueError:
                raise HttpError("bad Content-Length") from None
        elif _has(lower, b"transfer-encoding", b"chunked"):
            self._chunked = True
        elif status in (204, 304) or 100 <= status < 200:
            self._length = 0
        else:
            self._until_close = self._close_after = True
        return True

    def _finish(self, body: bytes) -> None:
        waiter = self._waiter
        assert waiter is not None
        waiter.set_result(Answer(self._status, self._head, body))
        if self._close_after:
            self.close()

    def _reset(self) -> None:
        self._buffer = bytearray()
        self._length = -1
        self._chunked = self._until_close = self._close_after = False


def _head_lines(headers: dict[str, str]) -> bytes:
    return b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in headers.items())


class _Timeout(HttpError, TimeoutError):
    """No connection or no answer within the timeout; not retried on a new connection."""


def _has(lower_head: bytes, name: bytes, token: bytes) -> bool:
    for line in lower_head.split(b"\r\n")[1:]:
        key, sep, value = line.partition(b":")
        if sep and key.strip() == name and token in value:
            return True
    return False


def _dechunk(buffer: bytearray) -> bytes | None:
    """The body once the whole chunked encoding (trailers included) is in; else None."""
    parts: list[bytes] = []
    at = 0
    while True:
        eol = buffer.find(b"\r\n", at)
        if eol < 0:
            return None
        try:
            size = int(bytes(buffer[at:eol]).split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise HttpError("bad chunk size") from None
        at = eol + 2
        if size == 0:
            while True:  # trailers, up to an empty line
                eol = buffer.find(b"\r\n", at)
                if eol < 0:
                    return None
                if eol == at:
                    return b"".join(parts)
                at = eol + 2
        if len(buffer) < at + size + 2:
            return None
        parts.append(bytes(buffer[at : at + size]))
        at += size + 2
