"""Token buckets (sluice.ratelimit) on a fake clock: rate, burst, all-or-none takes,
Retry-After and the RateLimit-* headers, per-key overrides, and bounded memory."""

from __future__ import annotations

import timeit

import pytest

from sluice.config import ConfigError, load_settings
from sluice.ports import ApiKey
from sluice.ratelimit import Buckets, RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def key(id: int = 1, *, requests: int | None = None, events: int | None = None) -> ApiKey:
    return ApiKey(id, f"key-{id}", frozenset({"ingest"}), None, requests, events)


def test_a_bucket_holds_rate_times_burst_and_refills_at_rate() -> None:
    clock = FakeClock()
    buckets = Buckets("requests", burst=2, clock=clock)
    assert all(buckets.take("a", 1, rate=5) is None for _ in range(10))  # 5/s x 2 s
    refused = buckets.take("a", 1, rate=5)
    assert refused is not None
    assert (refused.remaining, refused.retry_after, refused.reset) == (0, 1, 2)
    clock.now += 0.2  # one token back
    assert buckets.take("a", 1, rate=5) is None
    assert buckets.take("a", 1, rate=5) is not None
    clock.now += 60  # never more than full
    assert all(buckets.take("a", 1, rate=5) is None for _ in range(10))
    assert buckets.take("a", 1, rate=5) is not None


def test_clients_have_buckets_of_their_own() -> None:
    buckets = Buckets("requests", burst=1, clock=FakeClock())
    assert buckets.take("a", 1, rate=1) is None
    assert buckets.take("a", 1, rate=1) is not None
    assert buckets.take("b", 1, rate=1) is None
    assert buckets.take(7, 1, rate=1) is None  # a key's id is not an address


def test_a_take_is_all_or_none_and_says_when_it_will_fit() -> None:
    clock = FakeClock()
    buckets = Buckets("events", burst=1, clock=clock)
    assert buckets.take("a", 70, rate=100) is None
    refused = buckets.take("a", 50, rate=100)  # 30 left: nothing taken
    assert refused is not None and refused.remaining == 30
    assert refused.retry_after == 1  # 20 more tokens take 0.2 s: rounded up to 1
    assert buckets.take("a", 30, rate=100) is None  # the 30 were still there
    clock.now += 0.5
    refused = buckets.take("a", 100, rate=100)
    assert refused is not None and refused.remaining == 50 and refused.reset == 1
    clock.now += 0.5
    assert buckets.take("a", 100, rate=100) is None


def test_retry_after_counts_whole_seconds_until_the_tokens_are_back() -> None:
    clock = FakeClock()
    buckets = Buckets("events", burst=4, clock=clock)
    assert buckets.take("a", 40, rate=10) is None
    refused = buckets.take("a", 25, rate=10)
    assert refused is not None
    assert (refused.retry_after, refused.reset) == (3, 4)  # 2.5 s, 4 s, rounded up
    clock.now += 2.5
    assert buckets.take("a", 25, rate=10) is None


def test_more_than_a_full_bucket_is_refused_even_when_full() -> None:
    buckets = Buckets("events", burst=2, clock=FakeClock())
    refused = buckets.take("a", 201, rate=100)
    assert refused is not None
    assert refused.remaining == 200 and refused.retry_after == 1 and refused.reset == 1
    assert "201 events in one request, more than the 200" in refused.error
    assert "send smaller arrays" in refused.error
    assert buckets.take("a", 200, rate=100) is None  # the refusal took nothing


def test_rate_zero_is_no_limit() -> None:
    buckets = Buckets("events", burst=1, clock=FakeClock())
    assert all(buckets.take("a", 10**6, rate=0) is None for _ in range(100))
    assert len(buckets) == 0


def test_the_refusal_names_the_limit_and_carries_the_draft_headers() -> None:
    clock = FakeClock()
    limiter = RateLimiter(requests=2, events=0, burst=1, clock=clock)
    assert limiter.take_request(None, "10.0.0.7") is None
    assert limiter.take_request(None, "10.0.0.7") is None
    refused = limiter.take_request(None, "10.0.0.7")
    assert refused is not None
    assert refused.error == (
        "rate limit exceeded: 2 requests/s (bursts of 2) for address 10.0.0.7; retry after 1 s"
    )
    assert refused.headers() == {
        "Retry-After": "1",
        "RateLimit-Limit": "2",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "1",
        "RateLimit-Policy": "2;w=1",
    }
    events = RateLimiter(requests=0, events=10, burst=3, clock=clock)
    assert events.take_events(key(), "x", 25) is None
    refused = events.take_events(key(), "x", 6)
    assert refused is not None
    assert refused.error == (
        "rate limit exceeded: 6 events in this request, 5 left of 10 events/s (bursts of 30)"
        " for API key 'key-1'; retry after 1 s"
    )
    assert refused.headers()["RateLimit-Policy"] == "30;w=3"


def test_a_keys_own_rates_override_the_profile_and_zero_lifts_them() -> None:
    limiter = RateLimiter(requests=1, events=5, burst=1, clock=FakeClock())
    own = key(1, requests=3, events=0)
    assert all(limiter.take_request(own, "x") is None for _ in range(3))
    assert limiter.take_request(own, "x") is not None
    assert limiter.take_events(own, "x", 10**6) is None  # 0: no limit for this key
    profile = key(2)
    assert limiter.take_request(profile, "x") is None
    assert limiter.take_request(profile, "x") is not None
    assert limiter.take_events(profile, "x", 6) is not None
    # Without a key, the address's bucket: not the keys' (same address above).
    assert limiter.take_request(None, "x") is None
    assert limiter.take_request(None, "x") is not None
    assert limiter.take_request(None, "y") is None


def test_a_profile_without_limits_lets_everything_through() -> None:
    limiter = RateLimiter(requests=0, events=0, burst=1, clock=FakeClock())
    for _ in range(1000):
        assert limiter.take_request(None, "x") is None
        assert limiter.take_events(key(), "x", 10_000) is None
    assert limiter.take_request(key(requests=1), "x") is None  # a key's own limit still holds
    assert limiter.take_request(key(requests=1), "x") is not None


def test_idle_buckets_are_forgotten_and_memory_is_bounded() -> None:
    clock = FakeClock()
    buckets = Buckets("requests", burst=1, clock=clock, max_clients=5000)
    for n in range(1024):
        assert buckets.take(f"10.0.{n // 256}.{n % 256}", 1, rate=1) is None
    assert len(buckets) == 1024
    clock.now += 1.0  # every bucket full again: the next new client sweeps them out
    assert buckets.take("new", 1, rate=1) is None
    assert len(buckets) == 1
    for n in range(20_000):  # a flood of addresses within one second
        assert buckets.take(n, 1, rate=1) is None
    assert len(buckets) <= 5000
    # The latest clients are still remembered (and still limited).
    assert buckets.take(19_999, 1, rate=1) is not None


def test_a_bucket_still_refilling_is_kept_by_a_sweep() -> None:
    clock = FakeClock()
    buckets = Buckets("requests", burst=2, clock=clock)
    assert buckets.take("busy", 2, rate=1) is None
    clock.now += 1.0
    for n in range(1100):
        buckets.take(n, 1, rate=1)
    assert buckets.take("busy", 2, rate=1) is not None  # one token back, not two


def test_a_check_costs_about_a_microsecond() -> None:
    limiter = RateLimiter(requests=10**9, events=10**9, burst=1)
    k = key()
    seconds = min(timeit.repeat(lambda: limiter.take_request(k, "x"), number=20_000, repeat=3))
    assert seconds / 20_000 < 10e-6  # ~0.3 us measured; generous for a shared machine


def test_burst_must_be_a_second_or_more() -> None:
    with pytest.raises(ValueError, match="burst"):
        Buckets("requests", burst=0)


def test_the_profiles_limits_dev_unlimited_staging_and_prod_limited() -> None:
    dev = load_settings({"SLUICE_ENV": "dev"})
    assert (dev.rate_limit_requests, dev.rate_limit_events, dev.rate_limit_burst) == (0, 0, 1)
    for env in ("staging", "prod"):
        settings = load_settings({"SLUICE_ENV": env})
        limits = (settings.rate_limit_requests, settings.rate_limit_events)
        assert limits == (200, 5000) and settings.rate_limit_burst == 2, env
    own = load_settings(
        {"SLUICE_ENV": "prod", "SLUICE_RATE_LIMIT_REQUESTS": "0", "SLUICE_RATE_LIMIT_BURST": "5"}
    )
    assert (own.rate_limit_requests, own.rate_limit_burst) == (0, 5)
    with pytest.raises(ConfigError) as bad:
        load_settings({"SLUICE_RATE_LIMIT_EVENTS": "-1", "SLUICE_RATE_LIMIT_BURST": "0"})
    assert "SLUICE_RATE_LIMIT_EVENTS='-1': must be a non-negative integer" in str(bad.value)
    assert "SLUICE_RATE_LIMIT_BURST='0': must be a positive integer" in str(bad.value)
