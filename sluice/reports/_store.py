"""What the report endpoints need from storage: the `ReportStore` port and its rows.

`sluice.edges.reports.PgReportStore` implements it over the rollup tables (and raw events
where rollups cannot answer); tests fill it with an in-memory fake. Every method reads one
consistent snapshot and raises `sluice.ports.StoreUnavailable` when the database cannot
be reached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Protocol

__all__ = [
    "AccountTotals",
    "Audience",
    "AudienceRow",
    "CampaignRow",
    "EntityTotal",
    "GroupRow",
    "ReportStore",
    "Scope",
    "SeriesRow",
    "StoredEvent",
    "Totals",
]


@dataclass(frozen=True, slots=True)
class Scope:
    """Which events a report covers: [lo, hi) on their own timestamp (None: open)."""

    lo: datetime | None
    hi: datetime | None
    sources: tuple[str, ...]
    funnel_stage: str | None = None
    event_type: str | None = None
    campaign_id: str | None = None  # only events of this campaign


@dataclass(frozen=True, slots=True)
class GroupRow:
    source: str
    funnel_stage: str | None
    event_type: str | None
    country: str | None
    events: int
    revenue: Decimal
    transactions: int


@dataclass(frozen=True, slots=True)
class CampaignRow:
    source: str
    campaign_id: str
    events: int
    revenue: Decimal
    transactions: int


@dataclass(frozen=True, slots=True)
class SeriesRow:
    bucket: datetime
    events: int
    revenue: Decimal
    transactions: int


@dataclass(frozen=True, slots=True)
class Totals:
    """Counts in scope by (source, stage, type, country); with `campaign_id` in scope,
    only that campaign's events, grouped by source alone (stage, type, country None)."""

    groups: list[GroupRow] = field(default_factory=list)
    campaigns: list[CampaignRow] = field(default_factory=list)  # when asked for
    series: list[SeriesRow] = field(default_factory=list)  # when an interval was given


@dataclass(frozen=True, slots=True)
class AudienceRow:
    """Events in scope by one attribute: dimension 'age' | 'gender' | 'country' | 'city'
    | 'followers' | 'device'; `value` is the bin or value, `country` the city's."""

    source: str
    dimension: str
    value: str
    country: str | None
    events: int
    followers_sum: int | None = None  # on 'followers' rows
    followers_min: int | None = None
    followers_max: int | None = None


@dataclass(frozen=True, slots=True)
class Audience:
    rows: list[AudienceRow]
    users: dict[str, int]  # distinct user ids in scope, per source


@dataclass(frozen=True, slots=True)
class EntityTotal:
    source: str
    key: str
    events: int
    revenue: Decimal
    transactions: int


@dataclass(frozen=True, slots=True)
class AccountTotals:
    by_type: dict[str, int]
    active_users: int


@dataclass(frozen=True, slots=True)
class StoredEvent:
    occurred_at: datetime
    event_id: str
    json: bytes  # the event as stored, with "receivedAt" added


class ReportStore(Protocol):
    async def totals(self, scope: Scope, *, interval: str | None, campaigns: bool) -> Totals:
        """Event counts and revenue in scope; the series in UTC buckets of `interval`
        ('minute' | 'hour' | 'day'); with `campaigns`, also the per-campaign rows."""
        ...

    async def audience(self, scope: Scope) -> Audience: ...

    async def top(self, scope: Scope, *, entity: str, by: str, limit: int) -> list[EntityTotal]:
        """The `limit` users or videos (`entity` 'user' | 'video') with the most events
        (`by` 'events') or revenue ('revenue': only those with a transaction), ties by
        the other measure, then source and key."""
        ...

    async def account(self, account_id: str, lo: datetime, hi: datetime) -> AccountTotals: ...

    async def extent(self) -> tuple[datetime | None, datetime | None]:
        """The timestamps of the first and last stored event (None, None when none is)."""
        ...

    async def event(self, event_id: str) -> bytes | None:
        """The stored event (JSON, with "receivedAt"), or None when unknown."""
        ...

    async def events(
        self,
        *,
        sources: tuple[str, ...],
        event_type: str | None,
        lo: datetime | None,
        hi: datetime | None,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[StoredEvent]:
        """Up to `limit` events in (occurred_at, event_id) order, after the `after` key."""
        ...
