"""JetStream adapter: the only module that speaks nats-py.

Implements `sluice.ports.EventLog` for ingress and `Subscription`/`Delivery` for the
consumers. Everything here runs on asyncio (nats-py is asyncio-only).
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import anyio
import nats
import nats.errors
import nats.js.errors
from nats.js import api

from sluice.config import mask_urls
from sluice.edges.streams import StreamKeeper
from sluice.ports import ConsumerFigures, LogClosed, LogUnavailable, PublishAck, StreamFigures

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence

    from nats.aio.msg import Msg

    from sluice.config import Settings

log = logging.getLogger("sluice.bus")

CONNECT_TIMEOUT = 15.0  # seconds to reach NATS at start-up (it may be coming up) before giving up


def nats_servers(nats_url: str) -> tuple[list[str], dict[str, str]]:
    """NATS_URL's servers (it may list several, comma-separated), and the credentials
    they share as connect options (empty when they carry none, or differ).

    Given as options, the credentials also reach the servers a cluster tells the client
    about (INFO connect_urls), which come without them: a client that fails over to one
    of those still authenticates.
    """
    servers = [part.strip() for part in nats_url.split(",") if part.strip()]
    auths = set()
    for server in servers:
        parts = urlsplit(server if "://" in server else f"nats://{server}")
        auths.add((unquote(parts.username or ""), unquote(parts.password or "")))
    if len(auths) != 1:
        return servers, {}
    user, password = auths.pop()
    if user and password:
        return servers, {"user": user, "password": password}
    return servers, ({"token": user} if user else {})


class NatsDelivery:
    """A `sluice.ports.Delivery` over one nats-py message."""

    __slots__ = ("_msg",)

    def __init__(self, msg: Msg) -> None:
        self._msg = msg

    @property
    def data(self) -> bytes:
        return self._msg.data

    @property
    def headers(self) -> Mapping[str, str]:
        return self._msg.headers or {}

    @property
    def num_delivered(self) -> int:
        return int(self._msg.metadata.num_delivered)

    async def ack(self) -> None:
        await self._msg.ack()

    async def nak(self, delay: float | None = None) -> None:
        await self._msg.nak(delay=delay)

    async def term(self) -> None:
        await self._msg.term()

    async def in_progress(self) -> None:
        await self._msg.in_progress()


class NatsSubscription:
    """A durable pull consumer (one per source, shared by every worker process)."""

    def __init__(self, sub: Any, nc: Any) -> None:
        self._sub = sub
        self._nc = nc

    async def fetch(self, batch: int, timeout: float) -> Sequence[NatsDelivery]:
        try:
            msgs = await self._sub.fetch(batch, timeout=timeout)
        except TimeoutError:  # nats.errors.TimeoutError, or asyncio's from _fetch_n when idle
            return []
        except nats.errors.ConnectionClosedError as exc:
            if self._nc.is_closed:
                raise LogClosed(f"fetch failed, connection closed for good: {exc!r}") from exc
            raise LogUnavailable(f"fetch failed: {exc!r}") from exc
        except nats.errors.Error as exc:
            raise LogUnavailable(f"fetch failed: {exc!r}") from exc
        return [NatsDelivery(m) for m in msgs]

    async def pending(self) -> tuple[int, int]:
        info = await self._sub.consumer_info()
        return int(info.num_pending or 0), int(info.num_ack_pending or 0)

    async def close(self) -> None:
        with contextlib.suppress(nats.errors.Error):
            await self._sub.unsubscribe()


class NatsMaxDeliveries:
    """JetStream's max-deliveries advisories for the stream, and its messages by sequence:
    a `sluice.ports.MaxDeliveries` for the backstop that dead-letters what no writer
    stored before the consumer gave up on it."""

    def __init__(self, sub: Any, js: Any, stream: str) -> None:
        self._sub = sub
        self._js = js
        self._stream = stream

    async def next_stuck(self, timeout: float) -> int | None:
        """The stream sequence of the next message that reached max deliveries, or None
        after `timeout` seconds without one (or for an advisory that names none)."""
        try:
            msg = await self._sub.next_msg(timeout=timeout)
        except TimeoutError:  # nats.errors.TimeoutError is one
            return None
        except nats.errors.Error as exc:
            raise LogUnavailable(f"advisories: {exc!r}") from exc
        try:
            return int(json.loads(msg.data)["stream_seq"])
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable max-deliveries advisory: %r", msg.data[:200])
            return None

    async def message(self, seq: int) -> tuple[bytes, Mapping[str, str]] | None:
        """The message stored at `seq` (data, headers), None when it is gone."""
        try:
            raw = await self._js.get_msg(self._stream, seq)
        except nats.js.errors.NotFoundError:
            return None
        except (nats.errors.Error, OSError) as exc:
            raise LogUnavailable(f"get message {seq}: {exc!r}") from exc
        return raw.data or b"", raw.headers or {}

    async def remove(self, seq: int) -> None:
        """Delete the message at `seq` (once it is dead-lettered or known stored)."""
        try:
            await self._js.delete_msg(self._stream, seq)
        except nats.js.errors.NotFoundError:
            return
        except (nats.errors.Error, OSError) as exc:
            raise LogUnavailable(f"delete message {seq}: {exc!r}") from exc

    async def close(self) -> None:
        with contextlib.suppress(nats.errors.Error):
            await self._sub.unsubscribe()


# Bytes of a message's headers (X-Correlation-ID up to 128 characters, the event count,
# Nats-Msg-Id) that max_payload leaves room for.
HEADER_ROOM = 512


class JetStreamBus:
    """One NATS connection: publishes envelopes and opens pull consumers."""

    def __init__(self, nc: Any, settings: Settings) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=settings.publish_timeout)
        self._settings = settings

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls, settings: Settings, *, name: str = "sluice"
    ) -> AsyncIterator[JetStreamBus]:
        """Connect (retrying while the server comes up, for at most CONNECT_TIMEOUT
        seconds) and make sure the stream exists. Raises LogUnavailable when NATS cannot
        be reached in that time."""
        assert settings.nats_url is not None
        connected = closing = False
        last_error: Exception | None = None

        async def log_error(exc: Exception) -> None:
            nonlocal last_error
            last_error = exc
            # Failed attempts to reach it at start-up end in one error, not a line each.
            log.log(logging.WARNING if connected else logging.DEBUG, "nats error: %r", exc)

        async def log_disconnect() -> None:
            # Our own close disconnects too: not worth a warning on a clean stop.
            log.log(logging.DEBUG if closing else logging.WARNING, "disconnected from NATS")

        servers, auth = nats_servers(settings.nats_url)
        try:
            with anyio.fail_after(CONNECT_TIMEOUT):
                # Reconnects forever, to whichever listed (or discovered) server answers:
                # a cluster node that dies moves the client to a surviving one.
                nc = await nats.connect(
                    servers,
                    name=name,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    connect_timeout=5,
                    allow_reconnect=True,
                    error_cb=log_error,
                    disconnected_cb=log_disconnect,
                    reconnected_cb=_log_reconnect,
                    **auth,
                )
        except Exception as exc:
            where = mask_urls(settings.nats_url)
            if isinstance(exc, TimeoutError):
                why = f"no connection within {CONNECT_TIMEOUT:.0f} s; last error {last_error!r}"
            else:
                why = repr(exc)
            raise LogUnavailable(f"cannot connect to NATS at {where}: {why}") from exc
        connected = True
        bus = cls(nc, settings)
        try:
            await bus.ensure_stream()
            yield bus
        finally:
            # Not nc.drain(): it waits out its timeout on idle pull subscriptions. Every
            # actor has returned by now; flushing sends the last acks before closing.
            with contextlib.suppress(Exception):
                await nc.flush(timeout=2)
            closing = True
            if not nc.is_closed:
                await nc.close()

    async def ensure_stream(self) -> None:
        """Create the work stream and its history stream, or bring existing ones to the
        configured limits, migrating a work stream of limits retention (see
        `sluice.edges.streams`); then the durable consumer of every source. Raises
        LogUnavailable if JetStream refuses.

        Every role makes the consumers, ingress too, before it accepts anything: a
        work-queue message that no consumer's filter covers leaves the stream as soon as
        the history has copied it, so an event accepted before the first worker made its
        source's consumer would never be written.
        """
        try:
            await StreamKeeper(self._js, self._settings).ensure()
            for source in self._settings.sources:
                await self._js.add_consumer(self._settings.stream, self._consumer_config(source))
        except (nats.errors.Error, OSError) as exc:
            raise LogUnavailable(f"cannot set up the streams: {exc!r}") from exc

    @property
    def max_payload(self) -> int:
        """The server's limit less HEADER_ROOM: the server counts a message's headers
        against max_payload, and closes the connection of a client that goes over."""
        return int(self._nc.max_payload) - HEADER_ROOM

    def is_connected(self) -> bool:
        return bool(self._nc.is_connected)

    async def ping(self, timeout: float = 1.5) -> None:
        """Raise LogUnavailable unless JetStream answers an API request in time.

        A connected socket is not enough: a stalled server keeps the connection open
        while every publish times out.
        """
        if not self._nc.is_connected:
            raise LogUnavailable("not connected")
        try:
            with anyio.fail_after(timeout):
                await self._js.account_info()
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise LogUnavailable(f"JetStream does not answer: {exc!r}") from exc

    async def publish(
        self, source: str, payload: bytes, *, msg_id: str, headers: Mapping[str, str]
    ) -> PublishAck:
        hdrs = {**headers, "Nats-Msg-Id": msg_id}
        head = sum(len(k) + len(v) + 4 for k, v in hdrs.items()) + 12  # NATS/1.0, CRLFs
        if head > HEADER_ROOM or len(payload) > self.max_payload:
            # Sent anyway, it would cost the connection (the server closes it).
            raise LogUnavailable(
                f"message too large: {len(payload)} payload + {head} header bytes "
                f"(limit {self._nc.max_payload})"
            )
        try:
            ack = await self._js.publish(
                self._settings.subject(source), payload, stream=self._settings.stream, headers=hdrs
            )
        except nats.js.errors.APIError as exc:
            raise LogUnavailable(f"JetStream refused the message: {exc.description}") from exc
        except (nats.errors.Error, OSError) as exc:
            raise LogUnavailable(f"JetStream did not ack: {exc!r}") from exc
        return PublishAck(stream=ack.stream, seq=ack.seq, duplicate=bool(ack.duplicate))

    async def backlog(self) -> int:
        """Messages not yet acked by the writers (pending + ack pending), all sources.

        The webhook answers 429 above SLUICE_MAX_BACKLOG: JetStream would hold any
        backlog, but then every event would wait longer and longer to be stored.
        A consumer that does not exist yet counts as empty.
        """
        s = self._settings
        total = 0
        for source in s.sources:
            try:
                info = await self._js.consumer_info(s.stream, f"sluice-{source}", timeout=1.0)
            except nats.js.errors.NotFoundError:
                continue
            except (nats.errors.Error, OSError) as exc:
                raise LogUnavailable(f"consumer info failed: {exc!r}") from exc
            total += int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        return total

    async def consumer_figures(self, source: str) -> ConsumerFigures:
        """Where `source`'s durable consumer stands, for the metrics reporter. Raises
        LogUnavailable, also when the consumer does not exist yet."""
        s = self._settings
        try:
            info = await self._js.consumer_info(s.stream, f"sluice-{source}", timeout=2.0)
        except (nats.errors.Error, OSError) as exc:
            raise LogUnavailable(f"consumer info failed: {exc!r}") from exc
        return ConsumerFigures(
            pending=int(info.num_pending or 0),
            ack_pending=int(info.num_ack_pending or 0),
            ack_floor=int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0,
            delivered=int(info.delivered.stream_seq or 0) if info.delivered else 0,
        )

    async def stream_figures(self, stream: str) -> StreamFigures:
        """What `stream` holds now, for the metrics reporter. Raises LogUnavailable."""
        try:
            info = await self._js.stream_info(stream)
        except (nats.errors.Error, OSError) as exc:
            raise LogUnavailable(f"stream info failed: {exc!r}") from exc
        state = info.state
        return StreamFigures(int(state.messages), int(state.bytes), int(state.last_seq))

    async def subscribe(self, source: str) -> NatsSubscription:
        """Bind to (creating or updating) the durable pull consumer for `source`."""
        s = self._settings
        durable = f"sluice-{source}"
        try:
            await self._js.add_consumer(s.stream, self._consumer_config(source))
            sub = await self._js.pull_subscribe_bind(durable=durable, stream=s.stream)
        except (nats.errors.Error, OSError) as exc:
            raise LogUnavailable(f"cannot open consumer {durable}: {exc!r}") from exc
        return NatsSubscription(sub, self._nc)

    def _consumer_config(self, source: str) -> api.ConsumerConfig:
        """The durable pull consumer of `source` (its replicas: the stream's)."""
        s = self._settings
        durable = f"sluice-{source}"
        return api.ConsumerConfig(
            durable_name=durable,
            name=durable,
            filter_subject=s.subject(source),
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            # No backoff list: a redelivery comes after ack_wait, however many came
            # before (an outage must not push the next one minutes away).
            ack_wait=s.ack_wait,
            max_deliver=s.max_deliver,
            max_ack_pending=s.max_ack_pending,
        )

    async def watch_max_deliveries(self) -> NatsMaxDeliveries:
        """Subscribe to the max-deliveries advisories of every consumer of the stream."""
        subject = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self._settings.stream}.*"
        try:
            sub = await self._nc.subscribe(subject)
        except (nats.errors.Error, OSError) as exc:
            raise LogUnavailable(f"cannot subscribe to {subject}: {exc!r}") from exc
        return NatsMaxDeliveries(sub, self._js, self._settings.stream)


async def _log_reconnect() -> None:
    log.info("reconnected to NATS")
