"""The JetStream adapter against a nats-server of its own (the test stalls it)."""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from sluice import envelope
from sluice.config import Settings
from sluice.edges.bus import JetStreamBus
from sluice.edges.embedded import EmbeddedNats
from sluice.ports import LogUnavailable
from tests.factories import make_events
from tests.pause import pause

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


async def test_ping_fails_while_the_server_is_stalled_though_still_connected(
    tmp_path: Path,
) -> None:
    server = EmbeddedNats(tmp_path, port=0, monitor=False)
    url = server.start()
    try:
        async with JetStreamBus.connect(Settings(nats_url=url)) as bus:
            await bus.ping()
            assert server.pid is not None
            pause(server.pid)  # every thread stopped: none can still answer the ping
            try:
                assert bus.is_connected()
                with pytest.raises(LogUnavailable, match="does not answer"):
                    await bus.ping(timeout=0.5)
            finally:
                os.kill(server.pid, signal.SIGCONT)
            await bus.ping()
    finally:
        server.stop()


async def test_envelopes_packed_to_max_payload_keep_the_connection(
    nats_url: str, nats_prefix: str
) -> None:
    """The server counts headers against max_payload and closes the connection of a
    client that goes over: envelopes packed up to `bus.max_payload`, with the longest
    correlation id, must still be accepted."""
    settings = Settings(
        nats_url=nats_url, stream=f"{nats_prefix}_EVENTS", subject_prefix=nats_prefix
    )
    raws = [(f"e{i:07d}", msgspec.json.encode(e)) for i, e in enumerate(make_events(3000))]
    async with JetStreamBus.connect(settings) as bus:
        chunks = list(
            envelope.encode(
                "facebook", raws, received_at=datetime.now(UTC), max_bytes=bus.max_payload
            )
        )
        assert max(len(c.payload) for c in chunks) > bus.max_payload - 2000  # packed full
        for chunk in chunks:
            headers = {"X-Correlation-ID": "c" * 128, "X-Sluice-Events": "99999"}
            ack = await bus.publish("facebook", chunk.payload, msg_id=chunk.msg_id, headers=headers)
            assert not ack.duplicate
        assert bus.is_connected()
        with pytest.raises(LogUnavailable, match="too large"):
            await bus.publish("facebook", b"x" * (bus.max_payload + 1), msg_id="m", headers={})
        await bus.ping()
