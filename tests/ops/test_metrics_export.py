"""/metrics exports the process and platform collectors, and no `_created` series."""

from __future__ import annotations

import re

from sluice.metrics import Metrics


def exposition_after_some_traffic() -> str:
    m = Metrics()
    m.prime(sources=["facebook"], actors=["ingress"])
    m.events_accepted.labels("facebook").inc(3)
    m.publish_ack_seconds.observe(0.002)
    m.http_request_duration.labels("/webhook", "POST", 202).observe(0.01)
    return m.exposition().decode()


def test_process_and_python_series_are_exported() -> None:
    text = exposition_after_some_traffic()
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "python_info",
        "python_gc_collections_total",
    ):
        assert re.search(rf"^{name}[{{ ]", text, re.M), name


def test_no_created_series() -> None:
    text = exposition_after_some_traffic()
    assert "_created" not in text
    assert 'events_accepted_total{source="facebook"} 3.0' in text


def test_two_registries_in_one_process_do_not_clash() -> None:
    Metrics()
    Metrics()  # the collectors register per registry, not globally
