"""The Prometheus metrics of one sluice process (one registry per process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_BATCH_SIZES = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Every metric sluice exports, on a registry of its own (tests make fresh ones)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
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

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
