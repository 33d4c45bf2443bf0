"""The Prometheus metrics of one sluice process (one registry per process).

Every process exports its own registry on its own `/metrics`; nothing is shared between
processes (no multiprocess files). Prometheus scrapes each one and sums.

Counting is taken from JetStream and PostgreSQL, not from this process's memory (see
`sluice.actors.metrics` and the README's metrics table): the work stream holds a
message until it is written (`stream_messages`), the consumer's ack floor
(`consumer_ack_floor`) says up to which stream sequence every message is acked, and
`events_stored_rows` counts the rows in PostgreSQL. In-process counters count each
event once, when its message is acked (a redelivery is not counted again).
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

from sluice.config import mask_secrets

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
        self.events_rate_limited = Counter(
            "events_rate_limited",
            "Events refused at the webhook by a rate limit (429; nothing of the request kept)",
            ["source"],
            registry=r,
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
        self.consumer_ack_floor = Gauge(
            "consumer_ack_floor",
            "Stream sequence up to which the source's consumer has every message acked",
            ["source"],
            registry=r,
        )
        self.consumer_delivered = Gauge(
            "consumer_delivered_seq",
            "Last stream sequence the source's consumer delivered",
            ["source"],
            registry=r,
        )
        self.stream_messages = Gauge(
            "stream_messages",
            "Messages in a JetStream stream (work stream: not yet written; history: kept)",
            ["stream"],
            registry=r,
        )
        self.stream_bytes = Gauge(
            "stream_bytes", "Bytes in a JetStream stream", ["stream"], registry=r
        )
        self.stream_last_seq = Gauge(
            "stream_last_seq",
            "Last sequence of a JetStream stream (messages ever stored in it)",
            ["stream"],
            registry=r,
        )
        self.events_stored_rows = Gauge(
            "events_stored_rows",
            "Rows in PostgreSQL's events table (sampled from the rollups)",
            ["source"],
            registry=r,
        )
        self.messages_held = Gauge(
            "messages_held",
            "JetStream messages this process fetched and has not yet acked, naked or terminated",
            registry=r,
        )
        self.messages_held_bytes = Gauge(
            "messages_held_bytes",
            "Bytes of the messages held (the budget is SLUICE_MAX_HELD_BYTES)",
            registry=r,
        )

    def prime(self, *, sources: Iterable[str], actors: Iterable[str]) -> None:
        """Create the series dashboards read, at zero, so "nothing yet" shows as 0."""
        for source in sources:
            for counter in (
                self.events_accepted,
                self.events_processed,
                self.events_duplicate,
                self.events_dead_lettered,
                self.events_rate_limited,
            ):
                counter.labels(source)
            self.events_failed.labels(source, "store_unavailable")
        for actor in actors:
            self.actor_restarts.labels(actor)

    def exposition(self) -> bytes:
        """The Prometheus text, secrets masked (a label made of what a client sent, such
        as a rejected field's name, could hold one)."""
        return mask_secrets(generate_latest(self.registry).decode()).encode()
