"""Stage: validation (ingress) and re-validation into rows (consumer), plus envelopes."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.stages._common import show, timed, us
from sluice import envelope
from sluice.publish.bodies import BodyMaker
from sluice.sources import parse_event, validate_body


def run(quick: bool = False) -> dict[str, Any]:
    n_bodies = 50 if quick else 200
    maker = BodyMaker(seed=1)
    arrays = [maker.make(100).body for _ in range(n_bodies)]
    singles = [maker.make(1, bare=True).body for _ in range(n_bodies * 10)]
    events = n_bodies * 100
    wall, cpu = timed(lambda: [validate_body(b) for b in arrays])
    single_wall, _ = timed(lambda: [validate_body(b) for b in singles])
    validated = [validate_body(b) for b in arrays]
    now = datetime.now(UTC)
    pairs = [(e.event_id, e.raw) for v in validated for evs in v.by_source.values() for e in evs]
    enc_wall, _ = timed(
        lambda: [
            list(envelope.encode("facebook", pairs[i : i + 100], received_at=now, max_bytes=2**20))
            for i in range(0, len(pairs), 100)
        ]
    )
    payloads = [
        c.payload
        for i in range(0, len(pairs), 100)
        for c in envelope.encode("facebook", pairs[i : i + 100], received_at=now, max_bytes=2**20)
    ]
    dec_wall, _ = timed(lambda: [envelope.decode(p) for p in payloads])
    raws = [(e.source, e.raw) for v in validated for evs in v.by_source.values() for e in evs]
    parse_wall, _ = timed(
        lambda: [parse_event(s, r, received_at=now, correlation_id="c") for s, r in raws]
    )
    return {
        "validate_body_array100_us_per_event": us(wall, events),
        "validate_body_array100_cpu_us_per_event": us(cpu, events),
        "validate_body_single_us_per_request": us(single_wall, len(singles)),
        "envelope_encode_us_per_event": us(enc_wall, len(pairs)),
        "envelope_decode_us_per_event": us(dec_wall, len(pairs)),
        "parse_event_us_per_event": us(parse_wall, len(raws)),
    }


if __name__ == "__main__":
    show("validation", run("--quick" in sys.argv))
