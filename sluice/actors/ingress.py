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
import errno
import logging
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from hypercorn.asyncio import serve
from hypercorn.config import Config
from hypercorn.utils import LifespanFailureError, LifespanTimeoutError

from sluice.engine import Actor, DrainDeadline, FatalError
from sluice.http.errors import json_bytes
from sluice.http.front import front

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from sluice.http.asgi import Message, Receive, Scope, Send

log = logging.getLogger("sluice.ingress")

KEEP_ALIVE_TIMEOUT = 75  # seconds an idle keep-alive connection stays open
MAX_HEAD_BYTES = 16 * 1024  # request line + headers (431 over it)

STOP_MARGIN = 1.0  # seconds of the drain's deadline the HTTP server leaves unused


ALWAYS_SERVED = frozenset({"/health/live", "/health/ready", "/metrics"})


@dataclass(frozen=True)
class Admission:
    """What the server takes on at once, checked from the head, before any work.

    `max_requests`: requests being served (the ALWAYS_SERVED paths are not counted:
    an orchestrator must see a busy process as alive). `max_body_bytes`: what the
    bodies of those requests may add up to, from their Content-Length (a chunked body
    counts as `body_limit`, the most it may be). `body_timeout`: seconds a request's
    body may take to arrive, from the app's first wait for it (then 408 and a close).
    """

    max_requests: int = 1024
    max_body_bytes: int = 256 * 1024 * 1024
    body_limit: int = 16 * 1024 * 1024
    retry_after: int = 1
    body_timeout: float = 30.0

    @property
    def body_check_interval(self) -> float:
        """How often bodies still arriving are checked against `body_timeout`."""
        return min(1.0, self.body_timeout / 4)


def _head(scope: Scope, body_limit: int) -> tuple[int, int]:
    """The request head's size as sent (give or take the method and version), and the
    body size it announces (0 when none; `body_limit` when chunked)."""
    size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
    body = 0
    for name, value in scope["headers"]:
        size += len(name) + len(value) + 4
        if name == b"content-length":
            body = int(value) if value.isdigit() else 0
        elif name == b"transfer-encoding":
            body = body_limit
    return size, body


async def _refuse(
    send: Send,
    status: int,
    message: str,
    headers: list[tuple[bytes, bytes]],
) -> None:
    body = json_bytes({"error": message})
    head = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class LifespanFailed(RuntimeError):
    """The app's lifespan startup failed (its error is in the log)."""


class _Served:
    """The app as Hypercorn serves it: admits requests (head size, `Admission`), notes
    how its lifespan startup went, keeps the tasks of the requests in flight so a forced
    stop can cancel them, and cuts off bodies that arrive too slowly.

    A body's timeout is one timer for all requests (`cut_slow_bodies`, called every
    `Admission.body_check_interval`) rather than a cancel scope per request: most bodies
    are already there when the app asks for them, and a scope costs ~3% of a small
    request's CPU. A task waiting for body bytes past its time is cancelled; its wait
    answers 408 (with a close) and gives the app `http.disconnect`, as if the client had
    gone.
    """

    def __init__(self, app: Any, admission: Admission) -> None:
        self.app = app
        self._admission = admission
        self._body_bytes = 0  # announced by the requests being served
        self.lifespan_done = anyio.Event()
        self.lifespan_failure: str | None = None
        self._requests: set[asyncio.Task[Any]] = set()
        self._counted = 0  # requests being served, but for ALWAYS_SERVED ones
        self._cancelled = False
        self._receiving: dict[asyncio.Task[Any], float] = {}  # waiting for body bytes: until
        self._cut: set[asyncio.Task[Any]] = set()  # cancelled by cut_slow_bodies

    async def __call__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        admission = self._admission
        head, body = _head(scope, admission.body_limit)
        if head > MAX_HEAD_BYTES:
            log.warning("request head over %d bytes: answered 431", MAX_HEAD_BYTES)
            message = f"request head too large (limit {MAX_HEAD_BYTES} bytes)"
            await _refuse(send, 431, message, [(b"connection", b"close")])
            return
        if body > admission.body_limit:
            body = 0  # answered 413 before its body is read
        counted = scope["path"] not in ALWAYS_SERVED
        if counted:
            busy = self._busy(body)
            if busy is not None:
                retry = [(b"retry-after", b"%d" % admission.retry_after)]
                await _refuse(send, 503, busy, retry)
                return
            self._body_bytes += body
        task = asyncio.current_task()
        assert task is not None
        if self._cancelled:
            task.cancel()
        self._requests.add(task)
        try:
            await self.app(scope, self._timed(receive, send), send)
        finally:
            self._requests.discard(task)
            if counted:
                self._counted -= 1
                self._body_bytes -= body

    def _timed(self, receive: Receive, send: Send) -> Receive:
        """`receive`, cut off `body_timeout` after the app first waits in it, until the
        body is whole (Quart goes on waiting in it for a disconnect: that is not timed)."""
        receiving, cut = self._receiving, self._cut
        timeout = self._admission.body_timeout
        until: float | None = None
        whole = False

        async def timed_receive() -> Message:
            nonlocal until, whole
            if whole:
                return await receive()
            # The task that waits: Quart reads bodies in a task of its own.
            task = asyncio.current_task()
            assert task is not None
            if until is None:
                until = asyncio.get_running_loop().time() + timeout
            receiving[task] = until
            try:
                message = await receive()
            except asyncio.CancelledError:
                if task not in cut:
                    raise
                cut.discard(task)
                if task.uncancel():
                    raise  # cancelled for another reason as well
                whole = True
                error = f"request body not received within {timeout:g} s"
                await _refuse(send, 408, error, [(b"connection", b"close")])
                return {"type": "http.disconnect"}
            finally:
                del receiving[task]
            if not message.get("more_body", False):
                whole = True
            return message

        return timed_receive

    def cut_slow_bodies(self) -> None:
        """Cancel the waits for body bytes that have run past their time."""
        if not self._receiving:
            return
        now = asyncio.get_running_loop().time()
        for task, until in list(self._receiving.items()):
            if until <= now and task not in self._cut:
                log.info("request body not received in time: answered 408")
                self._cut.add(task)
                task.cancel()

    def _busy(self, body: int) -> str | None:
        """Why a request cannot be taken now (None: it is admitted and counted)."""
        admission = self._admission
        if self._counted >= admission.max_requests:
            return f"too many requests at once (limit {admission.max_requests}); retry later"
        if body and self._body_bytes + body > admission.max_body_bytes:
            return f"too many request bytes at once (limit {admission.max_body_bytes}); retry later"
        self._counted += 1
        return None

    async def _lifespan(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        async def noting_send(message: Message) -> None:
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
        admission: Admission | None = None,
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
        self._admission = admission if admission is not None else Admission()
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
        try:
            sock = self._listen()
        except OSError as exc:
            raise listen_error(self._host, self._port, exc) from exc
        host, port = sock.getsockname()[:2]
        self.bound = (host, port)
        # The webhook served raw, Quart for the rest.
        served = _Served(front(self._app), self._admission)
        # Hypercorn owns the socket from here on, and closes it as it stops accepting.
        socket_inode = os.fstat(sock.fileno()).st_ino
        handed = sock.detach()
        config = self._config(handed)
        failure: BaseException | None = None
        checking_bodies = anyio.CancelScope()
        async with anyio.create_task_group() as tg:

            async def check_bodies() -> None:
                with checking_bodies:
                    while True:
                        await anyio.sleep(self._admission.body_check_interval)
                        served.cut_slow_bodies()

            async def serve_until_triggered() -> None:
                nonlocal failure
                try:
                    with anyio.CancelScope(shield=True):
                        app: Any = served  # an ASGI 3 app, as Hypercorn's types spell it
                        await serve(app, config, shutdown_trigger=self._trigger.wait, mode="asgi")
                except Exception as exc:
                    failure = exc
                finally:
                    checking_bodies.cancel()
                    _close_if_unserved(handed, socket_inode)
                    self._served_out.set()
                    served.lifespan_done.set()
                    self._wake.set()

            tg.start_soon(serve_until_triggered)
            tg.start_soon(check_bodies)
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


def listen_error(host: str, port: int, exc: OSError) -> Exception:
    """What to raise for a failed bind: a FatalError naming the setting to change when no
    restart can fix it (port in use or refused, address not here), else `exc` itself."""
    if exc.errno in (errno.EADDRINUSE, errno.EACCES):
        hint = "set SLUICE_HTTP_PORT or --port"
    elif exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
        hint = "set SLUICE_HTTP_HOST or --host"
    else:
        return exc  # e.g. out of file descriptors: a restart may well help
    reason = (exc.strerror or str(exc)).lower()
    return FatalError(f"cannot listen on {host}:{port}: {reason} ({hint})")


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
