"""batch writer: stores rows in one transaction per batch, then acks their messages.

A batch closes at `flush_rows` rows or `flush_interval` seconds after its first item.
Nothing is acked before its commit; a store outage naks the batch and crashes the
writer, so the supervisor restarts it with backoff and JetStream redelivers.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING

import anyio

from sluice.engine import Actor, DrainDeadline
from sluice.ports import DeadLetter, EventStore, RowsRejected, StoreUnavailable

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anyio.abc import TaskStatus
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from sluice.actors.work import Work
    from sluice.metrics import Metrics

log = logging.getLogger("sluice.writer")

FLUSH_DEADLINE = 60.0  # a commit that takes longer is abandoned unacked (redelivered)


class BatchWriter(Actor):
    def __init__(
        self,
        inbox: MemoryObjectReceiveStream[Work],
        store: EventStore,
        committed: MemoryObjectSendStream[list[str]] | None,
        *,
        flush_rows: int,
        flush_interval: float,
        metrics: Metrics,
        name: str = "writer",
        retry_delay: float = 1.0,
        deadline: DrainDeadline | None = None,
    ) -> None:
        self.name = name
        self._inbox = inbox
        self._store = store
        self._committed = committed
        self._flush_rows = flush_rows
        self._flush_interval = flush_interval
        self._metrics = metrics
        self._retry_delay = retry_delay
        self._deadline = deadline if deadline is not None else DrainDeadline()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            batch, ended = await self._collect()
            if batch:
                # A commit and its acks are not cut by an ordinary cancel; the drain's
                # deadline and a forced stop cut them (unacked: redelivered).
                with self._deadline.shield(FLUSH_DEADLINE):
                    await self._flush(batch)
            if ended:
                break
        await self._inbox.aclose()
        if self._committed is not None:
            await self._committed.aclose()

    async def _collect(self) -> tuple[list[Work], bool]:
        """Wait for a first item, then gather more until the batch is full or due."""
        try:
            first = await self._inbox.receive()
        except anyio.EndOfStream:
            return [], True
        batch = [first]
        rows = len(first.rows)
        with anyio.move_on_after(self._flush_interval):
            while rows < self._flush_rows:
                try:
                    work = await self._inbox.receive()
                except anyio.EndOfStream:
                    return batch, True
                batch.append(work)
                rows += len(work.rows)
        return batch, False

    async def _flush(self, batch: list[Work]) -> None:
        rows = [row for work in batch for row in work.rows]
        dead = [letter for work in batch for letter in work.dead]
        rejected: set[str] = set()
        started = time.perf_counter()
        try:
            with anyio.fail_after(FLUSH_DEADLINE):
                try:
                    new_ids = await self._store.write_batch(rows) if rows else set()
                except RowsRejected:
                    new_ids, refused = await self._write_apart(batch)
                    dead.extend(letter for _, letter in refused)
                    rejected = {event_id for event_id, _ in refused}
                if dead:
                    await self._store.dead_letter(dead)
        except (StoreUnavailable, TimeoutError) as exc:
            await self._give_back(batch, exc)
            raise
        for work in batch:
            await work.delivery.ack()
        self._account(batch, new_ids, rejected, time.perf_counter() - started)

    async def _write_apart(
        self, batch: list[Work]
    ) -> tuple[set[str], list[tuple[str, DeadLetter]]]:
        """Find the rows the database refuses: store the rest, dead-letter those."""
        new_ids: set[str] = set()
        refused: list[tuple[str, DeadLetter]] = []
        for work in batch:
            try:
                new_ids |= await self._store.write_batch(work.rows)
                continue
            except RowsRejected:
                pass
            for row in work.rows:
                try:
                    new_ids |= await self._store.write_batch([row])
                except RowsRejected as exc:
                    letter = DeadLetter(
                        row.source, exc.reason, row.data.encode(), work.delivery.num_delivered
                    )
                    refused.append((row.event_id, letter))
                    log.warning(
                        "dead-lettered %s: %s",
                        row.event_id,
                        exc.reason,
                        extra={"correlation_id": work.correlation_id},
                    )
        return new_ids, refused

    async def _give_back(self, batch: Sequence[Work], exc: BaseException) -> None:
        log.error("store unavailable, %d messages back to JetStream: %r", len(batch), exc)
        for work in batch:
            self._metrics.events_failed.labels(work.source, "store_unavailable").inc(len(work.rows))
            try:
                await work.delivery.nak(self._retry_delay)
            except Exception:  # the ack_wait timer brings it back anyway
                log.debug("nak failed", exc_info=True)

    def _account(
        self, batch: list[Work], new_ids: set[str], rejected: set[str], seconds: float
    ) -> None:
        m = self._metrics
        stored: list[str] = []
        total_new = 0
        for work in batch:
            new = refused = 0
            for row in work.rows:
                if row.event_id in new_ids:
                    new += 1
                elif row.event_id in rejected:
                    refused += 1
                    continue
                stored.append(row.event_id)
            duplicates = len(work.rows) - new - refused
            if new:
                m.events_processed.labels(work.source).inc(new)
            if duplicates:
                m.events_duplicate.labels(work.source).inc(duplicates)
            if work.dead or refused:
                m.events_dead_lettered.labels(work.source).inc(len(work.dead) + refused)
            total_new += new
        rows = sum(len(work.rows) for work in batch)
        log.info(
            "committed %d rows (%d new) from %d messages in %.1f ms, acked",
            rows,
            total_new,
            len(batch),
            seconds * 1000,
            extra={
                "correlation_ids": list(
                    dict.fromkeys(w.correlation_id for w in batch if w.correlation_id)
                )
            },
        )
        m.batch_size.observe(rows)
        m.batch_flush_seconds.observe(seconds)
        if self._committed is not None and stored:
            # The dedup guard is only a cache; the database key is the authority.
            with contextlib.suppress(
                anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError
            ):
                self._committed.send_nowait(stored)
