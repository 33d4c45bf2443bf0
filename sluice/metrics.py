"""The Prometheus metrics of one sluice process (one registry per process).

Every process exports its own registry on its own `/metrics`; nothing is shared between
processes (no multiprocess files). Prometheus scrapes each one and sums.

`events_reconciliation` (gauge) is, for this process:

    events_accepted_total - events_processed_total - events_duplicate_total
      - events_dead_lettered_total - events_in_flight

summed over sources, where `events_in_flight` counts the events this process published
that JetStream has not yet delivered to a consumer, plus the events in messages this
process fetched and has not yet acked (see `sluice.inflight`). Every event is counted
when its message is finished (acked), so a message redelivered after a crash is counted
once. Zero means nothing is missing: in one process (role all) at any time at rest, and
for a deployment split by role as `sum(events_reconciliation)` over its processes.
Positive means events were accepted and are neither stored, duplicate, dead-lettered nor
in flight (lost, or naked back to JetStream and awaiting redelivery). Negative means
events were counted twice (an ack JetStream never got) or finished by a process that did
not accept them, e.g. after a restart or by a worker of a split deployment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from sluice.inflight import InFlight

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

# No `<name>_created` series: a timestamp per labelled counter and histogram doubles what
# Prometheus stores and reads as a count in sum() by name. Process-wide in prometheus_client.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream

_BATCH_SIZES = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Every metric sluice exports, on a registry of its own (tests make fresh ones)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.in_flight = InFlight()
        r = self.registry
        # process_* (CPU, memory, open files) and python_* (version, garbage collector).
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.events_accepted = Counter(
            "events_accepted", "Events made durable in JetStream (2xx)", ["source"], registry=r
        )
        self.events_rejected = Counter(
            "events_rejected", "Events refused at the webhook", ["source", "reason"], registry=r
        )
        self.events_processed = Counter(
            "events_processed", "Events newly stored in PostgreSQL", ["source"], registry=r
        )
        self.events_duplicate = Counter(
            "events_duplicate", "Events dropped as already seen or stored", ["source"], registry=r
        )
        self.events_failed = Counter(
            "events_failed",
            "Events whose storing failed (to be retried)",
            ["source", "reason"],
            registry=r,
        )
        self.events_dead_lettered = Counter(
            "events_dead_lettered", "Events moved to the dead-letter store", ["source"], registry=r
        )
        self.consumer_pending = Gauge(
            "consumer_pending_messages",
            "JetStream messages not yet delivered",
            ["source"],
            registry=r,
        )
        self.consumer_ack_pending = Gauge(
            "consumer_ack_pending",
            "JetStream messages delivered, not yet acked",
            ["source"],
            registry=r,
        )
        self.channel_depth = Gauge(
            "channel_depth", "Items waiting in an in-process channel", ["channel"], registry=r
        )
        self.batch_size = Histogram(
            "batch_size", "Rows per writer transaction", buckets=_BATCH_SIZES, registry=r
        )
        self.envelope_events = Histogram(
            "envelope_events",
            "Events per JetStream message the webhook published",
            buckets=_BATCH_SIZES,
            registry=r,
        )
        self.envelope_requests = Histogram(
            "envelope_requests",
            "Requests sharing one JetStream message the webhook published (group commit)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.publish_ack_seconds = Histogram(
            "publish_ack_seconds",
            "From a webhook's JetStream publish to its ack (nats-server stores and, with"
            " sync_interval: always, fsyncs first), or to its failure; a 2xx waits for it",
            buckets=_LATENCY,
            registry=r,
        )
        self.batch_flush_seconds = Histogram(
            "batch_flush_seconds", "Time to commit one writer batch", buckets=_LATENCY, registry=r
        )
        self.actor_restarts = Counter(
            "actor_restarts", "Actor restarts by the supervisor", ["actor"], registry=r
        )
        self.http_request_duration = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency",
            ["route", "method", "status"],
            buckets=_LATENCY,
            registry=r,
        )
        self.report_duration = Histogram(
            "report_duration_seconds",
            "Report query latency",
            ["report"],
            buckets=_LATENCY,
            registry=r,
        )

        self.dead_letter_queue_size = Gauge(
            "dead_letter_queue_size",
            "Dead letters stored and not yet replayed (sampled from PostgreSQL)",
            registry=r,
        )
        self.events_in_flight = Gauge(
            "events_in_flight",
            "Events accepted here and not yet delivered, or fetched here and not yet acked",
            registry=r,
        )
        self.events_in_flight.set_function(lambda: float(self.in_flight.total))
        self.webhook_duplicates = 0
        """The part of `events_duplicate` the webhook counted (never accepted)."""
        self.events_reconciliation = Gauge(
            "events_reconciliation",
            "accepted - processed - duplicate - dead-lettered - in flight (0: nothing missing)",
            registry=r,
        )
        self.events_reconciliation.set_function(lambda: float(self.reconciliation()))

    def reconciliation(self) -> int:
        """The `events_reconciliation` value now (see the module docstring)."""
        finished = (
            _total(self.events_processed)
            + _total(self.events_duplicate)
            + _total(self.events_dead_lettered)
        )
        # Duplicates the webhook caught were never accepted: they are not owed.
        finished -= self.webhook_duplicates
        return round(_total(self.events_accepted) - finished) - self.in_flight.total

    def prime(self, *, sources: Iterable[str], actors: Iterable[str]) -> None:
        """Create the series dashboards read, at zero, so "nothing yet" shows as 0."""
        for source in sources:
            for counter in (
                self.events_accepted,
                self.events_processed,
                self.events_duplicate,
                self.events_dead_lettered,
            ):
                counter.labels(source)
            self.events_failed.labels(source, "store_unavailable")
        for actor in actors:
            self.actor_restarts.labels(actor)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _total(counter: Counter) -> float:
    """The sum of a counter's `_total` samples over all its label values."""
    return sum(
        sample.value
        for metric in counter.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    )
