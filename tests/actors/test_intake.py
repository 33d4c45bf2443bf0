"""intake alone: the webhook's part of the drain, within its share of the budget."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from sluice.actors.intake import Intake
from sluice.engine import DrainDeadline
from sluice.http.health import Health
from sluice.http.webhook import RequestsInFlight


@pytest.mark.trio
async def test_it_closes_the_webhook_and_waits_for_the_requests_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    requests, health, deadline = RequestsInFlight(), Health(), DrainDeadline()
    intake = Intake(requests, health, deadline, share=0.4)
    requests.enter()
    async with trio.open_nursery() as nursery:
        await nursery.start(intake.run)
        deadline.begin(30.0)
        intake.request_stop()
        await trio.testing.wait_all_tasks_blocked()
        assert health.draining  # new requests are refused from now on
        await trio.sleep(2.0)
        requests.leave()  # the last request in flight is answered
        start = trio.current_time()
    assert trio.current_time() == start  # intake returned as it was answered


@pytest.mark.trio
async def test_a_hung_request_gets_only_intakes_share_of_the_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    requests, health, deadline = RequestsInFlight(), Health(), DrainDeadline()
    intake = Intake(requests, health, deadline, share=0.4)
    requests.enter()  # never answered
    async with trio.open_nursery() as nursery:
        await nursery.start(intake.run)
        start = trio.current_time()
        deadline.begin(30.0)
        intake.request_stop()
    assert trio.current_time() - start == pytest.approx(12.0)  # 0.4 of 30 s
    assert deadline.remaining() == pytest.approx(18.0)  # left for catch-up and flush
