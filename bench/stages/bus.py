"""Stages: JetStream publish (ingress side) and consume (fetch, decode, ack).

Envelopes of 100 events against nats-server with `sync_interval: always` (what sluice
ships) and with the default interval. Client CPU is this process; server CPU is
nats-server's, both per event.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench._support import BenchNats
from bench.stages._common import show, tree_cpu, us
from sluice import envelope
from sluice.actors.consumer import Consumer
from sluice.config import Settings
from sluice.edges.bus import JetStreamBus
from sluice.publish.bodies import BodyMaker
from sluice.sources import validate_body

PER_ENVELOPE = 100


def _envelopes(n: int) -> list[envelope.Chunk]:
    maker = BodyMaker(seed=2)
    now = datetime.now(UTC)
    chunks = []
    while len(chunks) < n:
        validated = validate_body(maker.make(PER_ENVELOPE).body)
        for source, events in validated.by_source.items():
            pairs = [(e.event_id, e.raw) for e in events]
            for chunk in envelope.encode(source, pairs, received_at=now, max_bytes=2**20):
                chunks.append(dataclasses.replace(chunk, payload=chunk.payload))
    return chunks[:n]


async def _measure(nats_url: str, server_pid: int, n: int, concurrency: int) -> dict[str, Any]:
    settings = Settings(nats_url=nats_url, sources=("facebook", "tiktok"), fetch_batch=64)
    chunks = _envelopes(n)
    events = sum(len(c.event_ids) for c in chunks)
    async with JetStreamBus.connect(settings) as bus:
        queue = list(enumerate(chunks))

        async def publisher() -> None:
            while queue:
                _, chunk = queue.pop()
                source = "facebook" if b'"source":"facebook"' in chunk.payload[:60] else "tiktok"
                await bus.publish(source, chunk.payload, msg_id=chunk.msg_id, headers={})

        s0, c0, w0 = tree_cpu(server_pid), time.process_time(), time.perf_counter()
        await asyncio.gather(*(publisher() for _ in range(concurrency)))
        pub_wall, pub_cpu = time.perf_counter() - w0, time.process_time() - c0
        pub_server = tree_cpu(server_pid) - s0

        got = 0
        s0, c0, w0 = tree_cpu(server_pid), time.process_time(), time.perf_counter()
        for source in settings.sources:
            sub = await bus.subscribe(source)
            consumer = Consumer(source, bus.subscribe, None, batch=64, fetch_timeout=0.5)  # type: ignore[arg-type]
            while True:
                deliveries = await sub.fetch(64, 0.5)
                if not deliveries:
                    break
                for d in deliveries:
                    work = consumer.decode(d)
                    got += len(work.rows)
                    await d.ack()
        con_wall, con_cpu = time.perf_counter() - w0, time.process_time() - c0
        con_server = tree_cpu(server_pid) - s0
    return {
        "envelopes": n,
        "events": events,
        "publish_msgs_per_s": round(n / pub_wall),
        "publish_events_per_s": round(events / pub_wall),
        "publish_client_cpu_us_per_event": us(pub_cpu, events),
        "publish_server_cpu_us_per_event": us(pub_server, events),
        "consume_events_per_s": round(got / con_wall),
        "consume_client_cpu_us_per_event": us(con_cpu, got),
        "consume_server_cpu_us_per_event": us(con_server, got),
    }


def run(quick: bool = False) -> dict[str, Any]:
    n = 300 if quick else 1500
    out: dict[str, Any] = {}
    for sync in ("always", "default"):
        with tempfile.TemporaryDirectory(prefix="sluice-stage-") as tmp:
            server = BenchNats(Path(tmp), sync=sync)
            url = server.start()
            try:
                assert server.pid is not None
                out[f"sync_{sync}"] = asyncio.run(_measure(url, server.pid, n, concurrency=8))
            finally:
                server.stop()
    return out


if __name__ == "__main__":
    show("publish+consume", run("--quick" in sys.argv))
