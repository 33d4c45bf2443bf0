"""The JSON bodies of the report endpoints, as msgspec Structs (encoded and documented).

Money is a `Decimal` quantized to 2 places, encoded as a string ("1234.50"); instants are
UTC ("2026-11-23T10:00:00Z"). Lists are ordered by their count (or revenue) descending,
then by their keys, except fixed bins (age, followers), which come in their own order.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

__all__ = [
    "AccountSummary",
    "CityCount",
    "CountryCount",
    "CountryRow",
    "DemographicsReport",
    "DeviceCount",
    "ErrorBody",
    "EventGroup",
    "EventPage",
    "EventsReport",
    "Extent",
    "FacebookAudience",
    "FollowerStats",
    "FunnelBySource",
    "FunnelByType",
    "FunnelReport",
    "GenderCount",
    "RangeCount",
    "RevenueByCampaign",
    "RevenueBySource",
    "RevenuePoint",
    "RevenueReport",
    "SeriesPoint",
    "TiktokAudience",
    "TopItem",
    "TypeCount",
]


class _Body(msgspec.Struct, rename="camel", kw_only=True):
    pass


class ErrorBody(_Body, kw_only=True):
    error: str
    field: str | UnsetType = UNSET  # the query parameter at fault


class EventGroup(_Body, kw_only=True):
    """Only the keys named in `groupBy` are present."""

    source: str | UnsetType = UNSET
    funnel_stage: str | UnsetType | None = UNSET
    event_type: str | UnsetType = UNSET
    country: str | UnsetType | None = UNSET
    count: int


class SeriesPoint(_Body, kw_only=True):
    bucket: datetime
    count: int


class EventsReport(_Body, kw_only=True):
    total: int
    groups: list[EventGroup]
    series: list[SeriesPoint] | UnsetType = UNSET  # only with `interval`


class RevenueBySource(_Body, kw_only=True):
    source: str
    revenue: Decimal
    transactions: int


class RevenueByCampaign(_Body, kw_only=True):
    campaign_id: str
    revenue: Decimal
    transactions: int


class RevenuePoint(_Body, kw_only=True):
    bucket: datetime
    revenue: Decimal
    transactions: int


class RevenueReport(_Body, kw_only=True):
    total: Decimal
    transactions: int
    by_source: list[RevenueBySource]
    by_campaign: list[RevenueByCampaign]
    series: list[RevenuePoint] | UnsetType = UNSET  # only with `interval`


class RangeCount(_Body, kw_only=True):
    range: str
    count: int


class GenderCount(_Body, kw_only=True):
    gender: str
    count: int


class CountryCount(_Body, kw_only=True):
    country: str
    count: int


class CityCount(_Body, kw_only=True):
    city: str
    country: str | None
    count: int


class DeviceCount(_Body, kw_only=True):
    device: str
    count: int


class FacebookAudience(_Body, kw_only=True):
    users: int
    age: list[RangeCount]
    gender: list[GenderCount]
    countries: list[CountryCount]
    cities: list[CityCount]


class FollowerStats(_Body, kw_only=True):
    """Over the events in range (each carries its user's follower count then)."""

    min: int | None
    max: int | None
    avg: float | None
    buckets: list[RangeCount]


class TiktokAudience(_Body, kw_only=True):
    users: int
    followers: FollowerStats
    countries: list[CountryCount]
    devices: list[DeviceCount]


class DemographicsReport(_Body, kw_only=True):
    """Only the requested source's key when `source` is given."""

    facebook: FacebookAudience | UnsetType = UNSET
    tiktok: TiktokAudience | UnsetType = UNSET


class FunnelBySource(_Body, kw_only=True):
    source: str
    top: int
    bottom: int
    conversion_rate: float | None


class FunnelByType(_Body, kw_only=True):
    source: str
    funnel_stage: str
    event_type: str
    count: int


class FunnelReport(_Body, kw_only=True):
    top: int
    bottom: int
    conversion_rate: float | None  # bottom / top; null when top is 0
    by_source: list[FunnelBySource]
    by_event_type: list[FunnelByType]


class CountryRow(_Body, kw_only=True):
    country: str
    events: int
    revenue: Decimal


class TopItem(_Body, kw_only=True):
    """One of campaignId, userId, videoId, after the requested entity."""

    source: str
    campaign_id: str | UnsetType = UNSET
    user_id: str | UnsetType = UNSET
    video_id: str | UnsetType = UNSET
    events: int
    revenue: Decimal
    transactions: int


class TypeCount(_Body, kw_only=True):
    type: str
    count: int


class AccountSummary(_Body, kw_only=True):
    account_id: str
    from_: datetime = msgspec.field(name="from")
    to: datetime
    total: int
    active_users: int  # distinct user_id
    by_type: list[TypeCount]


class Extent(_Body, kw_only=True):
    """The timestamps of the first and last stored event; null when none is stored."""

    first: datetime | None
    last: datetime | None


class EventPage(_Body, kw_only=True):
    """Each event as stored (the publisher's JSON) plus `receivedAt`."""

    events: list[dict[str, Any]]
    next_cursor: str | None  # null on the last page
