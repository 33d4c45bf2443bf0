"""batch writer: stores rows in one transaction per batch, then acks their messages.

A batch closes at `flush_rows` rows or `flush_interval` seconds after its first item.
Nothing is acked before its commit.

- Rows the database refuses (a data fault: any error but "the store is unavailable")
  are found by splitting the batch in halves inside one transaction (each try in a
  savepoint); the rest is stored and each refused row dead-lettered in that same
  transaction, then every message is acked.
- An unavailable or slow store is waited for: the writer keeps its batch and retries
  with a capped backoff (no nak), tells JetStream every `progress_interval` that the
  messages are still in progress, and takes nothing from its inbox meanwhile, so the
  bounded channels stop the consumers.
- A message on its last allowed delivery that still cannot be stored for any other
  reason (the writer crashes on it) is dead-lettered whole and terminated.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from sluice.engine import Actor, DrainDeadline
from sluice.ports import (
    DeadLetter,
    EventRow,
    EventStore,
    RowsRejected,
    StoreTransaction,
    StoreUnavailable,
)

if TYPE_CHECKING:
    from anyio.abc import TaskStatus
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from sluice.actors.work import Work
    from sluice.metrics import Metrics

log = logging.getLogger("sluice.writer")

FLUSH_DEADLINE = 60.0  # one try that takes longer is abandoned, then tried again


@dataclass
class Outcome:
    """What one flush stored: the new ids, and the rows refused with their letters."""

    new_ids: set[str] = field(default_factory=set)
    refused: dict[str, DeadLetter] = field(default_factory=dict)  # by event_id


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
        retry_delay: float = 0.5,
        retry_max: float = 5.0,
        progress_interval: float = 10.0,
        max_deliver: int = 0,
        deadline: DrainDeadline | None = None,
    ) -> None:
        """`retry_delay` doubles up to `retry_max` between tries while the store is
        unavailable; `progress_interval` should be well under JetStream's ack_wait;
        `max_deliver` (0: unknown) tells a message's last delivery."""
        self.name = name
        self._inbox = inbox
        self._store = store
        self._committed = committed
        self._flush_rows = flush_rows
        self._flush_interval = flush_interval
        self._metrics = metrics
        self._retry_delay = retry_delay
        self._retry_max = retry_max
        self._progress_interval = progress_interval
        self._max_deliver = max_deliver
        self._held: list[Work] = []  # the batch being stored, for the progress signals
        self._deadline = deadline if deadline is not None else DrainDeadline()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        crash: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._signal_progress)
            task_status.started()
            try:
                await self._write_until_the_inbox_ends()
            except Exception as exc:  # re-raised as is, not wrapped in a group
                crash = exc
            tg.cancel_scope.cancel()
        if crash is not None:
            raise crash
        await self._inbox.aclose()
        if self._committed is not None:
            await self._committed.aclose()

    async def _write_until_the_inbox_ends(self) -> None:
        while True:
            batch, ended = await self._collect()
            if batch:
                try:
                    await self._flush(batch)
                except Exception as exc:
                    await self._term_last_deliveries(batch, exc)
                    raise
            if ended:
                return

    async def _signal_progress(self) -> None:
        """Every `progress_interval`, tell JetStream the messages in hand are in progress,
        so a batch held through an outage or a slow commit is not redelivered meanwhile."""
        if self._progress_interval <= 0 or self._progress_interval == math.inf:
            return
        while True:
            await anyio.sleep(self._progress_interval)
            for work in list(self._held):
                try:
                    await work.delivery.in_progress()
                except Exception:  # lost connection: ack_wait may redeliver; harmless
                    log.debug("in_progress failed", exc_info=True)

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
        """Store the batch, waiting out an unavailable store, then ack its messages."""
        started = time.perf_counter()
        self._held = batch
        try:
            outcome = await self._store_patiently(batch)
            # The acks are not cut by an ordinary cancel either (see _try_store).
            with self._deadline.shield(FLUSH_DEADLINE):
                for work in batch:
                    await work.delivery.ack()
        finally:
            self._held = []
        self._account(batch, outcome, time.perf_counter() - started)

    async def _store_patiently(self, batch: list[Work]) -> Outcome:
        delay = self._retry_delay
        failed_since: float | None = None
        while True:
            try:
                outcome = await self._try_store(batch)
            except (StoreUnavailable, TimeoutError) as exc:
                if failed_since is None:
                    failed_since = anyio.current_time()
                    rows = sum(len(work.rows) for work in batch)
                    for work in batch:
                        self._metrics.events_failed.labels(work.source, "store_unavailable").inc(
                            len(work.rows)
                        )
                    log.error(
                        "store unavailable, holding %d messages (%d rows), retrying: %s",
                        len(batch),
                        rows,
                        exc,
                    )
                else:
                    log.warning("store still unavailable, retry in %.1f s: %s", delay, exc)
                await anyio.sleep(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            if failed_since is not None:
                log.info("store back after %.1f s", anyio.current_time() - failed_since)
            return outcome

    async def _try_store(self, batch: list[Work]) -> Outcome:
        """One try. A commit is not cut by an ordinary cancel; the drain's deadline and
        a forced stop cut it (unacked: redelivered)."""
        with self._deadline.shield(FLUSH_DEADLINE) as scope:
            outcome = await self._write(batch)
        if scope.cancelled_caught:
            raise TimeoutError(f"a try took over {FLUSH_DEADLINE:g} s or the drain ended")
        return outcome

    async def _write(self, batch: list[Work]) -> Outcome:
        rows = [row for work in batch for row in work.rows]
        dead = [letter for work in batch for letter in work.dead]
        try:
            return Outcome(await self._store.write_batch(rows, dead))
        except RowsRejected:
            pass
        # Some rows (or a letter) are refused: find them, in one transaction.
        owners = {id(row): work for work in batch for row in work.rows}
        outcome = Outcome()
        async with self._store.transaction() as tx:
            await self._split(tx, rows, owners, outcome)
            letters = dead + list(outcome.refused.values())
            await tx.dead_letter(letters)
        for event_id, letter in outcome.refused.items():
            log.warning(
                "dead-lettered %s: %s",
                event_id,
                letter.reason,
                extra={"correlation_id": letter.correlation_id},
            )
        return outcome

    async def _split(
        self,
        tx: StoreTransaction,
        rows: list[EventRow],
        owners: dict[int, Work],
        outcome: Outcome,
    ) -> None:
        """Insert `rows`; when refused, halve and try each half, down to single rows."""
        if not rows:
            return
        try:
            outcome.new_ids |= await tx.insert(rows)
            return
        except RowsRejected as exc:
            if len(rows) == 1:
                row = rows[0]
                work = owners[id(row)]
                outcome.refused[row.event_id] = DeadLetter(
                    row.source,
                    exc.reason,
                    row.data.encode(),
                    work.delivery.num_delivered,
                    event_id=row.event_id,
                    correlation_id=row.correlation_id or work.correlation_id,
                )
                return
        half = len(rows) // 2
        await self._split(tx, rows[:half], owners, outcome)
        await self._split(tx, rows[half:], owners, outcome)

    async def _term_last_deliveries(self, batch: list[Work], exc: Exception) -> None:
        """The writer is crashing on this batch: a message on its last allowed delivery
        is dead-lettered whole and terminated, so it is never dropped unrecorded."""
        if self._max_deliver <= 0:
            return
        last = [w for w in batch if w.delivery.num_delivered >= self._max_deliver]
        if not last:
            return
        letters = [
            DeadLetter(
                w.source,
                f"last delivery ({w.delivery.num_delivered}) failed: {exc!r}",
                w.delivery.data,
                w.delivery.num_delivered,
                correlation_id=w.correlation_id,
            )
            for w in last
        ]
        try:
            with self._deadline.shield(FLUSH_DEADLINE):
                await self._store.write_batch((), letters)
                for work in last:
                    await work.delivery.term()
        except Exception:
            log.exception("could not dead-letter %d messages on their last delivery", len(last))
            return
        for work in last:
            self._metrics.events_dead_lettered.labels(work.source).inc(len(work.rows))
            log.error(
                "message dead-lettered whole on its last delivery: %r",
                exc,
                extra={"correlation_id": work.correlation_id},
            )

    def _account(self, batch: list[Work], outcome: Outcome, seconds: float) -> None:
        m = self._metrics
        new_ids, rejected = outcome.new_ids, outcome.refused
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
