import math

import anyio
import pytest

from sluice.engine import open_channel


@pytest.mark.parametrize("capacity", [math.inf, -1, 1.5, True, "4"])
def test_open_channel_rejects_unbounded_or_invalid(capacity: object) -> None:
    with pytest.raises(ValueError, match="capacity"):
        open_channel(capacity)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_open_channel_is_bounded_and_typed() -> None:
    send, receive = open_channel[int](2)
    with send, receive:
        send.send_nowait(1)
        send.send_nowait(2)
        with pytest.raises(anyio.WouldBlock):  # full: backpressure
            send.send_nowait(3)
        assert send.statistics().current_buffer_used == 2
        assert [receive.receive_nowait(), receive.receive_nowait()] == [1, 2]


@pytest.mark.anyio
async def test_open_channel_item_type_argument_and_rendezvous() -> None:
    send, receive = open_channel(0, str)
    async with send, receive, anyio.create_task_group() as tg:
        tg.start_soon(send.send, "hello")
        assert await receive.receive() == "hello"


@pytest.mark.anyio
async def test_end_of_stream_after_every_clone_closes() -> None:
    send, receive = open_channel[int](4)
    with receive:
        clone = send.clone()
        async with send:
            await send.send(1)
        async with clone:
            await clone.send(2)
        assert [item async for item in receive] == [1, 2]
