"""A list of NATS URLs, and streams brought to the configured replicas and limits
(StreamKeeper against a fake JetStream that refuses what a real server refuses)."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import nats.js.errors
import pytest
from nats.js import api

from sluice.config import ConfigError, Settings, load_settings
from sluice.edges.bus import nats_servers
from sluice.edges.streams import StreamKeeper, stream_changes
from sluice.engine import FatalError

pytestmark = pytest.mark.anyio


def test_a_comma_separated_nats_url_is_a_server_list_with_shared_credentials() -> None:
    servers, auth = nats_servers("nats://u:p%40ss@127.0.0.1:1, nats://u:p%40ss@127.0.0.1:2,")
    assert servers == ["nats://u:p%40ss@127.0.0.1:1", "nats://u:p%40ss@127.0.0.1:2"]
    assert auth == {"user": "u", "password": "p@ss"}  # also for servers the cluster names
    assert nats_servers("nats://a:1,nats://b:2") == (["nats://a:1", "nats://b:2"], {})
    assert nats_servers("nats://tok@a:1") == (["nats://tok@a:1"], {"token": "tok"})
    # different credentials per server: each keeps its own, nothing shared
    assert nats_servers("nats://u:1@a:1,nats://v:2@b:2")[1] == {}


def test_stream_replicas_setting_and_the_prod_profile() -> None:
    assert load_settings({}).stream_replicas == 1
    assert load_settings({"SLUICE_ENV": "prod"}).stream_replicas == 3
    assert load_settings({"SLUICE_STREAM_REPLICAS": "5"}).stream_replicas == 5
    for bad in ("0", "6", "three"):
        with pytest.raises(ConfigError, match="SLUICE_STREAM_REPLICAS"):
            load_settings({"SLUICE_STREAM_REPLICAS": bad})


def test_stream_changes_names_replicas_and_limits_only() -> None:
    old = api.StreamConfig(name="E", subjects=["a.>"], num_replicas=1, max_bytes=10, max_age=60.0)
    new = api.StreamConfig(name="E", subjects=["b.>"], num_replicas=3, max_bytes=20, max_age=60.0)
    assert stream_changes(old, new) == ["num_replicas 1 -> 3", "max_bytes 10 -> 20"]
    assert stream_changes(old, old) == []
    # a single server reports no replica count for a stream of one
    single = api.StreamConfig(name="E", num_replicas=0, max_bytes=10, max_age=60.0)
    assert stream_changes(single, old) == []


class FakeJetStream:
    """Streams in a dict; like nats-server, refuses more replicas than it has nodes."""

    def __init__(self, nodes: int) -> None:
        self.nodes = nodes
        self.streams: dict[str, Any] = {}

    def _check(self, config: Any) -> None:
        if (config.num_replicas or 1) > self.nodes:
            if self.nodes == 1:
                raise nats.js.errors.BadRequestError(
                    code=400,
                    err_code=10074,
                    description="replicas > 1 not supported in non-clustered mode",
                )
            raise nats.js.errors.ServerError(
                code=500, err_code=10005, description="insufficient resources"
            )

    async def add_stream(self, config: Any) -> Any:
        self._check(config)
        self.streams[config.name] = config
        return await self.stream_info(config.name)

    async def update_stream(self, config: Any) -> Any:
        self._check(config)
        self.streams[config.name] = config
        return await self.stream_info(config.name)

    async def stream_info(self, name: str) -> Any:
        if name not in self.streams:
            raise nats.js.errors.NotFoundError(code=404, err_code=10059)
        config = self.streams[name]
        sources = [SimpleNamespace(name=s.name, active=1) for s in config.sources or ()]
        state = SimpleNamespace(consumer_count=1, messages=0, last_seq=0)
        return SimpleNamespace(config=config, state=state, sources=sources)


def settings(**changes: Any) -> Settings:
    return Settings(nats_url="nats://x:1", sources=("facebook",), **changes)


async def test_existing_streams_are_updated_to_the_replicas_and_limits_and_it_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    js = FakeJetStream(nodes=3)
    await StreamKeeper(js, settings()).ensure()
    assert js.streams["EVENTS"].retention == api.RetentionPolicy.WORK_QUEUE
    assert {c.num_replicas for c in js.streams.values()} == {1}
    with caplog.at_level(logging.INFO, logger="sluice.streams"):
        await StreamKeeper(js, settings(stream_replicas=3, stream_max_bytes=1000)).ensure()
    assert {c.num_replicas for c in js.streams.values()} == {3}
    assert "stream EVENTS updated: num_replicas 1 -> 3; max_bytes" in caplog.text
    assert "stream EVENTS_HISTORY updated: num_replicas 1 -> 3" in caplog.text


async def test_replicas_a_server_cannot_hold_stop_start_up_naming_the_setting() -> None:
    js = FakeJetStream(nodes=1)
    with pytest.raises(FatalError, match=r"SLUICE_STREAM_REPLICAS=3 needs a NATS cluster") as err:
        await StreamKeeper(js, settings(stream_replicas=3)).ensure()
    assert "replicas > 1 not supported in non-clustered mode" in str(err.value)
    js = FakeJetStream(nodes=3)
    await StreamKeeper(js, settings(stream_replicas=3)).ensure()
    with pytest.raises(FatalError, match=r"update \(num_replicas 3 -> 5\) stream"):
        await StreamKeeper(js, settings(stream_replicas=5)).ensure()


async def test_jetstream_unavailable_for_now_is_not_fatal() -> None:
    js = FakeJetStream(nodes=3)

    async def no_leader(config: Any) -> Any:
        raise nats.js.errors.ServiceUnavailableError(
            code=503, err_code=10008, description="JetStream system temporarily unavailable"
        )

    js.add_stream = no_leader  # type: ignore[method-assign]
    with pytest.raises(nats.js.errors.ServiceUnavailableError):
        await StreamKeeper(js, settings()).ensure()
