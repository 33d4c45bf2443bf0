"""Stage: what the stream layout costs nats-server, alone (no HTTP, no PostgreSQL).

    python bench/stages/streams.py                       # every layout, 3 rounds
    python bench/stages/streams.py --rounds 2 wq-sources limits
    python bench/stages/streams.py --envelopes 2000      # fewer messages

One nats-server (the embedded one, `sync_interval: always`, as sluice ships) per
layout and round. Envelopes of arrays of 100 (~50 events of one source each, ~19 KB,
with their Nats-Msg-Id) are published by 16 concurrent publishers while two pull
consumers (one per source, as sluice's) fetch 64 at a time and ack each message once
~100 are held (as the writer does after a commit). Measured: nats-server CPU seconds
per 100k events and its peak RSS, from the first publish until every message is acked
and, with a history, copied into it. Layouts alternate within a round, so load on the
shared machine falls on all of them alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import nats
import psutil
from nats.js import api

from bench._support import BenchNats
from bench.stages._common import tree_cpu
from bench.stages.bus import _envelopes

SOURCES = ("facebook", "tiktok")
WORK, HISTORY = "EVENTS", "EVENTS_HISTORY"
GiB = 2**30


def _work(retention: api.RetentionPolicy, **extra: Any) -> api.StreamConfig:
    return api.StreamConfig(
        name=WORK,
        subjects=["events.>"],
        retention=retention,
        storage=api.StorageType.FILE,
        max_age=7 * 24 * 3600.0,
        max_bytes=4 * GiB,
        discard=api.DiscardPolicy.NEW,
        duplicate_window=120.0,
        **extra,
    )


def _history(**extra: Any) -> api.StreamConfig:
    fields: dict[str, Any] = {
        "sources": [api.StreamSource(name=WORK)],
        "duplicate_window": 120.0,
        **extra,
    }
    return api.StreamConfig(
        name=HISTORY,
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        max_age=7 * 24 * 3600.0,
        max_bytes=16 * GiB,
        discard=api.DiscardPolicy.OLD,
        **fields,
    )


WQ = api.RetentionPolicy.WORK_QUEUE
LAYOUTS: dict[str, Callable[[], list[api.StreamConfig]]] = {
    # sluice before issue 12: one limits stream, nothing deleted on ack.
    "limits": lambda: [_work(api.RetentionPolicy.LIMITS)],
    # The work queue alone: what deleting on ack costs.
    "wq": lambda: [_work(WQ)],
    # sluice since issue 12: the work queue, and a history that sources it.
    "wq-sources": lambda: [_work(WQ), _history()],
    "wq-sources-dup1s": lambda: [_work(WQ), _history(duplicate_window=1.0)],
    "wq-mirror": lambda: [
        _work(WQ),
        _history(sources=None, mirror=api.StreamSource(name=WORK), duplicate_window=None),
    ],
    "interest-sources": lambda: [_work(api.RetentionPolicy.INTEREST), _history()],
}


class PeakRss:
    def __init__(self, pid: int) -> None:
        self._proc = psutil.Process(pid)
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            self.peak = max(self.peak, self._proc.memory_info().rss / 2**20)
            if self._stop.wait(0.1):
                return


async def _measure(
    url: str, pid: int, layout: str, payloads: list[tuple[str, bytes, int]], total: int
) -> dict[str, Any]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    configs = LAYOUTS[layout]()
    for config in configs:
        await js.add_stream(config)
    history = next((c for c in configs if c.name == HISTORY), None)
    if history is not None:  # its consumer attaches a moment after both exist
        while (await js.stream_info(WORK)).state.consumer_count == 0:
            await asyncio.sleep(0.05)
    subs = []
    for source in SOURCES:
        durable = f"sluice-{source}"
        await js.add_consumer(
            WORK,
            api.ConsumerConfig(
                durable_name=durable,
                filter_subject=f"events.{source}",
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=30,
                max_ack_pending=1000,
            ),
        )
        subs.append(await js.pull_subscribe_bind(durable=durable, stream=WORK))

    acked = 0
    done = asyncio.Event()

    async def publisher(start: int) -> None:
        for i in range(start, total, 16):
            source, payload, _ = payloads[i % len(payloads)]
            await js.publish(
                f"events.{source}", payload, stream=WORK, headers={"Nats-Msg-Id": uuid.uuid4().hex}
            )

    async def consumer(sub: Any) -> None:
        nonlocal acked
        held: list[Any] = []
        while not done.is_set():
            try:
                msgs = await sub.fetch(64, timeout=0.2)
            except (nats.errors.TimeoutError, TimeoutError):
                msgs = []
            held += msgs
            if len(held) >= 100 or (held and not msgs):
                for m in held:
                    await m.ack()
                acked += len(held)
                held = []
            if acked >= total:
                done.set()

    events = sum(n for _, _, n in payloads) * total // len(payloads)
    with PeakRss(pid) as rss:
        cpu0, t0 = tree_cpu(pid), time.perf_counter()
        await asyncio.gather(*(publisher(i) for i in range(16)), *(consumer(s) for s in subs))
        await nc.flush()
        deadline = time.perf_counter() + 10
        while True:  # acks applied, history caught up
            work = (await js.stream_info(WORK)).state
            infos = [await js.consumer_info(WORK, f"sluice-{s}") for s in SOURCES]
            unacked = sum(int(i.num_ack_pending) for i in infos)
            copied = (await js.stream_info(HISTORY)).state.messages if history else total
            emptied = work.messages == 0 or layout == "limits" or time.perf_counter() > deadline
            if unacked == 0 and copied >= total and emptied:
                break
            await asyncio.sleep(0.02)
        wall, cpu = time.perf_counter() - t0, tree_cpu(pid) - cpu0
    await nc.close()
    return {
        "layout": layout,
        "messages": total,
        "events": events,
        "wall_s": round(wall, 2),
        "nats_cpu_s": round(cpu, 2),
        "nats_cpu_s_per_100k_events": round(cpu / events * 1e5, 3),
        "nats_cpu_us_per_message": round(cpu / total * 1e6),
        "nats_peak_rss_mb": round(rss.peak, 1),
        "work_messages_left": int(work.messages),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("layouts", nargs="*", default=list(LAYOUTS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--envelopes", type=int, default=6000, help="messages per run")
    args = parser.parse_args()
    chunks = _envelopes(200)
    payloads = [
        (
            c.payload.split(b'"source":"', 1)[1].split(b'"', 1)[0].decode(),
            c.payload,
            len(c.event_ids),
        )
        for c in chunks
    ]
    print(
        f"# load {os.getloadavg()}, {len(payloads)} distinct envelopes, "
        f"{sum(len(p) for _, p, _ in payloads) // len(payloads)} B each",
        flush=True,
    )
    for _ in range(args.rounds):
        for layout in args.layouts:
            with tempfile.TemporaryDirectory(prefix="sluice-streams-") as tmp:
                server = BenchNats(Path(tmp))
                url = server.start()
                try:
                    assert server.pid is not None
                    out = asyncio.run(_measure(url, server.pid, layout, payloads, args.envelopes))
                finally:
                    server.stop()
            out["load_1m"] = round(os.getloadavg()[0], 2)
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
