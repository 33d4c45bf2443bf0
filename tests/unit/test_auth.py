"""`sluice.auth`: key format and hash, scopes, the per-process cache and its TTLs."""

from __future__ import annotations

import base64
import stat
from typing import TYPE_CHECKING

import anyio
import pytest

from sluice.auth import KEY_PREFIX, Authenticator, hash_key, key_from, load_secret, new_key
from tests.fakes import FakeKeyStore

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store() -> FakeKeyStore:
    return FakeKeyStore()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def authenticator(
    store: FakeKeyStore | None, clock: Clock, *, required: bool = True, ttl: float = 30.0
) -> Authenticator:
    secret = store.secret if store is not None else b"s"
    return Authenticator(store, secret, required=required, ttl=ttl, clock=clock)


def bearer(key: str) -> str:
    return f"Bearer {key}"


def test_a_key_is_the_prefix_and_32_random_bytes_urlsafe_unpadded() -> None:
    key = new_key()
    assert key.startswith(KEY_PREFIX) and "=" not in key
    body = key[len(KEY_PREFIX) :]
    assert len(base64.urlsafe_b64decode(body + "=")) == 32
    assert new_key() != key


def test_the_hash_is_keyed_by_the_secret() -> None:
    key = new_key()
    assert hash_key(b"a", key) == hash_key(b"a", key) != hash_key(b"b", key)
    assert len(hash_key(b"a", key)) == 32 and key.encode() not in hash_key(b"a", key)


def test_the_secret_file_is_made_once_owner_only(tmp_path: Path) -> None:
    first = load_secret(None, tmp_path / "data")
    path = tmp_path / "data" / "key.secret"
    assert len(first) == 32 and path.read_bytes() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret(None, tmp_path / "data") == first
    assert load_secret("from-the-environment", tmp_path / "data") == b"from-the-environment"


async def test_required_refuses_a_request_without_a_key(clock: Clock) -> None:
    decision = await authenticator(FakeKeyStore(), clock).check(None, "ingest")
    assert decision.status == 401 and decision.headers["WWW-Authenticate"] == "Bearer"
    assert decision.error is not None and "missing API key" in decision.error


async def test_optional_serves_a_request_without_a_key(clock: Clock) -> None:
    decision = await authenticator(FakeKeyStore(), clock, required=False).check(None, "report")
    assert decision.allowed and decision.key is None and decision.sources is None


def test_the_key_comes_by_bearer_or_as_either_half_of_basic_credentials() -> None:
    def basic(text: str) -> str:
        return "Basic " + base64.b64encode(text.encode()).decode()

    assert key_from("Bearer slk_a") == "slk_a"
    assert key_from("bearer   slk_a ") == "slk_a"
    assert key_from(basic(":slk_a")) == "slk_a"
    assert key_from(basic("slk_a:")) == "slk_a"
    assert key_from(basic("analyst:slk_a")) == "slk_a"  # the password wins
    assert key_from(basic("slk_a")) == "slk_a"  # no colon at all
    assert key_from("Basic " + base64.b64encode(b"\xff:x").decode()) is None  # not UTF-8


@pytest.mark.parametrize(
    "header", ["Bearer", "Bearer   ", "slk_abc", "Basic", "Basic !!!", "Basic Og==", "Digest x"]
)
async def test_a_malformed_header_is_401(store: FakeKeyStore, clock: Clock, header: str) -> None:
    decision = await authenticator(store, clock, required=False).check(header, "ingest")
    assert decision.status == 401 and "Bearer" in (decision.error or "")
    assert store.lookups == 0


async def test_an_unknown_key_is_401_and_remembered_for_five_seconds(
    store: FakeKeyStore, clock: Clock
) -> None:
    auth = authenticator(store, clock, required=False)
    unknown = bearer(new_key())
    for _ in range(3):
        decision = await auth.check(unknown, "ingest")
        assert decision.status == 401 and decision.error == "unknown or revoked API key"
    assert store.lookups == 1
    clock.now += 5.1
    assert (await auth.check(unknown, "ingest")).status == 401
    assert store.lookups == 2
    # Not shaped like a key at all: refused without a lookup.
    assert (await auth.check("Bearer not-a-key", "ingest")).status == 401
    assert store.lookups == 2


async def test_a_valid_key_is_looked_up_once_per_ttl(store: FakeKeyStore, clock: Clock) -> None:
    key = store.add("ingest")
    auth = authenticator(store, clock, ttl=30)
    for _ in range(100):
        assert (await auth.check(bearer(key), "ingest")).allowed
    assert store.lookups == 1
    clock.now += 29
    assert (await auth.check(bearer(key), "ingest")).allowed
    assert store.lookups == 1
    clock.now += 2
    assert (await auth.check(bearer(key), "ingest")).allowed
    assert store.lookups == 2


async def test_a_revocation_takes_effect_within_the_ttl(store: FakeKeyStore, clock: Clock) -> None:
    key = store.add("report")
    auth = authenticator(store, clock, ttl=10)
    assert (await auth.check(bearer(key), "report")).allowed
    store.revoke(key)
    clock.now += 9  # still trusted from the cache
    assert (await auth.check(bearer(key), "report")).allowed
    clock.now += 1.5
    decision = await auth.check(bearer(key), "report")
    assert decision.status == 401 and decision.error == "unknown or revoked API key"


async def test_a_key_without_the_scope_is_403(store: FakeKeyStore, clock: Clock) -> None:
    ingest, report = store.add("ingest"), store.add("report")
    auth = authenticator(store, clock, required=False)
    refused = await auth.check(bearer(ingest), "report")
    assert refused.status == 403 and refused.error == "this API key lacks the report scope"
    assert (await auth.check(bearer(report), "ingest")).status == 403
    assert (await auth.check(bearer(report), "report")).allowed


async def test_admin_implies_every_scope(store: FakeKeyStore, clock: Clock) -> None:
    admin = store.add("admin")
    auth = authenticator(store, clock)
    for scope in ("ingest", "report", "admin"):
        assert (await auth.check(bearer(admin), scope, "facebook")).allowed


async def test_a_key_limited_to_sources(store: FakeKeyStore, clock: Clock) -> None:
    key = store.add("ingest", sources={"tiktok"})
    auth = authenticator(store, clock)
    assert (await auth.check(bearer(key), "ingest", "tiktok")).allowed
    refused = await auth.check(bearer(key), "ingest", "facebook")
    assert refused.status == 403 and refused.error == "this API key may not send facebook events"
    anywhere = await auth.check(bearer(key), "ingest")  # /webhook: checked per event
    assert anywhere.allowed and anywhere.sources == frozenset({"tiktok"})


async def test_store_down_cached_keys_work_uncached_get_503(
    store: FakeKeyStore, clock: Clock
) -> None:
    known, other = store.add("ingest"), store.add("ingest")
    auth = authenticator(store, clock, ttl=30)
    assert (await auth.check(bearer(known), "ingest")).allowed
    store.down = True
    clock.now += 60  # past the TTL: verified before, so it keeps working
    assert (await auth.check(bearer(known), "ingest")).allowed
    decision = await auth.check(bearer(other), "ingest")
    assert decision.status == 503 and decision.headers == {"Retry-After": "1"}
    store.down = False
    assert (await auth.check(bearer(other), "ingest")).allowed


async def test_without_a_store_a_sent_key_is_503(clock: Clock) -> None:
    auth = authenticator(None, clock, required=False)
    assert (await auth.check(None, "ingest")).allowed
    decision = await auth.check(bearer(new_key()), "ingest")
    assert decision.status == 503 and "DATABASE_URL" in (decision.error or "")


async def test_concurrent_requests_with_one_new_key_share_one_lookup(
    store: FakeKeyStore, clock: Clock
) -> None:
    key = store.add("ingest")
    auth = authenticator(store, clock)
    results = []

    async def check() -> None:
        results.append((await auth.check(bearer(key), "ingest")).allowed)

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(check)
    assert results == [True] * 10 and store.lookups == 1


async def test_the_secret_is_loaded_once_when_the_first_key_comes(
    store: FakeKeyStore, clock: Clock
) -> None:
    loads = []

    def secret() -> bytes:
        loads.append(1)
        return store.secret

    auth = Authenticator(store, secret, required=True, clock=clock)
    assert (await auth.check(None, "ingest")).status == 401 and loads == []
    key = store.add("ingest")
    assert (await auth.check(bearer(key), "ingest")).allowed
    assert (await auth.check(bearer(key), "ingest")).allowed
    assert loads == [1]
