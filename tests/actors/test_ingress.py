"""The ingress actor over loopback: what the HTTP server keeps of sluice's contract.

Asyncio only (Hypercorn, Quart). Requests are raw bytes on a TCP stream, so the tests
see exactly what goes over the wire (100 Continue, pipelining, connection: close).
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
import pytest
from anyio.abc import SocketStream
from quart import request

from sluice.actors.ingress import MAX_HEAD_BYTES, Admission, Ingress, LifespanFailed
from sluice.config import Settings
from sluice.engine import DrainDeadline, FatalError
from sluice.http.app import HttpDeps, create_app
from sluice.http.health import Health
from sluice.metrics import Metrics
from tests.factories import make_events
from tests.fakes import FakeEventLog

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def sluice_app(log: FakeEventLog | None = None) -> Any:
    return create_app(HttpDeps(Settings(), Metrics(), Health(), event_log=log or FakeEventLog()))


@asynccontextmanager
async def serving(app: Any, **options: Any) -> AsyncIterator[Ingress]:
    """The ingress, started; drained on leaving unless the test stopped it."""
    options.setdefault("graceful_timeout", 5)
    ingress = Ingress(app, host="127.0.0.1", port=options.pop("port", 0), **options)
    async with anyio.create_task_group() as tg:
        await tg.start(ingress.run)
        yield ingress
        ingress.request_stop()


async def connect(ingress: Ingress) -> SocketStream:
    assert ingress.bound is not None
    return await anyio.connect_tcp(*ingress.bound)


def post(
    body: bytes, *, path: str = "/webhook", extra: bytes = b"", length: int | None = None
) -> bytes:
    size = len(body) if length is None else length
    return (
        b"POST %s HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n%s"
        b"content-length: %d\r\n\r\n%s" % (path.encode(), extra, size, body)
    )


class Reader:
    """Reads HTTP/1.1 responses off a stream, one at a time."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    async def _fill(self) -> bool:
        try:
            data = await self.stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return False
        self.buf += data
        return True

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            if not await self._fill():
                raise EOFError(self.buf)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            if not await self._fill():
                raise EOFError(self.buf)
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    async def closed(self) -> bool:
        """True when the server has closed the connection (after what was read)."""
        return not self.buf and not await self._fill()


def event_body(seed: int) -> bytes:
    return msgspec.json.encode(make_events(1, seed=seed))


class Waiting:
    """An ASGI app whose requests wait for `release`; it speaks lifespan too."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.entered_count: list[int] = []
        self._entering = anyio.Event()
        self.release = anyio.Event()
        self.cancelled = False
        self.lifespan: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                self.lifespan.append(message["type"])
                kind = message["type"].removeprefix("lifespan.")
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        while (await receive()).get("more_body"):
            pass
        self.entered.set()
        self.entered_count.append(1)
        self._entering.set()
        self._entering = anyio.Event()
        try:
            await self.release.wait()
        except BaseException:
            self.cancelled = True
            raise
        headers = [(b"content-length", b"4")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"done"})

    async def any_entered(self) -> None:
        """Wait for the next request to enter."""
        await self._entering.wait()


class LogEvent(logging.Handler):
    """Sets an event when a record whose message starts with `prefix` is logged."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix
        self.seen = anyio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self.prefix):
            self.seen.set()


@asynccontextmanager
async def on_log(logger: str, prefix: str) -> AsyncIterator[anyio.Event]:
    handler = LogEvent(prefix)
    target = logging.getLogger(logger)
    old_level = target.level
    target.addHandler(handler)
    target.setLevel(logging.INFO)
    try:
        yield handler.seen
    finally:
        target.removeHandler(handler)
        target.setLevel(old_level)


# --------------------------------------------------------------------------- serving


async def test_serves_the_webhook_and_quart_without_a_server_header_or_signal_handlers() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    log = FakeEventLog()
    async with serving(sluice_app(log)) as ingress:
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
        async with await connect(ingress) as stream:
            reader = Reader(stream)
            await stream.send(post(event_body(1), extra=b"x-correlation-id: abc\r\n"))
            status, headers, body = await reader.response()
            assert status == 202 and msgspec.json.decode(body)["accepted"] == 1
            assert headers["content-type"] == "application/json"
            assert headers["x-correlation-id"] == "abc"
            assert "server" not in headers and "date" in headers
            await stream.send(b"GET /health/live HTTP/1.1\r\nhost: test\r\n\r\n")  # same connection
            status, headers, body = await reader.response()
            assert status == 200 and msgspec.json.decode(body)["status"] == "ok"
            await stream.send(b"GET /nowhere HTTP/1.1\r\nhost: test\r\n\r\n")
            status, headers, body = await reader.response()
            assert status == 404 and "error" in msgspec.json.decode(body)  # Quart's JSON errors
    assert len(log.published) == 1


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with serving(sluice_app()) as ingress, await connect(ingress) as stream:
        await stream.send(
            b"".join(post(event_body(i), extra=b"x-correlation-id: r%d\r\n" % i) for i in range(3))
        )
        reader = Reader(stream)
        answers = [await reader.response() for _ in range(3)]
    assert [(s, h["x-correlation-id"]) for s, h, _ in answers] == [
        (202, "r0"),
        (202, "r1"),
        (202, "r2"),
    ]


async def test_the_app_lifespan_runs_around_serving() -> None:
    app = Waiting()
    async with serving(app):
        assert app.lifespan == ["lifespan.startup"]
    assert app.lifespan == ["lifespan.startup", "lifespan.shutdown"]


async def test_an_app_without_lifespan_is_served_and_a_failed_startup_is_not() -> None:
    async def no_lifespan(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http", "lifespan not supported"
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with serving(no_lifespan) as ingress, await connect(ingress) as stream:
        await stream.send(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        status, _, _ = await Reader(stream).response()
        assert status == 204

    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    ingress = Ingress(failing, host="127.0.0.1", port=0, graceful_timeout=1)
    with pytest.raises(LifespanFailed):
        await ingress.run()
    assert ingress.bound is not None
    with pytest.raises(OSError):  # the socket was closed
        await anyio.connect_tcp(*ingress.bound)


# --------------------------------------------------------------------------- limits


async def test_a_body_over_the_limit_is_answered_by_the_webhooks_413() -> None:
    too_big = b"[" + b" " * (16 * MiB) + b"]"
    at_limit = b"[" + b" " * (16 * MiB - 2) + b"]"
    async with serving(sluice_app()) as ingress:
        async with await connect(ingress) as stream:
            reader = Reader(stream)

            async def send_all() -> None:
                # The server answers and closes before it has read the whole body.
                with contextlib.suppress(anyio.BrokenResourceError, ConnectionError):
                    await stream.send(post(too_big))

            async with anyio.create_task_group() as tg:
                tg.start_soon(send_all)
                status, _, body = await reader.response()
            assert status == 413 and "too large" in msgspec.json.decode(body)["error"]
            assert await reader.closed()
        async with await connect(ingress) as stream:
            await stream.send(post(at_limit))  # up to the limit is read and answered
            status, _, body = await Reader(stream).response()
            assert status == 422 and msgspec.json.decode(body)["accepted"] == 0  # empty array


async def test_expect_100_continue() -> None:
    async with serving(sluice_app()) as ingress:
        async with await connect(ingress) as stream:
            # Too large by its content-length: the 413 comes before any body is sent
            # (after Hypercorn's 100 Continue, which it sends as the head arrives).
            await stream.send(post(b"", extra=b"expect: 100-continue\r\n", length=17 * MiB))
            reader = Reader(stream)
            status, _, body = await reader.response()
            if status == 100:
                status, _, body = await reader.response()
            assert status == 413 and "too large" in msgspec.json.decode(body)["error"]
        async with await connect(ingress) as stream:
            body = event_body(7)
            await stream.send(post(b"", extra=b"expect: 100-continue\r\n", length=len(body)))
            reader = Reader(stream)
            status, _, _ = await reader.response()
            assert status == 100
            await stream.send(body)
            status, _, _ = await reader.response()
            assert status == 202


async def test_a_request_head_over_the_limit_gets_431_and_a_close() -> None:
    headers = b"".join(b"x-filler-%d: %s\r\n" % (i, b"a" * 100) for i in range(200))
    assert len(headers) > MAX_HEAD_BYTES
    async with serving(sluice_app()) as ingress, await connect(ingress) as stream:
        await stream.send(post(event_body(1), extra=headers))
        reader = Reader(stream)
        status, headers_out, body = await reader.response()
        assert status == 431 and headers_out["connection"] == "close"
        assert "too large" in msgspec.json.decode(body)["error"]
        assert await reader.closed()


async def test_one_endless_header_is_cut_off_while_it_arrives() -> None:
    async with serving(sluice_app()) as ingress, await connect(ingress) as stream:
        reader = Reader(stream)
        await stream.send(b"POST /webhook HTTP/1.1\r\nhost: test\r\nx-endless: ")
        chunk = b"a" * 4096
        with contextlib.suppress(anyio.BrokenResourceError, ConnectionError):
            for _ in range(MAX_HEAD_BYTES // len(chunk) + 1):
                await stream.send(chunk)
        status, _, _ = await reader.response()  # it answered before the header ended
        assert status == 431
        assert await reader.closed()


# --------------------------------------------------------------------------- drain

STOPPING = "ingress: stopping"  # logged as the shutdown trigger fires


async def test_drain_stops_accepting_and_finishes_the_request_in_flight() -> None:
    app = Waiting()
    async with serving(app) as ingress, await connect(ingress) as stream:
        idle = await connect(ingress)  # an idle keep-alive connection
        await stream.send(b"GET /slow HTTP/1.1\r\nhost: test\r\n\r\n")
        await app.entered.wait()
        ingress.request_stop()
        async with idle:
            # Idle connections are closed as the listener is (one step of Hypercorn's).
            assert await Reader(idle).closed()
        assert ingress.bound is not None
        with pytest.raises(OSError):
            await anyio.connect_tcp(*ingress.bound)
        app.release.set()
        reader = Reader(stream)
        status, _, body = await reader.response()
        assert (status, body) == (200, b"done")
        assert await reader.closed()
    assert not app.cancelled and app.lifespan[-1] == "lifespan.shutdown"


async def test_a_cancel_during_the_drain_forces_it() -> None:
    app = Waiting()
    async with on_log("sluice.ingress", STOPPING) as stopping:
        ingress = Ingress(app, host="127.0.0.1", port=0, graceful_timeout=60)
        with anyio.fail_after(10):  # far below graceful_timeout
            async with anyio.create_task_group() as tg:
                await tg.start(ingress.run)
                stream = await connect(ingress)
                await stream.send(b"GET /slow HTTP/1.1\r\nhost: test\r\n\r\n")
                await app.entered.wait()
                ingress.request_stop()
                await stopping.wait()
                tg.cancel_scope.cancel()
        assert app.cancelled
        async with stream:
            reader = Reader(stream)
            status, _, _ = await reader.response()  # Hypercorn's own answer, then a close
            assert status == 500
            assert await reader.closed()


async def test_a_forced_drain_deadline_cuts_the_graceful_stop() -> None:
    app = Waiting()
    deadline = DrainDeadline()
    ingress = Ingress(app, host="127.0.0.1", port=0, graceful_timeout=60, deadline=deadline)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(ingress.run)
            stream = await connect(ingress)
            await stream.send(b"GET /slow HTTP/1.1\r\nhost: test\r\n\r\n")
            await app.entered.wait()
            deadline.begin(0.2)  # the drain has 0.2 s left: the graceful stop gets that
            ingress.request_stop()
    assert app.cancelled
    await stream.aclose()


async def test_a_cancel_before_any_stop_request_still_finishes_the_request() -> None:
    app = Waiting()
    async with on_log("sluice.ingress", STOPPING) as stopping:
        ingress = Ingress(app, host="127.0.0.1", port=0, graceful_timeout=60)
        stream: SocketStream | None = None
        async with anyio.create_task_group() as outer:
            async with anyio.create_task_group() as tg:
                await tg.start(ingress.run)
                stream = await connect(ingress)
                await stream.send(b"GET /slow HTTP/1.1\r\nhost: test\r\n\r\n")
                await app.entered.wait()
                tg.cancel_scope.cancel()  # the shielded graceful stop begins

                async def release_once_draining() -> None:
                    await stopping.wait()
                    app.release.set()

                outer.start_soon(release_once_draining)
        assert not app.cancelled and stream is not None
        async with stream:
            status, _, body = await Reader(stream).response()
            assert (status, body) == (200, b"done")


async def test_graceful_timeout_bounds_the_drain() -> None:
    app = Waiting()
    async with serving(app, graceful_timeout=0.2) as ingress, await connect(ingress) as stream:
        await stream.send(b"GET /slow HTTP/1.1\r\nhost: test\r\n\r\n")
        await app.entered.wait()
    assert app.cancelled  # run() returned: the request that never ended was cancelled


# --------------------------------------------------------------------------- SO_REUSEPORT


async def test_reuse_port_lets_two_ingresses_share_a_port() -> None:
    async with serving(sluice_app(), reuse_port=True) as first:
        assert first.bound is not None
        async with serving(sluice_app(), reuse_port=True, port=first.bound[1]) as second:
            assert second.bound == first.bound
            async with await connect(second) as stream:
                await stream.send(post(event_body(3)))
                status, _, _ = await Reader(stream).response()
                assert status == 202
        with pytest.RaisesGroup(pytest.RaisesExc(FatalError, match="in use")):
            async with serving(sluice_app(), port=first.bound[1]):
                pass


# --------------------------------------------------------------------------- admission


async def test_requests_over_the_cap_are_503_before_any_work_and_health_still_answers() -> None:
    app = Waiting()

    async def health_or_wait(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/health/live":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await app(scope, receive, send)

    admission = Admission(max_requests=2, retry_after=3)
    async with serving(health_or_wait, admission=admission) as ingress:
        held = [await connect(ingress) for _ in range(2)]
        for stream in held:
            await stream.send(b"GET /slow HTTP/1.1\r\nhost: test\r\n\r\n")
        while len(app.entered_count) < 2:
            await app.any_entered()
        async with await connect(ingress) as stream:
            await stream.send(post(event_body(1)))
            status, headers, body = await Reader(stream).response()
            assert status == 503 and headers["retry-after"] == "3"
            assert "too many requests" in msgspec.json.decode(body)["error"]
        async with await connect(ingress) as stream:  # health is always served
            await stream.send(b"GET /health/live HTTP/1.1\r\nhost: test\r\n\r\n")
            status, _, _ = await Reader(stream).response()
            assert status == 200
        app.release.set()
        for stream in held:
            status, _, _ = await Reader(stream).response()
            assert status == 200
            await stream.aclose()


async def test_bodies_over_the_bytes_in_flight_are_503_from_their_content_length() -> None:
    log = FakeEventLog()
    admission = Admission(max_body_bytes=1000, body_limit=16 * MiB)
    async with serving(sluice_app(log), admission=admission) as ingress:
        async with await connect(ingress) as stream:
            # Announced, not sent: refused before reading a byte of it.
            await stream.send(post(b"", length=5000))
            status, headers, body = await Reader(stream).response()
            assert status == 503 and headers["retry-after"] == "1"
            assert "too many request bytes" in msgspec.json.decode(body)["error"]
        async with await connect(ingress) as stream:
            await stream.send(post(event_body(2)))
            status, _, _ = await Reader(stream).response()
            assert status == 202
    assert len(log.published) == 1


@pytest.mark.parametrize("path", ["/webhook", "/quart/echo"])
async def test_a_body_that_trickles_is_cut_off_at_the_body_timeout(path: str) -> None:
    log = FakeEventLog()
    app = create_app(HttpDeps(Settings(), Metrics(), Health(), event_log=log))

    @app.post("/quart/echo")
    async def echo() -> bytes:
        return await request.get_data()

    admission = Admission(body_timeout=0.3)
    async with serving(app, admission=admission) as ingress:
        async with await connect(ingress) as stream:
            # 1 byte of 100, a byte more a little later, then nothing: cut off at the
            # timeout from the first wait, not from the last byte.
            await stream.send(post(b"[", length=100, path=path))
            await anyio.sleep(0.2)
            await stream.send(b"{")
            reader = Reader(stream)
            status, _, body = await reader.response()
            error = msgspec.json.decode(body)["error"]
            assert status == 408 and error == "request body not received within 0.3 s"
            assert await reader.closed()
        # A request that is slow after its body is whole is not cut off (Quart waits in
        # receive for a disconnect meanwhile), nor a whole body read late.
        async with await connect(ingress) as stream:
            await stream.send(post(event_body(3), path="/webhook"))
            status, _, _ = await Reader(stream).response()
            assert status == 202
        assert ingress.served is not None and not ingress.served._receiving
    assert len(log.published) == 1
