"""A bind no restart can fix is a FatalError naming the address and the setting."""

from __future__ import annotations

import errno
import socket
from typing import Any

import anyio
import pytest

from sluice.actors.ingress import Ingress
from sluice.engine import FatalError

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def never_called(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("nothing is served")


def ingress(host: str, port: int) -> Ingress:
    return Ingress(never_called, host=host, port=port, graceful_timeout=1)


async def test_a_busy_port_is_fatal_and_names_the_port_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with anyio.fail_after(5), pytest.raises(FatalError) as info:
            await ingress("127.0.0.1", port).run()
    assert str(info.value) == (
        f"cannot listen on 127.0.0.1:{port}: address already in use "
        "(set SLUICE_HTTP_PORT or --port)"
    )


async def test_an_address_not_on_this_machine_names_the_host_setting() -> None:
    with (
        anyio.fail_after(5),
        pytest.raises(FatalError, match=r"\(set SLUICE_HTTP_HOST or --host\)"),
    ):
        await ingress("192.0.2.1", 0).run()  # TEST-NET-1: never a local address


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (OSError(errno.EACCES, "Permission denied"), "permission denied (set SLUICE_HTTP_PORT"),
        (socket.gaierror(-2, "Name or service not known"), "not known (set SLUICE_HTTP_HOST"),
    ],
)
async def test_refused_binds_are_fatal(
    monkeypatch: pytest.MonkeyPatch, error: OSError, expected: str
) -> None:
    def refuse(self: socket.socket, address: Any) -> None:
        raise error

    monkeypatch.setattr(socket.socket, "bind", refuse)
    with anyio.fail_after(5), pytest.raises(FatalError, match=expected.replace("(", r"\(")):
        await ingress("127.0.0.1", 80).run()


async def test_other_socket_errors_stay_restartable(monkeypatch: pytest.MonkeyPatch) -> None:
    def out_of_files(self: socket.socket, address: Any) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(socket.socket, "bind", out_of_files)
    with anyio.fail_after(5), pytest.raises(OSError, match="Too many open files"):
        await ingress("127.0.0.1", 0).run()
