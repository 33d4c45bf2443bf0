"""ingress: owns the HTTP server (uvicorn's httptools protocol) that serves the ASGI app.

uvicorn is driven through its lower-level `Server.startup()` / `Server.shutdown()`:
`Server.serve()` would install its own SIGINT/SIGTERM handlers, and sluice handles
signals itself (`run_until_signalled`). The listening socket is bound before anything
else, so connections queue from then on; `started()` comes once the app's lifespan
startup is done and the socket is being served.

Stopping: `request_stop()` stops accepting, closes idle keep-alive connections and lets
in-flight requests finish (each connection closes after its response), for at most
`graceful_timeout`, then runs the lifespan shutdown and returns. A cancel during that
forces: connections are closed and their requests cancelled at once. A cancel that
comes first (no `request_stop()`) gets the graceful stop, shielded, still bounded by
`graceful_timeout`.

uvicorn with httptools costs ~2.5x less CPU per small request than Hypercorn + h11
(bench/stages/http_server.py; bench/README.md, "HTTP server per request").
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Any

import anyio
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from sluice.engine import Actor
from sluice.http.front import front

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

log = logging.getLogger("sluice.ingress")

KEEP_ALIVE_TIMEOUT = 75  # seconds an idle keep-alive connection stays open
MAX_HEAD_BYTES = 16 * 1024  # request line + headers; as Hypercorn's h11 limit was
FORCE_WAIT = 1.0  # seconds for cancelled requests to unwind when a drain is forced

_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
)
_HEAD_TOO_LARGE_BODY = b'{"error":"request head too large (limit %d bytes)"}' % MAX_HEAD_BYTES


class _HeadTooLarge(Exception):
    pass


class _CoalescedWrites:
    """The connection's transport, with a response's head and body sent in one send().

    uvicorn writes a response's head and body separately, each a send() at once (and,
    with TCP_NODELAY, a segment each); joined, a small webhook response costs ~10% less
    server CPU and the client reads one segment. A write is held until the next one
    (the body after the head), which sends both at once; a write that stays alone (100
    Continue, a body-less response) goes out at the loop's next pass (`call_soon`), or
    before a close, or when the peer half-closes (`_Protocol.eof_received`). An abort
    drops it, as it drops the transport's own buffer.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._pending.append(data)
        if len(self._pending) > 1:
            self.flush()  # not call_soon: that would queue it behind other requests' work
        else:
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a bound on the request head and one send()
    per response (`_CoalescedWrites`).

    httptools buffers a header however long it is (llhttp has no limit of its own), so
    the head is counted twice, each count a lower bound of its true size: the URL and
    headers parsed so far, and the reads that fell wholly inside the head (which is what
    catches one endless header). Over MAX_HEAD_BYTES the answer is 431 and a close.
    """

    _in_head = False
    _parsed = 0
    _read = 0
    _too_large = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        # Flow control and addresses keep the real transport; responses get the wrapper.
        self.transport = _CoalescedWrites(self.transport)  # type: ignore[assignment]

    def eof_received(self) -> None:
        # The transport closes itself after this (no keep-alive on a half-closed
        # connection): what the response wrote must go out first.
        if isinstance(self.transport, _CoalescedWrites):
            self.transport.flush()
        super().eof_received()

    def on_message_begin(self) -> None:
        self._in_head = True
        self._parsed = self._read = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def _count(self, size: int) -> None:
        self._parsed += size
        if self._parsed > MAX_HEAD_BYTES:
            self._too_large = True
            raise _HeadTooLarge  # feed_data raises HttpParserCallbackError: a 400 below

    def data_received(self, data: bytes) -> None:
        inside = self._in_head
        super().data_received(data)
        if inside and self._in_head and not self._too_large:
            self._read += len(data)
            if self._read > MAX_HEAD_BYTES:
                self._too_large = True
                self._refuse_head()

    def send_400_response(self, msg: str) -> None:
        if self._too_large:
            self._refuse_head()
        else:
            super().send_400_response(msg)

    def _refuse_head(self) -> None:
        if self.transport.is_closing():
            return
        log.warning("request head over %d bytes: answered 431", MAX_HEAD_BYTES)
        body = _HEAD_TOO_LARGE_BODY
        self.transport.write(_HEAD_TOO_LARGE % (len(body), body))
        self.transport.close()


class LifespanFailed(RuntimeError):
    """The app's lifespan startup failed (its error is in the log, from uvicorn)."""


class Ingress(Actor):
    name = "ingress"

    def __init__(
        self,
        app: Any,
        *,
        host: str,
        port: int,
        graceful_timeout: float,
        backlog: int = 1024,
        reuse_port: bool = False,
    ) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._graceful_timeout = graceful_timeout
        self._backlog = backlog
        self._reuse_port = reuse_port
        self._shutdown = anyio.Event()
        self.bound: tuple[str, int] | None = None
        self.server: uvicorn.Server | None = None
        """The running server (tests look at its connections)."""

    def request_stop(self) -> None:
        self._shutdown.set()

    def _listen(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self._reuse_port:
                # Several processes bind this port; the kernel balances connections.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            # Accepted sockets inherit it (and uvloop sets it on them too).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((self._host, self._port))
            sock.listen(self._backlog)
        except OSError:
            sock.close()
            raise
        return sock

    def _config(self) -> uvicorn.Config:
        config = uvicorn.Config(
            front(self._app),  # the webhook served raw, beside Quart for the rest
            http=_Protocol,
            ws="none",
            # As Hypercorn did: an app that does not speak lifespan is served without it;
            # one that reports a failed startup is not served.
            lifespan="auto",
            interface="asgi3",
            log_config=None,  # sluice configures logging; uvicorn.error propagates to it
            access_log=False,
            proxy_headers=False,
            server_header=False,
            backlog=self._backlog,
            timeout_keep_alive=KEEP_ALIVE_TIMEOUT,
            # A float is fine: uvicorn hands it to asyncio.wait_for.
            timeout_graceful_shutdown=self._graceful_timeout,  # type: ignore[arg-type]
        )
        config.load()
        return config

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        sock = self._listen()
        host, port = sock.getsockname()[:2]
        self.bound = (host, port)
        log.info("listening on http://%s:%d", host, port)
        server = uvicorn.Server(self._config())
        server.lifespan = server.config.lifespan_class(server.config)
        await server.on_tick(0)  # the Date header, before the first request
        try:
            # Runs the app's lifespan startup, then serves the socket (which it now owns).
            await server.startup(sockets=[sock])
        except SystemExit as exc:  # uvicorn's answer to a failed lifespan startup
            sock.close()
            raise LifespanFailed("the app's lifespan startup failed") from exc
        except BaseException:
            sock.close()
            raise
        self.server = server
        task_status.started()
        try:
            await self._serve(server)
        except anyio.get_cancelled_exc_class():
            # Cancelled before any stop request: stop gracefully all the same.
            with anyio.CancelScope(shield=True):
                await server.shutdown()
            raise
        try:
            await server.shutdown()  # graceful, up to graceful_timeout
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._force(server)
            raise

    async def _serve(self, server: uvicorn.Server) -> None:
        while not self._shutdown.is_set():
            await server.on_tick(0)  # refreshes the Date header uvicorn adds
            with anyio.move_on_after(1.0):
                await self._shutdown.wait()

    async def _force(self, server: uvicorn.Server) -> None:
        """A forced stop: close every connection, cancel its request, skip the lifespan."""
        log.warning("forced stop: closing %d connections", len(server.server_state.connections))
        server.force_exit = True
        for instance in server.servers:
            instance.close()
        for connection in list(server.server_state.connections):
            connection.transport.close()
        tasks = list(server.server_state.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=FORCE_WAIT)
