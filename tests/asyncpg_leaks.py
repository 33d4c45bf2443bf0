"""asyncpg's orphaned COPY waiter: a leak of asyncpg's own, reported through the event
loop's exception handler, which anyio's test runner turns into a test failure.

A backend that finds its postmaster dead (or is terminated) sends FATAL and closes. When
asyncpg reads that message between two statements (e.g. with the reply to a BEGIN) and
the end of the connection only later, its protocol is left in state 2 (asyncpg issue
784), and a COPY cannot start: InternalClientError "cannot switch to state 21", which
PgEventStore maps to StoreUnavailable (the writer retries). But `copy_in` makes its
waiter before it starts the COPY, outside the try/except that every other operation has,
so the waiter is left behind; dropping the connection sets ConnectionDoesNotExistError on
it, nobody awaits it, and asyncio reports "Future exception was never retrieved".

Only that report (a plain Future, never a Task: sluice's own code runs in tasks) is
tolerated, and counted; every other report goes to the handler in place before.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from typing import TYPE_CHECKING, Any

import asyncpg

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

log = logging.getLogger(__name__)


def orphaned_copy_waiter(context: dict[str, Any]) -> bool:
    return context.get("message") == "Future exception was never retrieved" and isinstance(
        context.get("exception"), asyncpg.ConnectionDoesNotExistError
    )


@contextlib.asynccontextmanager
async def tolerating_orphaned_copy_waiters() -> AsyncIterator[list[BaseException]]:
    """Within the block, the running loop tolerates asyncpg's orphaned COPY waiters;
    yields the list of those it met (complete once the block has ended)."""
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    met: list[BaseException] = []

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if orphaned_copy_waiter(context):
            log.warning("asyncpg left a COPY waiter behind (asyncpg issue 784): %r", context)
            met.append(context["exception"])
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    try:
        yield met
    finally:
        gc.collect()  # a waiter in a reference cycle is reported when collected
        loop.set_exception_handler(previous)
