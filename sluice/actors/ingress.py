"""ingress: owns the Hypercorn server that serves the ASGI app.

Hypercorn's asyncio worker, through its public API only: `hypercorn.asyncio.serve` with a
`Config` and a `shutdown_trigger`. The listening socket is bound here before anything
else (so connections queue from then on) and handed to Hypercorn as `fd://`; `started()`
comes once the app's lifespan startup is done, when Hypercorn starts serving it.

Stopping: `request_stop()` fires the trigger. Hypercorn stops accepting, closes idle
keep-alive connections, lets in-flight requests finish for at most `graceful_timeout`
(and never past the drain's deadline), runs the lifespan shutdown and returns. `serve`
is never cancelled (a cancel while it shuts down leaves its tasks behind: Hypercorn
issue 184): it runs shielded, and a forced stop (a cancel of `run()` during the drain,
or the drain's deadline) cancels the requests in flight instead, through `_Served`, the
ASGI wrapper that keeps track of them, so `serve` returns at once. A cancel that comes
before any stop request gets the graceful stop, shielded, bounded by the same deadline.

The request head is limited to MAX_HEAD_BYTES: h11's `max_incomplete_event_size`
(`Config.h11_max_incomplete_size`) cuts off a head still arriving past it, and
`_Served` refuses a whole head over it that came in one read (h11 parses a complete
head of any size it has read): 431 and a close either way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

import anyio
from hypercorn.asyncio import serve
from hypercorn.config import Config
from hypercorn.utils import LifespanFailureError, LifespanTimeoutError

from sluice.engine import Actor, DrainDeadline
from sluice.http.front import front

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    from anyio.abc import TaskStatus

log = logging.getLogger("sluice.ingress")

KEEP_ALIVE_TIMEOUT = 75  # seconds an idle keep-alive connection stays open
MAX_HEAD_BYTES = 16 * 1024  # request line + headers (431 over it)

STOP_MARGIN = 1.0  # seconds of the drain's deadline the HTTP server leaves unused


_HEAD_TOO_LARGE = b'{"error":"request head too large (limit %d bytes)"}' % MAX_HEAD_BYTES


def _head_size(scope: MutableMapping[str, Any]) -> int:
    """The request line and headers, as sent (give or take the method and version)."""
    size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
    for name, value in scope["headers"]:
        size += len(name) + len(value) + 4
    return size


async def _refuse_head(send: Callable[[MutableMapping[str, Any]], Awaitable[None]]) -> None:
    log.warning("request head over %d bytes: answered 431", MAX_HEAD_BYTES)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(_HEAD_TOO_LARGE)),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 431, "headers": headers})
    await send({"type": "http.response.body", "body": _HEAD_TOO_LARGE})


class LifespanFailed(RuntimeError):
    """The app's lifespan startup failed (its error is in the log)."""


class _Served:
    """The app as Hypercorn serves it: notes how its lifespan startup went, and keeps
    the tasks of the requests in flight so a forced stop can cancel them."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lifespan_done = anyio.Event()
        self.lifespan_failure: str | None = None
        self._requests: set[asyncio.Task[Any]] = set()
        self._cancelled = False

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] == "http" and _head_size(scope) > MAX_HEAD_BYTES:
            await _refuse_head(send)
            return
        task = asyncio.current_task()
        assert task is not None
        if self._cancelled:
            task.cancel()
        self._requests.add(task)
        try:
            await self.app(scope, receive, send)
        finally:
            self._requests.discard(task)

    async def _lifespan(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        async def noting_send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "lifespan.startup.failed":
                self.lifespan_failure = message.get("message") or "lifespan startup failed"
                self.lifespan_done.set()
            elif message["type"] == "lifespan.startup.complete":
                self.lifespan_done.set()
            await send(message)

        try:
            await self.app(scope, receive, noting_send)
        finally:
            # An app without lifespan support raises at once: Hypercorn serves it without.
            self.lifespan_done.set()

    @property
    def in_flight(self) -> int:
        return len(self._requests)

    def cancel_requests(self) -> None:
        """Cancel every request in flight, and any that starts from now on."""
        self._cancelled = True
        for task in list(self._requests):
            task.cancel()


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
        deadline: DrainDeadline | None = None,
        name: str = "ingress",
    ) -> None:
        self.name = name
        self._app = app
        self._host = host
        self._port = port
        self._graceful_timeout = graceful_timeout
        self._backlog = backlog
        self._reuse_port = reuse_port
        self._deadline = deadline if deadline is not None else DrainDeadline()
        self._stop_requested = anyio.Event()
        self._wake = anyio.Event()  # a stop request, or the server ended by itself
        self._trigger = anyio.Event()  # Hypercorn's shutdown trigger
        self._served_out = anyio.Event()  # serve() has returned
        self.bound: tuple[str, int] | None = None
        self.served: _Served | None = None
        """The app as served (tests look at the requests in flight)."""

    def request_stop(self) -> None:
        self._stop_requested.set()
        self._wake.set()

    def _listen(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self._reuse_port:
                # Several processes bind this port; the kernel balances connections.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            # Accepted sockets inherit it: a small response goes out at once.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((self._host, self._port))
            sock.listen(self._backlog)
        except OSError:
            sock.close()
            raise
        return sock

    def _config(self, fd: int) -> Config:
        config = Config()
        config.bind = [f"fd://{fd}"]
        config.backlog = self._backlog
        config.graceful_timeout = self._graceful_timeout
        config.keep_alive_timeout = KEEP_ALIVE_TIMEOUT
        # No per-read timeout: in Python 3.11 each would cost a Task per read, and a
        # client trickling a byte at a time resets it anyway. A head still arriving is
        # cut at keep_alive_timeout (the connection counts as idle until it is whole).
        config.read_timeout = None
        config.h11_max_incomplete_size = MAX_HEAD_BYTES
        config.include_server_header = False
        config.accesslog = None  # the webhook logs its own line; Quart's routes are timed
        config.errorlog = logging.getLogger("sluice.hypercorn")
        return config

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        sock = self._listen()
        host, port = sock.getsockname()[:2]
        self.bound = (host, port)
        served = _Served(front(self._app))  # the webhook served raw, Quart for the rest
        # Hypercorn owns the socket from here on, and closes it as it stops accepting.
        socket_inode = os.fstat(sock.fileno()).st_ino
        handed = sock.detach()
        config = self._config(handed)
        failure: BaseException | None = None
        async with anyio.create_task_group() as tg:

            async def serve_until_triggered() -> None:
                nonlocal failure
                try:
                    with anyio.CancelScope(shield=True):
                        app: Any = served  # an ASGI 3 app, as Hypercorn's types spell it
                        await serve(app, config, shutdown_trigger=self._trigger.wait, mode="asgi")
                except Exception as exc:
                    failure = exc
                finally:
                    _close_if_unserved(handed, socket_inode)
                    self._served_out.set()
                    served.lifespan_done.set()
                    self._wake.set()

            tg.start_soon(serve_until_triggered)
            await served.lifespan_done.wait()
            if served.lifespan_failure is None and not self._served_out.is_set():
                log.info("listening on http://%s:%d", host, port)
                self.served = served
                task_status.started()
                await self._stop(served, config)
            self._trigger.set()
        if served.lifespan_failure is not None or isinstance(
            failure, (LifespanFailureError, LifespanTimeoutError)
        ):
            raise LifespanFailed(served.lifespan_failure or str(failure)) from failure
        if failure is not None:
            raise failure
        if not self._stop_requested.is_set():
            raise RuntimeError(f"{self.name}: the HTTP server stopped by itself")

    async def _stop(self, served: _Served, config: Config) -> None:
        """Wait for a stop request, then stop gracefully; a cancel during that forces."""
        try:
            await self._wake.wait()
        except anyio.get_cancelled_exc_class():
            # Cancelled before any stop request: stop gracefully all the same (shielded,
            # bounded by the drain's deadline).
            with self._deadline.shield(self._graceful_timeout) as scope:
                self._begin_graceful_stop(config)
                await self._served_out.wait()
            if scope.cancelled_caught:
                self._force(served)
            raise
        if self._served_out.is_set():
            return  # the server ended by itself: run() says why
        self._begin_graceful_stop(config)
        try:
            await self._served_out.wait()
        except anyio.get_cancelled_exc_class():
            self._force(served)
            raise

    def _begin_graceful_stop(self, config: Config) -> None:
        # Read by Hypercorn once the trigger fires: in-flight requests get this long.
        # A second short of the drain's deadline: requests still hanging then are cut,
        # and the drain ends clean rather than forced.
        left = max(0.0, self._deadline.remaining() - STOP_MARGIN)
        config.graceful_timeout = min(self._graceful_timeout, left)
        log.info(
            "%s: stopping: finishing requests in flight (at most %.1f s)",
            self.name,
            config.graceful_timeout,
        )
        self._trigger.set()

    def _force(self, served: _Served) -> None:
        log.warning("%s: forced stop: cancelling %d requests", self.name, served.in_flight)
        served.cancel_requests()
        self._trigger.set()


def _close_if_unserved(fd: int, inode: int) -> None:
    """Close the socket handed to Hypercorn if it never took it (a failed lifespan
    startup ends `serve` before it does); once taken, Hypercorn has closed it, and the
    descriptor's number may belong to something else by now."""
    try:
        still_ours = os.fstat(fd).st_ino == inode
    except OSError:
        return
    if still_ours:
        os.close(fd)
