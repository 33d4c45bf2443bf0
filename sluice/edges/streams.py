"""The JetStream streams: a work queue the consumers read, and its history for replay.

- The work stream (SLUICE_STREAM, subjects `<prefix>.<source>`) has work-queue
  retention: a message leaves it once acked, so `max_bytes` with discard-new bounds
  only the backlog not yet written (then the webhook answers 503).
- The history stream (SLUICE_HISTORY_STREAM, default `<stream>_HISTORY`) sources the
  work stream, with limits retention and discard-old: it keeps every message for
  replay up to its age and byte limits and never refuses one. The server keeps a
  work-queue message until the history has copied it, even once it is acked; but
  while the history's source is not attached (it attaches a moment after either
  stream is created) an acked message would leave uncopied, so `ensure()` returns only
  once it is attached.

Both streams keep SLUICE_STREAM_REPLICAS copies (on as many nodes of a NATS cluster); the
durable consumers follow their stream (JetStream requires a work-queue stream's consumers
to have its replica count). An existing stream whose replicas or limits differ from the
settings is updated in place, each change logged; a change JetStream refuses (more
replicas than the cluster has nodes, or any on a single server) stops start-up with a
FatalError naming SLUICE_STREAM_REPLICAS and the server's reason.

JetStream cannot change a stream's retention in place. A work stream found with limits
retention (sluice before 0.2) is migrated by `ensure()`, each step safe to repeat if
the process dies in the middle:

1. freeze: the old stream's subjects move to a parking subject, so nothing new enters
   it (publishes meanwhile fail: the webhook answers 503, nothing is lost);
2. the history stream is created sourcing it, and `ensure()` waits until it holds the
   old stream's last message;
3. every message some consumer has not acked (past its ack floor; per subject) is
   copied into a migration stream (`<stream>_MIGRATION`), which also records the old
   stream's last sequence;
4. the old stream is deleted and the work stream created afresh, numbering on from
   that sequence (so the history's source picks up where it stopped);
5. the copied messages are published into the new work stream (with their
   Nats-Msg-Id, so a repeated step is deduplicated), and the migration stream is
   deleted. The durable consumers are created again by the workers, from the start.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, NoReturn

import anyio
import nats.js.errors
from nats.js import api

from sluice.engine import FatalError

if TYPE_CHECKING:
    from sluice.config import Settings

log = logging.getLogger("sluice.streams")

ATTACH_TIMEOUT = 60.0  # the server retries a detached source every few seconds
CATCH_UP_TIMEOUT = 600.0
_POLL = 0.1
_FIRST_SEQ = "sluice_first_seq"
_SOURCE_HEADER = "Nats-Stream-Source"
# The fields of a stream the settings decide that an update may change (and logs).
_TUNED = ("num_replicas", "max_age", "max_bytes", "duplicate_window", "discard")


def stream_changes(current: Any, wanted: Any) -> list[str]:
    """What updating a stream configured `current` to `wanted` changes, in words
    (only what the settings decide: replicas and limits)."""
    changes = []
    for name in _TUNED:
        old, new = getattr(current, name, None), getattr(wanted, name, None)
        if new is None:
            continue
        if name == "num_replicas":
            old = old or 1  # the server reports 0 or 1 for a stream on one node
        if isinstance(new, float) and isinstance(old, int | float):
            if abs(old - new) < 1e-3:
                continue
        elif old == new:
            continue
        changes.append(f"{name} {_shown(old)} -> {_shown(new)}")
    return changes


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(getattr(value, "value", value))  # an enum (discard policy) by its value


class StreamKeeper:
    """Brings the streams to the configured shape (see the module docstring)."""

    def __init__(self, js: Any, settings: Settings) -> None:
        self._js = js
        self._s = settings
        self._work = settings.stream
        self._history = settings.history_stream_name
        self._migration = f"{settings.stream}_MIGRATION"
        # Subjects no publisher uses: a stream there takes nothing new.
        self._parked = f"sluice_parked.{settings.stream}"
        self._moving = f"sluice_migration.{settings.stream}"

    async def ensure(self) -> None:
        """Create, update or migrate the streams. Raises nats errors, and TimeoutError
        when the history does not attach or catch up in time."""
        work = await self._info(self._work)
        # Still parked: created by a start that stopped before the history attached.
        created = work is not None and work.config.subjects == [self._parked]
        first_seq = None
        if work is not None and work.config.retention != api.RetentionPolicy.WORK_QUEUE:
            first_seq = await self._retire(work)
            work = None
        if work is None:
            migration = await self._info(self._migration)
            if migration is not None and first_seq is None:
                first_seq = int((migration.config.metadata or {}).get(_FIRST_SEQ, "0")) or None
            # Created parked: nothing enters it before the history is attached.
            await self._create(self._work_config([self._parked], first_seq=first_seq))
            created = True
        await self._ensure_history()
        await self._wait_attached(created=created)
        await self._update(self._work_config([f"{self._s.subject_prefix}.>"]))
        if await self._info(self._migration) is not None:
            await self._move_back()

    def _work_config(self, subjects: list[str], *, first_seq: int | None = None) -> Any:
        s = self._s
        return api.StreamConfig(
            name=self._work,
            subjects=subjects,
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE,
            max_age=s.stream_max_age,
            max_bytes=s.stream_max_bytes,
            discard=api.DiscardPolicy.NEW,
            duplicate_window=s.duplicate_window,
            first_seq=first_seq,
            num_replicas=s.stream_replicas,
        )

    async def _ensure_history(self) -> None:
        s = self._s
        config = api.StreamConfig(
            name=self._history,
            sources=[api.StreamSource(name=self._work)],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            max_age=s.history_max_age,
            max_bytes=s.history_max_bytes,
            discard=api.DiscardPolicy.OLD,
            duplicate_window=s.duplicate_window,
            num_replicas=s.stream_replicas,
        )
        if await self._info(self._history) is None:
            await self._create(config)
        else:
            await self._update(config)

    async def _wait_attached(self, *, created: bool) -> None:
        """Until the history's source consumer exists on the work stream. For a work
        stream just created, asked of it (the history reports its source active for a
        while after the stream behind it was deleted): it is created parked, so the
        source's is the only consumer it can have yet."""
        with anyio.fail_after(ATTACH_TIMEOUT):
            while True:
                if created:
                    if (await self._js.stream_info(self._work)).state.consumer_count > 0:
                        return
                else:
                    info = await self._js.stream_info(self._history)
                    source = next((x for x in info.sources or () if x.name == self._work), None)
                    if source is not None and (source.active or -1) >= 0:
                        return
                await anyio.sleep(_POLL)

    async def _retire(self, old: Any) -> int:
        """Steps 1-4 for a limits-retention work stream; returns the first sequence of
        the new one."""
        log.warning(
            "stream %s has %s retention: migrating it to a work queue, history to %s",
            self._work,
            old.config.retention,
            self._history,
        )
        config = old.config
        if config.subjects != [self._parked]:
            config.subjects = [self._parked]
            old = await self._js.update_stream(config)
        last = int(old.state.last_seq)
        await self._ensure_history()
        await self._wait_history_holds(last)
        copied = await self._copy_unacked(last)
        await self._js.delete_stream(self._work)
        log.info("deleted the old stream %s (%d unacked messages kept aside)", self._work, copied)
        return last + 1

    async def _wait_history_holds(self, last: int) -> None:
        """Until the history holds the old stream's message `last` (its source header
        names the origin's sequence)."""
        with anyio.fail_after(CATCH_UP_TIMEOUT):
            while last > 0:
                info = await self._js.stream_info(self._history)
                if info.state.messages:
                    msg = await self._js.get_msg(self._history, seq=info.state.last_seq)
                    origin = (msg.headers or {}).get(_SOURCE_HEADER, "").split()
                    if len(origin) > 1 and origin[0] == self._work and int(origin[1]) >= last:
                        break
                await anyio.sleep(_POLL)
        log.info("history %s holds %s up to sequence %d", self._history, self._work, last)

    async def _copy_unacked(self, last: int) -> int:
        """Step 3: every message past its subject's consumer's ack floor, aside."""
        # A source without a consumer yet has acked nothing: all of it is unread.
        floors = {self._s.subject(source): 0 for source in self._s.sources}
        for consumer in await self._js.consumers_info(self._work):
            subject = consumer.config.filter_subject
            if subject in floors and consumer.ack_floor is not None:
                floors[subject] = int(consumer.ack_floor.stream_seq or 0)
        if await self._info(self._migration) is not None:
            await self._js.delete_stream(self._migration)  # a copy cut short: start over
        await self._js.add_stream(
            api.StreamConfig(
                name=self._migration,
                subjects=[f"{self._moving}.>"],
                retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.FILE,
                metadata={_FIRST_SEQ: str(last + 1)},
            )
        )
        copied = 0
        async for msg in self._messages(self._work, min(floors.values()) + 1, last):
            if msg.subject in floors and msg.seq > floors[msg.subject]:
                await self._js.publish(
                    f"{self._moving}.{msg.subject}",
                    msg.data or b"",
                    stream=self._migration,
                    headers=msg.headers,
                )
                copied += 1
        return copied

    async def _move_back(self) -> None:
        """Step 5."""
        info = await self._js.stream_info(self._migration)
        moved = 0
        async for msg in self._messages(self._migration, 1, int(info.state.last_seq)):
            subject = msg.subject.removeprefix(f"{self._moving}.")
            await self._js.publish(subject, msg.data or b"", stream=self._work, headers=msg.headers)
            moved += 1
        await self._js.delete_stream(self._migration)
        log.warning("migrated stream %s: %d unacked messages moved back", self._work, moved)

    async def _messages(self, stream: str, start: int, last: int) -> Any:
        """The messages of `stream` from sequence `start` to `last`, in order."""
        seq = start
        while seq <= last:
            try:
                msg = await self._js.get_msg(stream, seq=seq, next=True)
            except nats.js.errors.NotFoundError:
                return
            if msg.seq is None or msg.seq > last:
                return
            yield msg
            seq = msg.seq + 1

    async def _create(self, config: Any) -> None:
        """Add a stream, unless another process starting at the same moment did (the
        server may then refuse ours for the name or for the storage both reserve).
        Raises FatalError when JetStream refuses its replicas or limits."""
        try:
            await self._js.add_stream(config)
        except nats.js.errors.APIError as exc:
            if await self._info(config.name) is None:
                _raise_refused(config, "create", exc)
            log.info("stream %s was just created by another process", config.name)
        else:
            log.info("created stream %s (%d replicas)", config.name, config.num_replicas or 1)

    async def _update(self, config: Any) -> None:
        """Bring an existing stream to `config`, logging what changes. Raises FatalError
        when JetStream refuses the change."""
        current = await self._info(config.name)
        changes = stream_changes(current.config, config) if current is not None else []
        try:
            await self._js.update_stream(config)
        except nats.js.errors.APIError as exc:
            _raise_refused(config, f"update ({', '.join(changes) or 'subjects'})", exc)
        if changes:
            log.warning("stream %s updated: %s", config.name, "; ".join(changes))

    async def _info(self, stream: str) -> Any:
        try:
            return await self._js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            return None


def _raise_refused(config: Any, what: str, exc: nats.js.errors.APIError) -> NoReturn:
    """Raise for a stream JetStream would not create or change: FatalError (only the
    operator can fix it) unless JetStream is only unavailable for now."""
    if isinstance(exc, nats.js.errors.ServiceUnavailableError):
        raise exc  # no leader yet, a node restarting: handled like any outage
    replicas = config.num_replicas or 1
    hint = (
        f"SLUICE_STREAM_REPLICAS={replicas} needs a NATS cluster of at least {replicas} nodes"
        if replicas > 1
        else "check the SLUICE_STREAM_* and SLUICE_HISTORY_* limits"
    )
    raise FatalError(
        f"JetStream refused to {what} stream {config.name}: {exc.description} "
        f"(err_code {exc.err_code}); {hint}"
    ) from exc
