"""The JetStream adapter against a nats-server of its own (the test stalls it)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from sluice.config import Settings
from sluice.edges.bus import JetStreamBus
from sluice.edges.embedded import EmbeddedNats
from sluice.ports import LogUnavailable

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
            os.kill(server.pid, signal.SIGSTOP)
            try:
                assert bus.is_connected()
                with pytest.raises(LogUnavailable, match="does not answer"):
                    await bus.ping(timeout=0.5)
            finally:
                os.kill(server.pid, signal.SIGCONT)
            await bus.ping()
    finally:
        server.stop()
