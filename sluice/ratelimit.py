"""Rate limits: token buckets on requests/s and events/s, per API key (or per client
address for a request without one).

A bucket holds `rate x burst` tokens (SLUICE_RATE_LIMIT_BURST seconds of its rate) and
refills at `rate` per second; a request takes one request token, and the events of a
webhook body take one event token each, all or none. A key's own rates (`sluice keys
create --rate-requests N --rate-events N`, carried in the cached `ApiKey`) override the
profile's; a rate of 0 is no limit.

Why a bucket of our own and not the `limits` package: `limits` (5.8) offers fixed,
moving and sliding windows but no token bucket (a rate with a burst), reads the wall
clock (a test could fake it only by patching the module), runs a thread to expire its
in-memory entries, and costs 3.6-7 us a hit in its memory storage (measured on this
machine), against ~0.5 us for the few lines below on an injected clock. The check runs
on every request of a path that costs ~340 us in all.

Buckets live in this process: N ingress processes let a client send N times the limit.
Memory is bounded: a bucket untouched for `burst` seconds is full again, so forgetting
it changes nothing; such buckets are swept once the table has doubled since the last
sweep, and at `max_clients` the oldest quarter is forgotten (those clients get a full
bucket back, a small leniency that only a flood of new addresses can cause).
"""

from __future__ import annotations

import math
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from sluice.ports import ApiKey

__all__ = ["Buckets", "Limited", "RateLimiter"]

MAX_CLIENTS = 100_000  # buckets kept per kind; past it the oldest are forgotten
_FIRST_SWEEP = 1024  # no sweep below this many buckets


@dataclass(frozen=True, slots=True)
class Limited:
    """A refusal: `wanted` tokens of `unit` did not fit in the client's bucket."""

    unit: str  # "requests" or "events"
    client: Hashable  # whose bucket: an API key's id, or an address
    name: str | None  # the API key's name; None: `client` is an address
    wanted: int
    rate: int  # tokens per second
    capacity: int  # tokens a full bucket holds (rate x burst)
    burst: int  # seconds of rate the bucket holds
    remaining: int  # whole tokens left now
    retry_after: int  # whole seconds until `wanted` fit (>= 1; a full bucket when never)
    reset: int  # whole seconds until the bucket is full again

    @property
    def who(self) -> str:
        return f"address {self.client}" if self.name is None else f"API key {self.name!r}"

    @property
    def error(self) -> str:
        limit = f"{self.rate} {self.unit}/s (bursts of {self.capacity}) for {self.who}"
        if self.wanted > self.capacity:
            return (
                f"rate limit exceeded: {self.wanted} events in one request, more than the "
                f"{self.capacity} that {limit} allows at once; send smaller arrays"
            )
        if self.unit == "events":
            return (
                f"rate limit exceeded: {self.wanted} events in this request, "
                f"{self.remaining} left of {limit}; retry after {self.retry_after} s"
            )
        return f"rate limit exceeded: {limit}; retry after {self.retry_after} s"

    def headers(self) -> dict[str, str]:
        """Retry-After and the RateLimit-* fields (draft-ietf-httpapi-ratelimit-headers)."""
        return {
            "Retry-After": str(self.retry_after),
            "RateLimit-Limit": str(self.capacity),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset),
            "RateLimit-Policy": f"{self.capacity};w={self.burst}",
        }


class Buckets:
    """Token buckets of one unit (requests or events), one per client.

    `clock`: seconds on a monotonic clock (tests pass a fake). Not thread-safe: one
    event loop uses it, and no call awaits.
    """

    def __init__(
        self,
        unit: str,
        *,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        if burst < 1:
            raise ValueError("burst must be at least 1 second")
        self.unit = unit
        self.burst = burst
        self._clock = clock
        self._max = max_clients
        self._sweep_at = min(_FIRST_SWEEP, max_clients)
        self._buckets: dict[Hashable, list[float]] = {}  # client -> [tokens, when]

    def __len__(self) -> int:
        return len(self._buckets)

    def take(
        self, client: Hashable, count: int, rate: int, name: str | None = None
    ) -> Limited | None:
        """Take `count` tokens from `client`'s bucket filling at `rate` per second (0: no
        limit): None when they were taken, else what was refused (nothing is taken)."""
        if rate <= 0:
            return None
        now = self._clock()
        capacity = rate * self.burst
        bucket = self._buckets.get(client)
        if bucket is None:
            if count <= capacity:
                if len(self._buckets) >= self._sweep_at:
                    self._sweep(now)
                self._buckets[client] = [capacity - count, now]
                return None
            tokens = float(capacity)
        else:
            tokens = bucket[0] + (now - bucket[1]) * rate
            if tokens > capacity:
                tokens = capacity
            if tokens >= count:
                bucket[0] = tokens - count
                bucket[1] = now
                return None
        reset = max(1, math.ceil((capacity - tokens) / rate))
        retry = math.ceil((count - tokens) / rate) if count <= capacity else reset
        return Limited(
            self.unit,
            client,
            name,
            count,
            rate,
            capacity,
            self.burst,
            int(tokens),
            max(1, retry),
            reset,
        )

    def _sweep(self, now: float) -> None:
        """Forget the buckets full again (untouched for `burst` s), then, at the
        maximum, the oldest quarter; the next sweep comes when the table has doubled
        (or reached the maximum)."""
        idle_since = now - self.burst
        self._buckets = {c: b for c, b in self._buckets.items() if b[1] > idle_since}
        if len(self._buckets) >= self._max:  # down to 3/4: no sort on every new client
            by_age = sorted(self._buckets.items(), key=lambda item: item[1][1])
            self._buckets = dict(by_age[len(by_age) - self._max * 3 // 4 :])
        self._sweep_at = min(max(_FIRST_SWEEP, 2 * len(self._buckets)), self._max)


class RateLimiter:
    """The requests/s and events/s limits of one process, per key or client address.

    `requests`, `events`: the profile's rates (0: no limit), which a key's own
    `rate_requests` / `rate_events` override; `burst`: seconds of rate a bucket holds.
    """

    def __init__(
        self,
        *,
        requests: int,
        events: int,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.requests = requests
        self.events = events
        self._requests = Buckets("requests", burst=burst, clock=clock, max_clients=max_clients)
        self._events = Buckets("events", burst=burst, clock=clock, max_clients=max_clients)

    @property
    def anonymous(self) -> bool:
        """Are requests without an API key limited at all (by client address)?"""
        return self.requests > 0 or self.events > 0

    def take_request(self, key: ApiKey | None, address: str) -> Limited | None:
        """One request of this key (or, without one, of this address): None if allowed."""
        if key is None:
            return self._requests.take(address, 1, self.requests)
        rate = self.requests if key.rate_requests is None else key.rate_requests
        return self._requests.take(key.id, 1, rate, key.name)

    def take_events(self, key: ApiKey | None, address: str, count: int) -> Limited | None:
        """`count` events of one request, all or none: None if allowed."""
        if key is None:
            return self._events.take(address, count, self.events)
        rate = self.events if key.rate_events is None else key.rate_events
        return self._events.take(key.id, count, rate, key.name)
