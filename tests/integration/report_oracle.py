"""The reports computed in plain Python over a list of distinct events (dicts as sent).

Written from the contract (issue 3, README "Reports"), independently of sluice.reports, so
the property test compares two implementations. Orders follow the documented rules:
counts descending, then keys ascending with null last; fixed bins in their own order.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

AGE_BINS = ["<18", "18-24", "25-34", "35-44", "45-54", "55-64", "65+"]
FOLLOWER_BINS = ["0-999", "1k-10k", "10k-100k", "100k-1M", "1M+"]
REVENUE_TYPES = {("facebook", "checkout.complete"), ("tiktok", "purchase")}
KEY_OF = {"source": "source", "funnelStage": "funnelStage", "eventType": "eventType"}

Event = dict[str, Any]


def at(event: Event) -> datetime:
    moment = datetime.fromisoformat(event["timestamp"])
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def select(
    events: Iterable[Event], lo: datetime | None, hi: datetime | None, source: str | None
) -> list[Event]:
    sources = {source} if source else {"facebook", "tiktok"}
    return [
        e
        for e in events
        if e.get("source") in sources and (lo is None or at(e) >= lo) and (hi is None or at(e) < hi)
    ]


def country(e: Event) -> str | None:
    if e["source"] == "facebook":
        return str(e["data"]["user"]["location"]["country"])
    return e["data"]["engagement"].get("country") if e["funnelStage"] == "top" else None


def revenue(e: Event) -> Decimal | None:
    amount = e["data"]["engagement"].get("purchaseAmount")
    if (e["source"], e["eventType"]) in REVENUE_TYPES and amount is not None:
        return Decimal(str(amount))
    return None


def money(amount: Decimal) -> str:
    return f"{amount:.2f}"


def _null_last(value: Any) -> tuple[bool, Any]:
    return (value is None, "" if value is None else value)


def ranked(counts: dict[Any, int]) -> list[tuple[Any, int]]:
    def key(kv: tuple[Any, int]) -> tuple[Any, ...]:
        k = kv[0] if isinstance(kv[0], tuple) else (kv[0],)
        return (-kv[1], *(_null_last(v) for v in k))

    return sorted(counts.items(), key=key)


def truncate(moment: datetime, interval: str) -> datetime:
    if interval == "day":
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if interval == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(second=0, microsecond=0)


def iso(moment: datetime) -> str:
    text = moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return text


# --- the reports -----------------------------------------------------------------------


def events_report(
    events: list[Event],
    group_by: list[str],
    interval: str | None,
    funnel_stage: str | None = None,
    event_type: str | None = None,
) -> dict[str, Any]:
    chosen = [
        e
        for e in events
        if (funnel_stage is None or e["funnelStage"] == funnel_stage)
        and (event_type is None or e["eventType"] == event_type)
    ]

    def value(e: Event, k: str) -> Any:
        return country(e) if k == "country" else e[KEY_OF[k]]

    counts = Counter(tuple(value(e, k) for k in group_by) for e in chosen)
    body: dict[str, Any] = {
        "total": len(chosen),
        "groups": [
            {**dict(zip(group_by, keys, strict=True)), "count": n} for keys, n in ranked(counts)
        ],
    }
    if interval:
        series = Counter(truncate(at(e), interval) for e in chosen)
        body["series"] = [{"bucket": iso(b), "count": series[b]} for b in sorted(series)]
    return body


def revenue_report(
    events: list[Event], interval: str | None, campaign_id: str | None = None
) -> dict[str, Any]:
    paid = [
        e
        for e in events
        if revenue(e) is not None
        and (campaign_id is None or e["data"]["engagement"].get("campaignId") == campaign_id)
    ]

    def table(key: str, of: Any) -> list[dict[str, Any]]:
        acc: dict[str, list[Any]] = defaultdict(lambda: [Decimal(0), 0])
        for e in paid:
            k = of(e)
            if k is not None:
                acc[k][0] += revenue(e)
                acc[k][1] += 1
        rows = sorted(acc.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
        return [{key: k, "revenue": money(v[0]), "transactions": v[1]} for k, v in rows]

    body: dict[str, Any] = {
        "total": money(sum((revenue(e) or Decimal(0) for e in paid), Decimal(0))),
        "transactions": len(paid),
        "bySource": table("source", lambda e: e["source"]),
        "byCampaign": table("campaignId", lambda e: e["data"]["engagement"].get("campaignId")),
    }
    if interval:
        acc: dict[datetime, list[Any]] = defaultdict(lambda: [Decimal(0), 0])
        for e in paid:
            acc[truncate(at(e), interval)][0] += revenue(e)
            acc[truncate(at(e), interval)][1] += 1
        body["series"] = [
            {"bucket": iso(b), "revenue": money(v[0]), "transactions": v[1]}
            for b, v in sorted(acc.items())
        ]
    return body


def age_bin(age: int) -> str:
    for upper, name in ((18, "<18"), (25, "18-24"), (35, "25-34"), (45, "35-44")):
        if age < upper:
            return name
    return "45-54" if age < 55 else "55-64" if age < 65 else "65+"


def follower_bin(n: int) -> str:
    if n < 1000:
        return "0-999"
    if n < 10_000:
        return "1k-10k"
    if n < 100_000:
        return "10k-100k"
    return "100k-1M" if n < 1_000_000 else "1M+"


def demographics_report(events: list[Event], source: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    fb = [e for e in events if e["source"] == "facebook"]
    tt = [e for e in events if e["source"] == "tiktok"]
    if source in (None, "facebook"):
        ages = Counter(age_bin(e["data"]["user"]["age"]) for e in fb)
        body["facebook"] = {
            "users": len({e["data"]["user"]["userId"] for e in fb}),
            "age": [{"range": b, "count": ages[b]} for b in AGE_BINS],
            "gender": [
                {"gender": k, "count": n}
                for k, n in ranked(Counter(e["data"]["user"]["gender"] for e in fb))
            ],
            "countries": [
                {"country": k, "count": n}
                for k, n in ranked(Counter(e["data"]["user"]["location"]["country"] for e in fb))
            ],
            "cities": [
                {"city": k[0], "country": k[1], "count": n}
                for k, n in ranked(
                    Counter((e["data"]["user"]["location"]["city"], country(e)) for e in fb)
                )
            ],
        }
    if source in (None, "tiktok"):
        followers = [e["data"]["user"]["followers"] for e in tt]
        bins = Counter(follower_bin(n) for n in followers)
        top = [e for e in tt if e["funnelStage"] == "top"]
        body["tiktok"] = {
            "users": len({e["data"]["user"]["userId"] for e in tt}),
            "followers": {
                "min": min(followers, default=None),
                "max": max(followers, default=None),
                "avg": sum(followers) / len(followers) if followers else None,
                "buckets": [{"range": b, "count": bins[b]} for b in FOLLOWER_BINS],
            },
            "countries": [
                {"country": k, "count": n}
                for k, n in ranked(Counter(e["data"]["engagement"]["country"] for e in top))
            ],
            "devices": [
                {"device": k, "count": n}
                for k, n in ranked(Counter(e["data"]["engagement"]["device"] for e in top))
            ],
        }
    return body


def funnel_report(events: list[Event]) -> dict[str, Any]:
    def rate(bottom: int, top: int) -> float | None:
        return bottom / top if top else None

    stages = Counter((e["source"], e["funnelStage"]) for e in events)
    top = sum(n for (_, s), n in stages.items() if s == "top")
    bottom = sum(n for (_, s), n in stages.items() if s == "bottom")
    sources = sorted({e["source"] for e in events})
    return {
        "top": top,
        "bottom": bottom,
        "conversionRate": rate(bottom, top),
        "bySource": [
            {
                "source": s,
                "top": stages[s, "top"],
                "bottom": stages[s, "bottom"],
                "conversionRate": rate(stages[s, "bottom"], stages[s, "top"]),
            }
            for s in sources
        ],
        "byEventType": [
            {"source": k[0], "funnelStage": k[1], "eventType": k[2], "count": n}
            for k, n in ranked(
                Counter((e["source"], e["funnelStage"], e["eventType"]) for e in events)
            )
        ],
    }


def countries_report(events: list[Event], limit: int | None) -> list[dict[str, Any]]:
    acc: dict[str, list[Any]] = defaultdict(lambda: [0, Decimal(0)])
    for e in events:
        c = country(e)
        if c is not None:
            acc[c][0] += 1
            acc[c][1] += revenue(e) or 0
    rows = sorted(acc.items(), key=lambda kv: (-kv[1][0], kv[0]))[:limit]
    return [{"country": k, "events": v[0], "revenue": money(v[1])} for k, v in rows]


def top_report(events: list[Event], entity: str, by: str, limit: int) -> list[dict[str, Any]]:
    field = {"campaigns": "campaignId", "users": "userId", "videos": "videoId"}[entity]

    def key_of(e: Event) -> str | None:
        if entity == "users":
            return str(e["data"]["user"]["userId"])
        value = e["data"]["engagement"].get(field)
        return None if value is None else str(value)

    acc: dict[tuple[str, str], list[Any]] = defaultdict(lambda: [0, Decimal(0), 0])
    for e in events:
        k = key_of(e)
        if k is None:
            continue
        entry = acc[e["source"], k]
        entry[0] += 1
        amount = revenue(e)
        if amount is not None:
            entry[1] += amount
            entry[2] += 1
    rows = [(k, v) for k, v in acc.items() if (v[2] if by == "revenue" else v[0])]
    if by == "revenue":
        rows.sort(key=lambda kv: (-kv[1][1], -kv[1][0], kv[0][0], kv[0][1]))
    else:
        rows.sort(key=lambda kv: (-kv[1][0], -kv[1][1], kv[0][0], kv[0][1]))
    return [
        {
            "source": k[0],
            field: k[1],
            "events": v[0],
            "revenue": money(v[1]),
            "transactions": v[2],
        }
        for k, v in rows[:limit]
    ]


def account_report(
    events: list[Event], account_id: str, lo: datetime, hi: datetime
) -> dict[str, Any]:
    mine = [e for e in events if e.get("account_id") == account_id and lo <= at(e) < hi]
    types = Counter(e["type"] for e in mine)
    return {
        "accountId": account_id,
        "total": len(mine),
        "activeUsers": len({e["user_id"] for e in mine}),
        "byType": [{"type": t, "count": n} for t, n in ranked(types)],
    }
