"""Report logic shared by the HTTP layer and the store adapter (no I/O here).

_params   query parameters per endpoint (msgspec Structs) and `parse`
_results  response bodies (msgspec Structs)
_store    the `ReportStore` port and the rows it returns
_build    store rows -> response bodies
_window   splitting a time range over the rollup grains
_flight   one run of a query for all the concurrent requests that need it
"""

from . import _build as build
from ._flight import SingleFlight
from ._params import (
    GROUP_KEYS,
    MAX_LIMIT,
    AccountQuery,
    BadParam,
    CountriesQuery,
    EventListQuery,
    EventsQuery,
    RangeQuery,
    RevenueQuery,
    TopQuery,
    parse,
)
from ._results import (
    AccountSummary,
    CountryRow,
    DemographicsReport,
    ErrorBody,
    EventPage,
    EventsReport,
    Extent,
    FunnelReport,
    RevenueReport,
    TopItem,
    TypeCount,
)
from ._store import (
    AccountTotals,
    Audience,
    AudienceRow,
    CampaignRow,
    EntityTotal,
    GroupRow,
    ReportStore,
    Scope,
    SeriesRow,
    StoredEvent,
    Totals,
)
from ._window import GRAINS, INTERVAL_GRAIN, Window, plan

__all__ = [
    "GRAINS",
    "GROUP_KEYS",
    "INTERVAL_GRAIN",
    "MAX_LIMIT",
    "AccountQuery",
    "AccountSummary",
    "AccountTotals",
    "Audience",
    "AudienceRow",
    "BadParam",
    "CampaignRow",
    "CountriesQuery",
    "CountryRow",
    "DemographicsReport",
    "EntityTotal",
    "ErrorBody",
    "EventListQuery",
    "EventPage",
    "EventsQuery",
    "EventsReport",
    "Extent",
    "FunnelReport",
    "GroupRow",
    "RangeQuery",
    "ReportStore",
    "RevenueQuery",
    "RevenueReport",
    "Scope",
    "SeriesRow",
    "SingleFlight",
    "StoredEvent",
    "TopItem",
    "TopQuery",
    "Totals",
    "TypeCount",
    "Window",
    "build",
    "parse",
    "plan",
]
