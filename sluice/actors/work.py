"""What flows from the consumers through the dedup guard to the batch writer."""

from __future__ import annotations

from dataclasses import dataclass, field

from sluice.ports import DeadLetter, Delivery, EventRow


@dataclass(slots=True)
class Work:
    """One JetStream message, decoded: ack `delivery` once `rows` and `dead` are stored."""

    source: str
    delivery: Delivery
    rows: list[EventRow]
    dead: list[DeadLetter] = field(default_factory=list)
    duplicates: int = 0  # rows already dropped upstream as known to be stored
    correlation_id: str | None = None
    # Every request's id when the message holds several requests' events (group commit).
    request_ids: tuple[str, ...] = ()

    @property
    def correlation_ids(self) -> tuple[str, ...]:
        """The correlation ids of this message's events, each once, for log lines."""
        if self.request_ids:
            return self.request_ids
        return (self.correlation_id,) if self.correlation_id else ()
