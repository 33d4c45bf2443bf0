"""Turning what the store returns into the report bodies (pure functions, no I/O)."""

from __future__ import annotations

import base64
import binascii
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Context, Decimal, localcontext
from typing import TYPE_CHECKING, Any

import msgspec

from sluice.sources import MAX_ID_LENGTH

from ._params import BadParam
from ._results import (
    CityCount,
    CountryCount,
    CountryRow,
    DemographicsReport,
    DeviceCount,
    EventGroup,
    EventsReport,
    FacebookAudience,
    FollowerStats,
    FunnelBySource,
    FunnelByType,
    FunnelReport,
    GenderCount,
    RangeCount,
    RevenueByCampaign,
    RevenueBySource,
    RevenuePoint,
    RevenueReport,
    SeriesPoint,
    TiktokAudience,
    TopItem,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterable

    from ._params import EventsQuery
    from ._store import Audience, AudienceRow, CampaignRow, EntityTotal, Totals

__all__ = [
    "AGE_RANGES",
    "FOLLOWER_RANGES",
    "countries",
    "decode_cursor",
    "demographics",
    "encode_cursor",
    "events",
    "funnel",
    "money",
    "revenue",
    "top_campaigns",
    "top_entities",
]

AGE_RANGES = ("<18", "18-24", "25-34", "35-44", "45-54", "55-64", "65+")
FOLLOWER_RANGES = ("0-999", "1k-10k", "10k-100k", "100k-1M", "1M+")
_CENTS = Decimal("0.01")
# Sums and quantize never run out of digits, whatever was stored (amounts are at most 18
# digits, so 1000 digits of precision covers more rows than can exist); the default
# context (28 digits) would round a large sum silently.
_WIDE = Context(prec=1000)
_ZERO = Decimal(0)


def money(amount: Decimal) -> Decimal:
    """Exactly 2 decimal places (half-even, as Python's `f"{amount:.2f}"`)."""
    return amount.quantize(_CENTS, context=_WIDE)


def _ranked(counts: dict[Any, int]) -> list[tuple[Any, int]]:
    """(key, count) by count descending, then key (None last)."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], _key(kv[0])))


def _key(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_key(v) for v in value)
    return (value is None, "" if value is None else value)


def _sum_by(items: Iterable[Any], key: Callable[[Any], Hashable]) -> dict[Any, int]:
    out: dict[Any, int] = defaultdict(int)
    for item in items:
        out[key(item)] += item.events
    return out


# --- events ----------------------------------------------------------------------------

_GROUP_FIELDS = {
    "source": "source",
    "funnelStage": "funnel_stage",
    "eventType": "event_type",
    "country": "country",
}


def events(query: EventsQuery, totals: Totals) -> EventsReport:
    keys = query.group_keys
    attrs = [_GROUP_FIELDS[k] for k in keys]
    counts = _sum_by(totals.groups, lambda g: tuple(getattr(g, a) for a in attrs))
    groups = [
        EventGroup(**dict(zip(attrs, values, strict=True)), count=n)
        for values, n in _ranked(counts)
        if n
    ]
    report = EventsReport(total=sum(g.events for g in totals.groups), groups=groups)
    if query.interval is not None:
        report.series = [
            SeriesPoint(bucket=p.bucket, count=p.events)
            for p in sorted(totals.series, key=lambda p: p.bucket)
            if p.events
        ]
    return report


# --- revenue ---------------------------------------------------------------------------


def revenue(totals: Totals, *, interval: str | None) -> RevenueReport:
    with localcontext(_WIDE):
        return _revenue(totals, interval)


def _revenue(totals: Totals, interval: str | None) -> RevenueReport:
    by_source: dict[str, list[Decimal | int]] = {}
    for g in totals.groups:
        if g.transactions:
            acc = by_source.setdefault(g.source, [_ZERO, 0])
            acc[0] += g.revenue
            acc[1] += g.transactions
    by_campaign: dict[str, list[Decimal | int]] = {}
    for c in totals.campaigns:
        if c.transactions:
            acc = by_campaign.setdefault(c.campaign_id, [_ZERO, 0])
            acc[0] += c.revenue
            acc[1] += c.transactions
    report = RevenueReport(
        total=money(sum((Decimal(v[0]) for v in by_source.values()), _ZERO)),
        transactions=sum(int(v[1]) for v in by_source.values()),
        by_source=[
            RevenueBySource(source=k, revenue=money(Decimal(v[0])), transactions=int(v[1]))
            for k, v in sorted(by_source.items(), key=_by_revenue)
        ],
        by_campaign=[
            RevenueByCampaign(campaign_id=k, revenue=money(Decimal(v[0])), transactions=int(v[1]))
            for k, v in sorted(by_campaign.items(), key=_by_revenue)
        ],
    )
    if interval is not None:
        report.series = [
            RevenuePoint(bucket=p.bucket, revenue=money(p.revenue), transactions=p.transactions)
            for p in sorted(totals.series, key=lambda p: p.bucket)
            if p.transactions
        ]
    return report


def _by_revenue(item: tuple[str, list[Decimal | int]]) -> tuple[Decimal, int, str]:
    key, (amount, transactions) = item
    return (Decimal(amount).copy_negate(), -int(transactions), key)


# --- demographics ----------------------------------------------------------------------


def demographics(audience: Audience, sources: tuple[str, ...]) -> DemographicsReport:
    rows: dict[tuple[str, str], list[AudienceRow]] = defaultdict(list)
    for r in audience.rows:
        rows[r.source, r.dimension].append(r)

    def fb(dimension: str) -> list[AudienceRow]:
        return rows["facebook", dimension]

    def tt(dimension: str) -> list[AudienceRow]:
        return rows["tiktok", dimension]

    report = DemographicsReport()
    if "facebook" in sources:
        ages = _sum_by(fb("age"), lambda r: r.value)
        report.facebook = FacebookAudience(
            users=audience.users.get("facebook", 0),
            age=[RangeCount(range=b, count=ages.get(b, 0)) for b in AGE_RANGES],
            gender=[
                GenderCount(gender=k, count=n)
                for k, n in _ranked(_sum_by(fb("gender"), lambda r: r.value))
            ],
            countries=[
                CountryCount(country=k, count=n)
                for k, n in _ranked(_sum_by(fb("country"), lambda r: r.value))
            ],
            cities=[
                CityCount(city=k[0], country=k[1], count=n)
                for k, n in _ranked(_sum_by(fb("city"), lambda r: (r.value, r.country)))
            ],
        )
    if "tiktok" in sources:
        bins = tt("followers")
        counts = _sum_by(bins, lambda r: r.value)
        n = sum(r.events for r in bins)
        total = sum(r.followers_sum or 0 for r in bins)
        report.tiktok = TiktokAudience(
            users=audience.users.get("tiktok", 0),
            followers=FollowerStats(
                min=min(
                    (r.followers_min for r in bins if r.followers_min is not None), default=None
                ),
                max=max(
                    (r.followers_max for r in bins if r.followers_max is not None), default=None
                ),
                avg=total / n if n else None,  # int / int: correctly rounded, as Python's mean
                buckets=[RangeCount(range=b, count=counts.get(b, 0)) for b in FOLLOWER_RANGES],
            ),
            countries=[
                CountryCount(country=k, count=c)
                for k, c in _ranked(_sum_by(tt("country"), lambda r: r.value))
            ],
            devices=[
                DeviceCount(device=k, count=c)
                for k, c in _ranked(_sum_by(tt("device"), lambda r: r.value))
            ],
        )
    return report


# --- funnel, countries, top ------------------------------------------------------------


def funnel(totals: Totals) -> FunnelReport:
    stages: dict[str, dict[str, int]] = defaultdict(lambda: {"top": 0, "bottom": 0})
    by_type: dict[tuple[str, str, str], int] = defaultdict(int)
    for g in totals.groups:
        if g.funnel_stage in ("top", "bottom") and g.event_type is not None and g.events:
            stages[g.source][g.funnel_stage] += g.events
            by_type[g.source, g.funnel_stage, g.event_type] += g.events
    top = sum(s["top"] for s in stages.values())
    bottom = sum(s["bottom"] for s in stages.values())
    return FunnelReport(
        top=top,
        bottom=bottom,
        conversion_rate=_rate(bottom, top),
        by_source=[
            FunnelBySource(
                source=source,
                top=s["top"],
                bottom=s["bottom"],
                conversion_rate=_rate(s["bottom"], s["top"]),
            )
            for source, s in sorted(stages.items())
        ],
        by_event_type=[
            FunnelByType(source=k[0], funnel_stage=k[1], event_type=k[2], count=n)
            for k, n in _ranked(by_type)
        ],
    )


def _rate(bottom: int, top: int) -> float | None:
    return bottom / top if top else None


def countries(totals: Totals, limit: int | None) -> list[CountryRow]:
    acc: dict[str, list[Any]] = {}
    for g in totals.groups:
        if g.country is not None and g.events:
            entry = acc.setdefault(g.country, [0, _ZERO])
            entry[0] += g.events
            entry[1] = _WIDE.add(entry[1], g.revenue)
    ranked = sorted(acc.items(), key=lambda kv: (-kv[1][0], kv[0]))
    return [CountryRow(country=k, events=v[0], revenue=money(v[1])) for k, v in ranked[:limit]]


def top_campaigns(rows: list[CampaignRow], *, by: str, limit: int) -> list[TopItem]:
    acc: dict[tuple[str, str], list[Any]] = {}
    for r in rows:
        entry = acc.setdefault((r.source, r.campaign_id), [0, _ZERO, 0])
        entry[0] += r.events
        entry[1] = _WIDE.add(entry[1], r.revenue)
        entry[2] += r.transactions
    items = [
        TopItem(source=k[0], campaign_id=k[1], events=v[0], revenue=money(v[1]), transactions=v[2])
        for k, v in acc.items()
        if (v[2] if by == "revenue" else v[0])
    ]
    items.sort(key=_rank(by))
    return items[:limit]


def top_entities(rows: list[EntityTotal], *, entity: str, by: str) -> list[TopItem]:
    field = {"user": "user_id", "video": "video_id"}[entity]
    items = [
        TopItem(
            source=r.source,
            events=r.events,
            revenue=money(r.revenue),
            transactions=r.transactions,
            **{field: r.key},
        )
        for r in rows
    ]
    items.sort(key=_rank(by))  # the store ranked them already; this pins the tie order
    return items


def _rank(by: str) -> Callable[[TopItem], tuple[Any, ...]]:
    def key(item: TopItem) -> tuple[Any, ...]:
        ident = next(
            v for v in (item.campaign_id, item.user_id, item.video_id) if isinstance(v, str)
        )
        if by == "revenue":
            return (item.revenue.copy_negate(), -item.events, item.source, ident)
        return (-item.events, item.revenue.copy_negate(), item.source, ident)

    return key


# --- cursors ---------------------------------------------------------------------------

_cursor_encoder = msgspec.json.Encoder()
_cursor_decoder = msgspec.json.Decoder(tuple[datetime, str])


def encode_cursor(occurred_at: datetime, event_id: str) -> str:
    raw = _cursor_encoder.encode((occurred_at, event_id))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raises BadParam("cursor") for anything `encode_cursor` did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        occurred_at, event_id = _cursor_decoder.decode(raw)
    except (binascii.Error, ValueError, RecursionError, msgspec.DecodeError):
        raise BadParam("cursor", "not a cursor from a previous page") from None
    if not event_id or len(event_id) > MAX_ID_LENGTH or "\x00" in event_id:
        raise BadParam("cursor", "not a cursor from a previous page")
    if occurred_at.tzinfo is None:
        return occurred_at.replace(tzinfo=UTC), event_id
    try:
        return occurred_at.astimezone(UTC), event_id
    except OverflowError:  # an offset that moves it out of datetime's range
        raise BadParam("cursor", "not a cursor from a previous page") from None
