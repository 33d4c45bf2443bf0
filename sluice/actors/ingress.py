"""ingress: owns the Hypercorn server that serves the Quart app.

Hypercorn is stopped through its shutdown trigger, never by cancelling `serve`
(hypercorn issue 184): the listening socket is bound first, so `started()` means
connections are already being queued, and `request_stop()` fires the trigger.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any

import anyio
from hypercorn.asyncio import serve
from hypercorn.config import Config

from sluice.engine import Actor
from sluice.http.webhook import front

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

log = logging.getLogger("sluice.ingress")


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
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((self._host, self._port))
            sock.listen(self._backlog)
        except OSError:
            sock.close()
            raise
        return sock

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        sock = self._listen()
        host, port = sock.getsockname()[:2]
        self.bound = (host, port)
        config = Config()
        config.bind = [f"fd://{sock.detach()}"]
        config.graceful_timeout = self._graceful_timeout
        config.backlog = self._backlog
        config.accesslog = None
        config.errorlog = logging.getLogger("sluice.hypercorn")
        config.keep_alive_timeout = 75
        config.include_server_header = False
        log.info("listening on http://%s:%d", host, port)
        app = front(self._app)  # the webhook served raw, beside Quart for the rest

        async def serve_until_triggered() -> None:
            with anyio.CancelScope(shield=True):
                await serve(app, config, shutdown_trigger=self._shutdown.wait, mode="asgi")

        async with anyio.create_task_group() as tg:
            tg.start_soon(serve_until_triggered)
            task_status.started()
            try:
                await self._shutdown.wait()
            finally:
                # Graceful even when cancelled: the shielded serve finishes in-flight
                # requests (up to graceful_timeout) before this task group exits.
                self._shutdown.set()
