"""The embedded nats-server is not an open door: a generated password, loopback only."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import nats
import psutil
import pytest

from sluice.edges.embedded import EmbeddedNats

pytestmark = pytest.mark.integration


def _connect_reply(url: str, user: str | None, password: str | None) -> bytes:
    """The server's answer to a CONNECT (+PING) with these credentials, on a raw socket
    (nats-py leaves its transport to the garbage collector when a connect is refused)."""
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    connect: dict[str, object] = {"verbose": False, "pedantic": False, "protocol": 1}
    if user is not None:
        connect |= {"user": user, "pass": password}
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"INFO ")
        sock.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        return reader.readline().strip()


async def _account_info(url: str) -> None:
    nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3)
    try:
        await nc.jetstream().account_info()
    finally:
        await nc.close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    nats_server = EmbeddedNats(tmp_path / "data", port=0)
    nats_server.start()
    yield nats_server
    nats_server.stop()


def test_clients_need_the_generated_password(server: EmbeddedNats) -> None:
    url = server.url
    parts = urlsplit(url)
    assert parts.username == "sluice" and parts.password and len(parts.password) >= 32
    asyncio.run(_account_info(url))  # with them, JetStream answers
    assert _connect_reply(url, parts.username, parts.password) == b"PONG"
    assert _connect_reply(url, None, None) == b"-ERR 'Authorization Violation'"
    wrong = _connect_reply(url, parts.username, "not-the-password")
    assert wrong == b"-ERR 'Authorization Violation'"


def test_credentials_and_config_are_owner_only_and_kept(
    server: EmbeddedNats, tmp_path: Path
) -> None:
    nats_dir = tmp_path / "data" / "nats"
    assert _mode(nats_dir) == 0o700
    for name in ("credentials.json", "nats.conf", "state.json"):
        assert _mode(nats_dir / name) == 0o600, name
    first = server.url
    server.stop()
    again = EmbeddedNats(tmp_path / "data", port=0)
    try:
        url = again.start()
        # the same password across restarts (a client holding the old URL reconnects)
        assert urlsplit(url).password == urlsplit(first).password
        asyncio.run(_account_info(url))
    finally:
        again.stop()


def test_listens_on_loopback_only(server: EmbeddedNats) -> None:
    assert server.pid is not None
    listening = [
        c.laddr
        for c in psutil.Process(server.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert {addr.port for addr in listening} == {server.port, server.monitor_port}
    assert {addr.ip for addr in listening} == {"127.0.0.1"}


def test_the_password_is_not_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    nats_server = EmbeddedNats(tmp_path / "data", port=0)
    with caplog.at_level(logging.DEBUG, logger="sluice.embedded"):
        url = nats_server.start()
        nats_server.stop()
    password = urlsplit(url).password
    assert password and password not in caplog.text
    assert "sluice:***@127.0.0.1" in caplog.text
    assert password not in repr(nats_server.credentials)
