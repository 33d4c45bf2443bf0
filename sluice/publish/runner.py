"""The publishing loop: workers, pacing, retries on 429/503, progress and the summary."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import random
import signal
import sys
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import msgspec

from sluice.config import is_webhook_secret
from sluice.publish.bodies import Batch, BodyMaker
from sluice.publish.events import Traffic
from sluice.publish.http1 import Connection, HttpError, Target
from sluice.signing import Signer

if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass(frozen=True)
class PublishOptions:
    url: str
    batch: int = 100
    rate: float | None = None  # events/s; None: as fast as the server answers
    total: int | None = None  # events; None: until `duration` or a signal
    duration: float | None = None  # seconds
    concurrency: int = 8
    duplicates: float = 0.0
    invalid: float = 0.0
    max_retries: int = 30  # per request, on 429/503/connection failures
    timeout: float = 30.0
    seed: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    progress: float = 1.0  # seconds between progress lines; 0: none
    traffic: Traffic = field(default_factory=Traffic)  # users, videos, timestamps
    sign_secrets: tuple[str, ...] = ()  # whsec_...: each request signed with each

    def __post_init__(self) -> None:
        if self.batch < 1 or self.concurrency < 1:
            raise ValueError("batch and concurrency must be at least 1")
        if self.rate is not None and not self.rate > 0:
            raise ValueError("rate must be positive")
        if self.total is not None and self.total < 0:
            raise ValueError("total must not be negative")
        if self.duration is not None and not self.duration > 0:
            raise ValueError("duration must be positive")
        Target.parse(self.url)
        if not all(is_webhook_secret(secret) for secret in self.sign_secrets):
            raise ValueError("a signing secret must be whsec_ and base64")


class _Answer(msgspec.Struct):
    accepted: int = 0
    duplicates: int = 0
    rejected: list[msgspec.Raw] = []


_answer = msgspec.json.Decoder(_Answer)


@dataclass
class Stats:
    """What happened, from the publisher's side. Event counts count each event once."""

    sent: int = 0  # events whose request got a final answer or gave up
    accepted: int = 0  # as the server reported (2xx bodies)
    duplicates: int = 0  # as the server reported
    rejected: int = 0  # as the server reported (invalid events)
    failed: int = 0  # events in requests that never got a 2xx/422 (given up)
    sent_duplicates: int = 0  # exact re-sends we made
    sent_invalid: int = 0  # invalid events we made
    expected_stored: int = 0  # distinct valid events acknowledged with 2xx
    requests: int = 0  # attempts, retries included
    throttled: int = 0  # 429/503 answers
    throttled_without_retry_after: int = 0
    connection_errors: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # a sample of failure reasons
    latencies: array[float] = field(default_factory=lambda: array("d"))  # seconds
    first_post_at: float | None = None  # unix time
    last_answer_at: float | None = None
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def summary(self) -> dict[str, Any]:
        elapsed = self.elapsed()
        lat = sorted(self.latencies)
        return {
            "sent": self.sent,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "failed": self.failed,
            "sent_duplicates": self.sent_duplicates,
            "sent_invalid": self.sent_invalid,
            "expected_stored": self.expected_stored,
            "requests": self.requests,
            "throttled": self.throttled,
            "throttled_without_retry_after": self.throttled_without_retry_after,
            "connection_errors": self.connection_errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": dict(self.errors.most_common(5)),
            "elapsed_s": round(elapsed, 3),
            "events_per_s": round(self.sent / elapsed, 1) if elapsed > 0 else 0.0,
            "latency_ms": {
                "p50": _ms(percentile(lat, 50)),
                "p95": _ms(percentile(lat, 95)),
                "p99": _ms(percentile(lat, 99)),
                "max": _ms(lat[-1] if lat else None),
            },
            "first_post_at": self.first_post_at,
            "last_answer_at": self.last_answer_at,
        }


def percentile(ordered: Any, pct: float) -> float | None:
    """Nearest-rank percentile of an already sorted sequence (None when empty)."""
    if not ordered:
        return None
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return float(ordered[rank - 1])


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def retry_after_seconds(value: str | None, default: float = 1.0) -> float | None:
    """Retry-After as delay-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


#: Backoff after failed connections, shared by every worker: the delay doubles with each
#: failure in a row from BACKOFF_INITIAL up to BACKOFF_MAX, and any answer resets it.
BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 5.0


class Publisher:
    """Runs the workers; `stop()` lets requests in flight finish (retries included).

    When connections fail (a stopped server) every worker waits out one shared backoff,
    so a run against nothing makes a few attempts a second, not thousands."""

    def __init__(self, options: PublishOptions, *, out: TextIO | None = None) -> None:
        self.options = options
        self.stats = Stats()
        self._out = out if out is not None else sys.stderr
        self._maker = BodyMaker(
            duplicates=options.duplicates,
            invalid=options.invalid,
            seed=options.seed,
            traffic=options.traffic,
        )
        self._target = Target.parse(options.url)
        self._stopping = asyncio.Event()
        self._remaining = options.total
        self._scheduled = 0  # events handed to workers (for --rate pacing)
        self._deadline: float | None = None
        self._t0 = 0.0
        self._progress_min = 5.0  # seconds between lines when not on a terminal (logs)
        self._failures_in_a_row = 0  # failed connections since the last answer
        self._retry_at = 0.0  # perf_counter time before which no worker connects
        self._jitter = random.Random(options.seed)
        self._signer = Signer(options.sign_secrets) if options.sign_secrets else None

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> Stats:
        self.stats = Stats()
        self._t0 = time.perf_counter()
        if self.options.duration is not None:
            self._deadline = self._t0 + self.options.duration
        async with asyncio.TaskGroup() as tg:
            workers = [tg.create_task(self._worker()) for _ in range(self.options.concurrency)]
            progress = tg.create_task(self._progress()) if self.options.progress > 0 else None
            for task in workers:
                await task
            if progress is not None:
                progress.cancel()
        return self.stats

    def _take(self) -> int:
        """How many events the next request carries; 0 when the run is over."""
        if self._stopping.is_set():
            return 0
        if self._deadline is not None and time.perf_counter() >= self._deadline:
            self._stopping.set()
            return 0
        n = self.options.batch
        if self._remaining is not None:
            n = min(n, self._remaining)
            self._remaining -= n
            if n == 0:
                return 0
        return n

    async def _pace(self, n: int) -> bool:
        """Wait for the events' turn under --rate; False if the run ended meanwhile."""
        rate = self.options.rate
        if rate is None:
            return True
        due = self._t0 + self._scheduled / rate
        self._scheduled += n
        delay = due - time.perf_counter()
        if self._deadline is not None:
            delay = min(delay, self._deadline - time.perf_counter())
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
        return not self._stopping.is_set() and (
            self._deadline is None or time.perf_counter() < self._deadline
        )

    async def _worker(self) -> None:
        connection = Connection(self._target, timeout=self.options.timeout)
        bare = self.options.batch == 1
        paced = self.options.rate is not None
        try:
            while n := self._take():
                if paced and not await self._pace(n):
                    break
                await self._send(connection, self._maker.make(n, bare=bare))
        finally:
            await connection.close()

    async def _send(self, connection: Connection, batch: Batch) -> None:
        stats = self.stats
        options = self.options
        attempt = 0
        failure = ""  # the last connection error
        signer = self._signer
        msg_id = signer.new_id() if signer is not None else ""  # kept by the retries
        while True:
            attempt += 1
            if not await self._wait_out_backoff():
                if failure:  # tried before, never answered
                    self._give_up(batch, f"connection: {failure} (the run ended meanwhile)")
                return
            if stats.first_post_at is None:
                stats.first_post_at = time.time()
            signature = signer.headers(msg_id, batch.body) if signer is not None else None
            started = time.perf_counter()
            try:
                answer = await connection.post(batch.body, options.headers, signature)
            except HttpError as exc:
                stats.requests += 1
                stats.connection_errors += 1
                self._connection_failed()
                failure = str(exc)
                if attempt > options.max_retries:
                    self._give_up(batch, f"connection: {exc}")
                    return
                continue
            self._failures_in_a_row = 0
            stats.latencies.append(time.perf_counter() - started)
            stats.last_answer_at = time.time()
            stats.requests += 1
            status = answer.status
            stats.statuses[status] += 1
            if status in (429, 503):
                stats.throttled += 1
                delay = retry_after_seconds(answer.header("retry-after"))
                if delay is None:
                    stats.throttled_without_retry_after += 1
                    delay = 1.0
                if attempt > options.max_retries:
                    self._give_up(batch, f"{status} after {attempt} attempts")
                    return
                await asyncio.sleep(delay)
                continue
            if 200 <= status < 300 or status == 422:
                self._count(batch, answer.body, ok=status != 422)
                return
            self._give_up(batch, f"{status}: {answer.body[:200]!r}")
            return

    def _connection_failed(self) -> None:
        if time.perf_counter() < self._retry_at:
            return  # failed alongside others of the same round: that backoff holds
        self._failures_in_a_row += 1
        delay = min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** (self._failures_in_a_row - 1))
        delay *= 0.8 + 0.4 * self._jitter.random()  # +-20%: workers do not retry in step
        self._retry_at = max(self._retry_at, time.perf_counter() + delay)

    async def _wait_out_backoff(self) -> bool:
        """Sleep until the shared backoff ends (at once when there is none); False if
        the run has ended."""
        while (delay := self._retry_at - time.perf_counter()) > 0:
            if self._deadline is not None:
                delay = min(delay, self._deadline - time.perf_counter())
            if delay <= 0:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            if self._stopping.is_set():
                return False
        return self._deadline is None or time.perf_counter() < self._deadline

    def _count(self, batch: Batch, body: bytes, *, ok: bool) -> None:
        stats = self.stats
        stats.sent += batch.events
        stats.sent_duplicates += batch.duplicates
        stats.sent_invalid += batch.invalid
        try:
            answer = _answer.decode(body)
        except msgspec.DecodeError:
            stats.errors["unreadable answer"] += 1
            answer = _Answer()
        stats.accepted += answer.accepted
        stats.duplicates += answer.duplicates
        stats.rejected += len(answer.rejected)
        if ok:
            stats.expected_stored += batch.fresh_valid
            self._maker.acknowledged(batch)

    def _give_up(self, batch: Batch, reason: str) -> None:
        stats = self.stats
        stats.sent += batch.events
        stats.sent_duplicates += batch.duplicates
        stats.sent_invalid += batch.invalid
        stats.failed += batch.events
        stats.errors[reason[:120]] += 1

    async def _progress(self) -> None:
        tty = self._out.isatty()
        interval = self.options.progress if tty else max(self.options.progress, self._progress_min)
        seen = sent = 0
        while True:
            await asyncio.sleep(interval)
            stats = self.stats
            recent = sorted(stats.latencies[seen:])
            seen = len(stats.latencies)
            rate = (stats.sent - sent) / interval
            sent = stats.sent
            latency = "no answers"
            if recent:
                p50, p99 = _ms(percentile(recent, 50)), _ms(percentile(recent, 99))
                latency = f"latency p50 {p50} ms p99 {p99} ms"
            line = (
                f"{stats.elapsed():7.1f}s  sent {stats.sent:,}  accepted {stats.accepted:,}  "
                f"rejected {stats.rejected:,}  throttled {stats.throttled:,}  "
                f"failed {stats.failed:,}  {rate:,.0f} events/s  {latency}"
            )
            print(("\r" + line + "   ") if tty else line, end="" if tty else "\n", file=self._out)
            self._out.flush()


def format_summary(summary: dict[str, Any]) -> str:
    lat = summary["latency_ms"]
    statuses = ", ".join(f"{k}: {v:,}" for k, v in summary["statuses"].items()) or "none"
    lines = [
        f"sent {summary['sent']:,} events in {summary['requests']:,} requests "
        f"over {summary['elapsed_s']:.1f} s ({summary['events_per_s']:,.0f} events/s)",
        f"accepted {summary['accepted']:,}  duplicates {summary['duplicates']:,}  "
        f"rejected {summary['rejected']:,}  failed {summary['failed']:,}",
        f"made: {summary['sent_duplicates']:,} exact re-sends, "
        f"{summary['sent_invalid']:,} invalid events; "
        f"{summary['expected_stored']:,} distinct valid events acknowledged",
        f"throttled (429/503) {summary['throttled']:,}"
        f" (without Retry-After: {summary['throttled_without_retry_after']:,}),"
        f" connection errors {summary['connection_errors']:,}",
        f"statuses: {statuses}",
        f"latency ms: p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}  max {lat['max']}"
        if lat["max"] is not None
        else "latency: none measured (no request was answered)",
    ]
    for reason, count in summary["errors"].items():
        lines.append(f"error x{count}: {reason}")
    return "\n".join(lines)


def run_publisher(
    options: PublishOptions,
    *,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    out: TextIO | None = None,
) -> Stats:
    """Run until --total/--duration or SIGINT/SIGTERM (a second signal cancels)."""

    async def main() -> Stats:
        publisher = Publisher(options, out=out)
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_signal() -> None:
            if publisher._stopping.is_set():
                task.cancel()
            publisher.stop()

        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, on_signal)
        try:
            return await publisher.run()
        except asyncio.CancelledError:
            return publisher.stats

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())
