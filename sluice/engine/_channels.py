"""Bounded, typed in-process channels (anyio memory object streams)."""

from __future__ import annotations

from typing import TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["open_channel"]

T = TypeVar("T")


# A class rather than a function so the item type can be given by subscription,
# `open_channel[Item](64)`, the way anyio's `create_memory_object_stream` works.
class open_channel(tuple[MemoryObjectSendStream[T], MemoryObjectReceiveStream[T]]):
    """Open a bounded channel and return its `(send, receive)` ends.

    Typed either way: ``send, receive = open_channel[Item](64)`` or
    ``open_channel(64, Item)`` (`item_type` is only read by type checkers).

    `capacity` is how many items the buffer holds before `send()` blocks; 0 makes every
    send wait for a receiver. A full channel blocking its sender is the engine's
    backpressure, so unbounded buffers are refused.

    Raises ValueError if `capacity` is not an int >= 0 (e.g. negative or `math.inf`).
    Close every end you own (`aclose()` or `with`): an end garbage-collected while open
    emits a ResourceWarning. Clone a send end (`send.clone()`) per producer to fan in:
    the receiver sees end-of-stream once every clone is closed.
    """

    def __new__(  # type: ignore[misc]  # returns the plain tuple, as anyio does
        cls, capacity: int, item_type: type[T] | None = None
    ) -> tuple[MemoryObjectSendStream[T], MemoryObjectReceiveStream[T]]:
        if isinstance(capacity, bool) or not isinstance(capacity, int):
            raise ValueError(f"channel capacity must be an int >= 0, not {capacity!r}")
        if capacity < 0:
            raise ValueError(f"channel capacity must be >= 0, not {capacity}")
        return anyio.create_memory_object_stream[T](capacity)
