"""Group commit alone: concurrent requests against a fake event log that holds publishes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import anyio
import msgspec
import pytest
import trio.testing

from sluice import envelope
from sluice.config import Settings
from sluice.group_commit import SOLO_BYTES, GroupCommit, Outcome, ServiceUnavailable
from sluice.http.webhook import Answer, Ingest
from sluice.metrics import Metrics
from sluice.ports import LogUnavailable
from sluice.recent import RecentIds
from sluice.sources import ValidEvent
from tests.factories import make_event
from tests.fakes import FakeEventLog

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def ev(event_id: str, source: str = "facebook") -> ValidEvent:
    return ValidEvent(event_id, source, b'{"eventId":"%s"}' % event_id.encode(), 0)


def make(
    log: FakeEventLog,
    *,
    inflight: int = 1,
    max_bytes: int = 1 << 20,
    capacity: int = 1000,
    timeout: float = 5.0,
) -> tuple[GroupCommit, Metrics]:
    metrics = Metrics()
    commit = GroupCommit(
        log,
        metrics,
        inflight=inflight,
        max_bytes=max_bytes,
        recent=RecentIds(capacity),
        publish_timeout=timeout,
    )
    return commit, metrics


def accepted_total(metrics: Metrics, source: str = "facebook") -> float:
    value = metrics.registry.get_sample_value("events_accepted_total", {"source": source})
    return value or 0.0


def published_ids(log: FakeEventLog) -> list[list[str]]:
    return [
        [msgspec.json.decode(raw)["eventId"] for raw in envelope.decode(payload).events]
        for _, payload, _, _ in log.published
    ]


class Requests:
    """Requests started one at a time (so they join in a known order), with their
    answers (an Outcome, or the exception raised) and cancel scopes by name."""

    def __init__(self, tg: TaskGroup, commit: GroupCommit) -> None:
        self.tg = tg
        self.commit = commit
        self.answers: dict[str, Outcome | Exception] = {}
        self.answered_at: dict[str, float] = {}
        self.scopes: dict[str, anyio.CancelScope] = {}
        self.answered = anyio.Event()

    async def start(
        self,
        name: str,
        *events: ValidEvent,
        source: str = "facebook",
        deadline: float | None = None,
    ) -> None:
        self.tg.start_soon(self._run, name, source, events, deadline)
        await anyio.wait_all_tasks_blocked()

    async def _run(
        self, name: str, source: str, events: tuple[ValidEvent, ...], deadline: float | None
    ) -> None:
        with anyio.CancelScope() as scope:
            self.scopes[name] = scope
            try:
                self.answers[name] = await self.commit.submit(
                    source,
                    list(events),
                    correlation_id=f"c-{name}",
                    received_at=NOW,
                    deadline=deadline,
                )
            except ServiceUnavailable as exc:
                self.answers[name] = exc
            self.answered_at[name] = anyio.current_time()
            self.answered.set()


@pytest.mark.anyio
async def test_a_lone_request_publishes_alone_as_one_envelope_per_request() -> None:
    log = FakeEventLog()
    commit, metrics = make(log, inflight=2)
    events = [ev("e1"), ev("e2")]
    outcome = await commit.submit("facebook", events, correlation_id="c-1", received_at=NOW)
    assert outcome == Outcome(2, 0)
    [(source, payload, msg_id, headers)] = log.published
    pairs = [(e.event_id, e.raw) for e in events]
    [alone] = envelope.encode("facebook", pairs, received_at=NOW, max_bytes=log.max_payload)
    assert (source, payload, msg_id) == ("facebook", alone.payload, alone.msg_id)
    assert msg_id == envelope.msg_id_for(["e1", "e2"])
    assert headers == {"X-Correlation-ID": "c-1", "Sluice-Events": "2"}
    assert envelope.decode(payload).requests is None
    assert accepted_total(metrics) == 2


@pytest.mark.anyio
async def test_a_big_request_is_published_at_once_alone_while_small_ones_wait() -> None:
    log = FakeEventLog(hold=True)
    metrics = Metrics()
    commit = GroupCommit(
        log,
        metrics,
        inflight=1,
        max_bytes=1 << 20,
        recent=RecentIds(1000),
        publish_timeout=5.0,
        solo_bytes=100,
    )
    big = [ev(f"b{i}") for i in range(10)]  # ~160 bytes of events
    async with anyio.create_task_group() as tg:
        requests = Requests(tg, commit)
        await requests.start("0", ev("e0"))  # small: takes the slot
        await requests.start("1", ev("e1"))  # small: waits for the slot
        await requests.start("big", *big)  # big: does not wait
        assert len(log.held) == 2  # e0's message and the big one, both in flight
        log.held[1].set()
        await anyio.wait_all_tasks_blocked()
        assert list(requests.answers) == ["big"]
        log.held[0].set()
        await anyio.wait_all_tasks_blocked()
        log.held[2].set()
    assert requests.answers == {"0": Outcome(1, 0), "1": Outcome(1, 0), "big": Outcome(10, 0)}
    assert published_ids(log) == [[e.event_id for e in big], ["e0"], ["e1"]]  # in ack order
    assert accepted_total(metrics) == 12


def sized(event_id: str, size: int) -> ValidEvent:
    """An event whose raw JSON is `size` bytes (~380 for a live-like one)."""
    head = b'{"eventId":"%s","pad":"' % event_id.encode()
    return ValidEvent(event_id, "facebook", head + b"x" * (size - len(head) - 2) + b'"}', 0)


@pytest.mark.anyio
async def test_arrays_share_messages_too_and_only_a_request_of_solo_bytes_goes_alone() -> None:
    """Arrays of 100 (~38 KB, ~19 KB per source) are what the default threshold is
    for: every message costs nats-server two fsynced writes and a delete, so they
    share messages like single events; a request of SOLO_BYTES is published alone."""
    log = FakeEventLog(hold=True)
    commit, metrics = make(log, inflight=1, max_bytes=4 << 20)
    arrays = {str(r): [sized(f"a{r}.{i}", 380) for i in range(50)] for r in range(4)}
    huge = [sized(f"h{i}", 1024) for i in range(SOLO_BYTES // 1024)]
    async with anyio.create_task_group() as tg:
        requests = Requests(tg, commit)
        for name, events in arrays.items():
            await requests.start(name, *events)
        await requests.start("huge", *huge)
        assert len(log.held) == 2  # array 0 alone, and the huge one: 1, 2, 3 wait
        log.held[0].set()
        await anyio.wait_all_tasks_blocked()
        assert len(log.held) == 3  # arrays 1-3 in one message
        log.held[1].set()
        await anyio.wait_all_tasks_blocked()
        log.held[2].set()
    assert published_ids(log) == [
        [e.event_id for e in arrays["0"]],
        [e.event_id for e in huge],
        [e.event_id for r in "123" for e in arrays[r]],
    ]
    assert requests.answers == {**{r: Outcome(50, 0) for r in arrays}, "huge": Outcome(256, 0)}
    assert accepted_total(metrics) == 456


@pytest.mark.anyio
async def test_concurrent_requests_share_a_message_each_answered_after_its_ack() -> None:
    log = FakeEventLog(hold=True)
    commit, metrics = make(log, inflight=1)
    async with anyio.create_task_group() as tg:
        requests = Requests(tg, commit)
        for i in range(10):
            await requests.start(str(i), ev(f"e{i}"))
        assert len(log.held) == 1 and requests.answers == {}  # 0 alone in flight
        log.held[0].set()
        await anyio.wait_all_tasks_blocked()
        assert list(requests.answers) == ["0"]  # the others' message is not acked yet
        assert len(log.held) == 2 and log.published == [log.published[0]]
        log.held[1].set()
    assert requests.answers == {str(i): Outcome(1, 0) for i in range(10)}
    assert published_ids(log) == [["e0"], [f"e{i}" for i in range(1, 10)]]
    _, payload, msg_id, headers = log.published[1]
    assert envelope.decode(payload).requests == [(f"c-{i}", 1) for i in range(1, 10)]
    assert msg_id == envelope.msg_id_for([f"e{i}" for i in range(1, 10)])
    assert headers == {"X-Correlation-ID": "c-1", "Sluice-Events": "9"}
    assert log.calls == 2 and accepted_total(metrics) == 10
    assert metrics.registry.get_sample_value("envelope_requests_sum") == 10
    assert metrics.registry.get_sample_value("publish_ack_seconds_count") == 2  # one per ack


@pytest.mark.anyio
async def test_many_requests_use_few_messages_and_at_most_inflight_publishes() -> None:
    log = FakeEventLog()
    commit, metrics = make(log, inflight=2)
    answers: list[Outcome] = []

    async def request(i: int) -> None:
        events = [ev(f"e{i}-{j}") for j in range(i % 3 + 1)]
        answers.append(
            await commit.submit("facebook", events, correlation_id=f"c{i}", received_at=NOW)
        )

    async with anyio.create_task_group() as tg:
        for i in range(60):
            tg.start_soon(request, i)
    assert sorted(a.accepted for a in answers) == sorted(i % 3 + 1 for i in range(60))
    assert len(log.published) < 20 and log.most_running <= 2
    expected = sorted(f"e{i}-{j}" for i in range(60) for j in range(i % 3 + 1))
    assert sorted(i for ids in published_ids(log) for i in ids) == expected
    assert accepted_total(metrics) == len(expected)


@pytest.mark.anyio
async def test_each_source_has_its_own_lane() -> None:
    log = FakeEventLog(hold=True)
    commit, _ = make(log, inflight=1)
    async with anyio.create_task_group() as tg:
        requests = Requests(tg, commit)
        await requests.start("fb", ev("f1"))
        await requests.start("fb2", ev("f2"))
        await requests.start("tt", ev("t1", "tiktok"), source="tiktok")
        assert len(log.held) == 2  # tiktok did not wait behind facebook
        for _ in range(3):
            for held in log.held:
                held.set()
            await anyio.wait_all_tasks_blocked()
    assert sorted(published_ids(log)) == [["f1"], ["f2"], ["t1"]]


@pytest.mark.anyio
async def test_a_failed_publish_fails_every_request_in_it_and_counts_nothing() -> None:
    log = FakeEventLog(hold=True)
    commit, metrics = make(log, inflight=1)
    async with anyio.create_task_group() as tg:
        requests = Requests(tg, commit)
        for name in "abc":
            await requests.start(name, ev(f"e-{name}"))
        log.held[0].set()
        await anyio.wait_all_tasks_blocked()
        log.fail_next.append(LogUnavailable("nats: timeout"))
        log.held[1].set()
    assert requests.answers["a"] == Outcome(1, 0)
    for name in "bc":
        answer = requests.answers[name]
        assert isinstance(answer, ServiceUnavailable) and "timeout" in str(answer)
    assert accepted_total(metrics) == 1
    assert metrics.registry.get_sample_value("publish_ack_seconds_count") == 2  # failed too
    log.hold = False  # nothing of b was remembered: sent again, it is published again
    again = await commit.submit("facebook", [ev("e-b")], correlation_id="c", received_at=NOW)
    assert again == Outcome(1, 0) and published_ids(log) == [["e-a"], ["e-b"]]


@pytest.mark.anyio
async def test_a_failed_publish_answers_503_with_retry_after_to_every_request_in_it() -> None:
    log = FakeEventLog(hold=True)
    metrics = Metrics()
    ingest = Ingest(log, Settings(group_commit_inflight=1), metrics)
    answers: dict[int, Answer] = {}
    bodies = [msgspec.json.encode(make_event("facebook")) for _ in range(4)]

    async def post(i: int) -> None:
        answers[i] = await ingest.handle(bodies[i], route_source=None, correlation_id=f"c{i}")

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(post, i)
            await anyio.wait_all_tasks_blocked()
        log.held[0].set()
        await anyio.wait_all_tasks_blocked()
        log.fail_next.append(LogUnavailable("nats: no responders"))
        log.held[1].set()
    assert answers[0].status == 202 and answers[0].body["accepted"] == 1
    for i in (1, 2, 3):
        assert answers[i].status == 503 and answers[i].headers == {"Retry-After": "1"}
    assert accepted_total(metrics) == 1


@pytest.mark.anyio
async def test_a_leader_cancelled_mid_publish_does_not_strand_the_others() -> None:
    log = FakeEventLog(hold=True)
    commit, metrics = make(log, inflight=1)
    async with anyio.create_task_group() as tg:
        requests = Requests(tg, commit)
        for name in "abc":
            await requests.start(name, ev(f"e-{name}"))
        requests.scopes["a"].cancel()  # the client went away while a's publish runs
        await anyio.wait_all_tasks_blocked()
        assert len(log.held) == 1
        log.held[0].set()
        await anyio.wait_all_tasks_blocked()
        assert len(log.held) == 2  # b took over and publishes b and c
        log.held[1].set()
    # a's own answer may or may not come back (its scope is cancelled); its events
    # are durable either way.
    assert requests.answers["b"] == requests.answers["c"] == Outcome(1, 0)
    assert published_ids(log) == [["e-a"], ["e-b", "e-c"]]
    assert accepted_total(metrics) == 3  # a's events are durable, so counted


@pytest.mark.anyio
async def test_a_waiting_request_cancelled_is_not_published_and_strands_nobody() -> None:
    log = FakeEventLog(hold=True)
    commit, _ = make(log, inflight=1)
    async with anyio.create_task_group() as tg:
        requests = Requests(tg, commit)
        for name in "abcd":
            await requests.start(name, ev(f"e-{name}"))
        requests.scopes["b"].cancel()  # waiting
        await anyio.wait_all_tasks_blocked()
        log.held[0].set()
        requests.scopes["c"].cancel()  # possibly just handed the slot
        await anyio.wait_all_tasks_blocked()
        log.held[1].set()
    assert requests.answers == {"a": Outcome(1, 0), "d": Outcome(1, 0)}
    assert published_ids(log) == [["e-a"], ["e-d"]]


@pytest.mark.anyio
async def test_resent_events_are_duplicates_and_not_published_again() -> None:
    log = FakeEventLog()
    commit, metrics = make(log)
    first = await commit.submit(
        "facebook", [ev("e1"), ev("e2")], correlation_id="c", received_at=NOW
    )
    again = await commit.submit(
        "facebook", [ev("e1"), ev("e3")], correlation_id="c", received_at=NOW
    )
    assert (first, again) == (Outcome(2, 0), Outcome(1, 1))
    assert published_ids(log) == [["e1", "e2"], ["e3"]]
    # Another process (or a forgotten id): JetStream's msg-id window still catches a
    # lone re-sent envelope.
    other, _ = make(log)
    resent = await other.submit(
        "facebook", [ev("e1"), ev("e2")], correlation_id="c", received_at=NOW
    )
    assert resent == Outcome(0, 2) and len(log.published) == 2
    assert accepted_total(metrics) == 3


@pytest.mark.anyio
async def test_a_resent_event_acked_while_it_waited_is_a_duplicate() -> None:
    log = FakeEventLog(hold=True)
    commit, _ = make(log, inflight=1)
    async with anyio.create_task_group() as tg:
        requests = Requests(tg, commit)
        await requests.start("a", ev("e1"))
        await requests.start("b", ev("e1"), ev("e2"))  # e1 not acked yet: b waits
        log.held[0].set()
        await anyio.wait_all_tasks_blocked()
        log.held[1].set()
    assert requests.answers == {"a": Outcome(1, 0), "b": Outcome(1, 1)}
    assert published_ids(log) == [["e1"], ["e2"]]


@pytest.mark.anyio
async def test_concurrent_copies_of_an_event_are_published_once() -> None:
    log = FakeEventLog(hold=True)
    commit, metrics = make(log, inflight=1)
    async with anyio.create_task_group() as tg:
        requests = Requests(tg, commit)
        await requests.start("a", ev("e0"))
        await requests.start("b", ev("e1"), ev("e2"))
        await requests.start("c", ev("e2"), ev("e3"))
        log.held[0].set()
        await anyio.wait_all_tasks_blocked()
        log.held[1].set()
    assert requests.answers == {"a": Outcome(1, 0), "b": Outcome(2, 0), "c": Outcome(1, 1)}
    assert published_ids(log) == [["e0"], ["e1", "e2", "e3"]]
    assert envelope.decode(log.published[1][1]).requests == [("c-b", 2), ("c-c", 1)]
    assert accepted_total(metrics) == 4


@pytest.mark.anyio
async def test_waiting_bytes_are_bounded() -> None:
    log = FakeEventLog(hold=True)
    size = len(ev("e-a").raw)
    commit, _ = make(log, inflight=1, max_bytes=2 * size)
    async with anyio.create_task_group() as tg:
        requests = Requests(tg, commit)
        for name in "abcd":
            await requests.start(name, ev(f"e-{name}"))
        log.held[0].set()  # b and c go out; d, over the bound, waited and goes next
        await anyio.wait_all_tasks_blocked()
        log.held[1].set()
        await anyio.wait_all_tasks_blocked()
        log.held[2].set()
    assert published_ids(log) == [["e-a"], ["e-b", "e-c"], ["e-d"]]
    assert all(answer == Outcome(1, 0) for answer in requests.answers.values())


@pytest.mark.trio
async def test_over_the_bound_too_long_is_503_and_a_hung_publish_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = FakeEventLog(hold=True)
    size = len(ev("e-a").raw)
    commit, metrics = make(log, inflight=1, max_bytes=size, timeout=1.0)
    start = trio.current_time()
    async with anyio.create_task_group() as tg:
        requests = Requests(tg, commit)
        for name in "abc":
            await requests.start(name, ev(f"e-{name}"))
    answer = requests.answers["c"]  # c waited 1 s for room (room may come at the deadline)
    assert isinstance(answer, ServiceUnavailable)
    assert "waiting" in str(answer) or "no publish ack" in str(answer)
    # a's publish never acks: a's deadline (the publish timeout from its arrival)
    # fails it; b, waiting behind it, is answered by its own deadline, not after a
    # publish of its own with a fresh timeout.
    assert trio.current_time() - start == pytest.approx(1.0)
    a, b = requests.answers["a"], requests.answers["b"]
    assert isinstance(a, ServiceUnavailable) and "no publish ack" in str(a)
    assert isinstance(b, ServiceUnavailable) and "no publish ack" in str(b)
    assert accepted_total(metrics) == 0 and log.calls == 1
    assert metrics.registry.get_sample_value("publish_ack_seconds_count") == 1  # timed out too


@pytest.mark.trio
async def test_a_request_due_before_the_publish_under_way_ends_is_answered_by_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = FakeEventLog(hold=True)
    commit, _ = make(log, inflight=1, timeout=5.0)
    start = trio.current_time()
    async with anyio.create_task_group() as tg:
        requests = Requests(tg, commit)
        await requests.start("a", ev("e-a"))  # publishing, for up to 5 s
        await requests.start("b", ev("e-b"), deadline=start + 1.0)  # waits with its own timer
        await requests.answered.wait()
        b = requests.answers["b"]
        assert isinstance(b, ServiceUnavailable) and "no publish ack" in str(b)
        assert requests.answered_at["b"] == pytest.approx(start + 1.0)
        log.held[0].set()
    assert requests.answers["a"] == Outcome(1, 0)
    assert published_ids(log) == [["e-a"]]


@pytest.mark.trio
async def test_a_shared_publish_ends_by_the_deadline_of_every_request_in_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # b and c wait behind a's publish, which ends by a's deadline (5 s), before theirs:
    # they wait with no timer of their own. The publish that takes them both (b's) ends
    # by the earlier of their deadlines, c's, not by b's own.
    log = FakeEventLog(hold=True)
    commit, metrics = make(log, inflight=1, timeout=5.0)
    start = trio.current_time()
    async with anyio.create_task_group() as tg:
        requests = Requests(tg, commit)
        await requests.start("a", ev("e-a"))
        await requests.start("b", ev("e-b"), deadline=start + 9.0)
        await requests.start("c", ev("e-c"), deadline=start + 5.5)
        log.held[0].set()  # a acked; b publishes b and c, and that publish hangs
    assert requests.answers["a"] == Outcome(1, 0)
    for name in "bc":
        answer = requests.answers[name]
        assert isinstance(answer, ServiceUnavailable) and "no publish ack" in str(answer)
        assert requests.answered_at[name] == pytest.approx(start + 5.5)
    assert log.calls == 2 and accepted_total(metrics) == 1


@pytest.mark.anyio
async def test_the_recent_id_set_is_bounded() -> None:
    recent = RecentIds(capacity=4)
    commit = GroupCommit(
        FakeEventLog(), Metrics(), inflight=1, max_bytes=1 << 20, recent=recent, publish_timeout=1
    )
    for i in range(10):
        await commit.submit("facebook", [ev(f"e{i}")], correlation_id="c", received_at=NOW)
        assert len(recent) <= 4
    assert "e9" in recent and "e0" not in recent
