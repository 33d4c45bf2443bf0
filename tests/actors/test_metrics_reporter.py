"""The metrics reporter alone: figures from (fake) JetStream and PostgreSQL probes."""

from __future__ import annotations

import pytest

from sluice.actors.metrics import MetricsReporter
from sluice.metrics import Metrics
from sluice.ports import ConsumerFigures, StreamFigures


@pytest.mark.anyio
async def test_samples_streams_consumers_and_stored_rows() -> None:
    metrics = Metrics()

    async def consumer() -> ConsumerFigures:
        return ConsumerFigures(pending=3, ack_pending=2, ack_floor=40, delivered=45)

    async def work() -> StreamFigures:
        return StreamFigures(messages=5, bytes=2000, last_seq=45)

    async def history() -> StreamFigures:
        return StreamFigures(messages=45, bytes=18000, last_seq=45)

    async def broken() -> StreamFigures:
        raise RuntimeError("stream info failed")

    async def rows() -> dict[str, int]:
        return {"facebook": 4000}

    reporter = MetricsReporter(
        metrics,
        channels={},
        consumers={"facebook": consumer},
        streams={"EVENTS": work, "EVENTS_HISTORY": history, "OTHER": broken},
        stored_rows=rows,
        interval=1.0,
    )
    await reporter.sample()
    value = metrics.registry.get_sample_value
    assert value("consumer_ack_floor", {"source": "facebook"}) == 40
    assert value("consumer_delivered_seq", {"source": "facebook"}) == 45
    assert value("consumer_pending_messages", {"source": "facebook"}) == 3
    assert value("stream_messages", {"stream": "EVENTS"}) == 5
    assert value("stream_last_seq", {"stream": "EVENTS_HISTORY"}) == 45
    assert value("stream_bytes", {"stream": "EVENTS_HISTORY"}) == 18000
    assert value("stream_messages", {"stream": "OTHER"}) is None  # a failed probe: skipped
    assert value("events_stored_rows", {"source": "facebook"}) == 4000
