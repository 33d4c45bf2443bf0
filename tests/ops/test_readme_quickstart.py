"""The README's quickstart, run as written against a real engine on a fresh database:
each `curl` gets the answer shown under it (`receivedAt` aside, which is the reader's own
time), and posting the same body again is a duplicate, as the README says."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from sluice.app import open_engine
from sluice.config import Settings
from tests.factories import engine_settings

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

README = Path(__file__).resolve().parents[2] / "README.md"


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    body: bytes | None
    headers: dict[str, str]
    answer: Any


def quickstart_calls() -> list[Call]:
    section = README.read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    script = re.search(r"```sh\n(.*?)```", section, re.S)
    assert script, "no sh block in the quickstart"
    calls = []
    command: list[str] = []
    for line in script.group(1).splitlines():
        if line.startswith("# "):
            calls.append(parse_curl(" ".join(command), json.loads(line[2:])))
            command = []
        elif line.strip():
            command.append(line)
    assert not command, "a command without its answer"
    return calls


def parse_curl(command: str, answer: Any) -> Call:
    words = shlex.split(command)
    assert words[0] == "curl", command
    method, body, headers, url = "GET", None, {}, None
    i = 1
    while i < len(words):
        word = words[i]
        if word == "-X":
            method, i = words[i + 1], i + 1
        elif word == "-H":
            name, value = words[i + 1].split(":", 1)
            headers[name.strip()] = value.strip()
            i += 1
        elif word == "-d":
            body, i = words[i + 1].encode(), i + 1
        elif not word.startswith("-"):
            url = word
        i += 1
    assert url is not None and url.startswith("localhost:8000/"), command
    return Call(method, url.removeprefix("localhost:8000"), body, headers, answer)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings(nats_url: str, fresh_database_url: str, nats_prefix: str) -> Settings:
    return engine_settings(nats_url, fresh_database_url, nats_prefix, metrics_interval=0.1)


def without_received_at(answer: Any) -> Any:
    if isinstance(answer, dict):
        return {k: without_received_at(v) for k, v in answer.items() if k != "receivedAt"}
    return answer


async def test_the_quickstart_answers_as_written(settings: Settings) -> None:
    calls = quickstart_calls()
    assert [c.method for c in calls][:1] == ["POST"] and len(calls) >= 3
    async with (
        open_engine(settings) as engine,
        httpx.AsyncClient(base_url=engine.http_url, timeout=10) as client,
    ):
        post = calls[0]
        response = await client.post(post.path, content=post.body, headers=post.headers)
        assert response.status_code == 202
        assert response.json() == post.answer
        for call in calls[1:]:
            # "a moment later": the event is written asynchronously after the 202.
            with anyio.fail_after(30):
                while (response := await client.get(call.path)).status_code == 404:
                    await anyio.sleep(0.05)
            assert response.status_code == 200, (call.path, response.text)
            got = response.json()
            assert without_received_at(got) == without_received_at(call.answer), call.path
            if isinstance(call.answer, dict) and "receivedAt" in call.answer:
                assert "receivedAt" in got
        again = await client.post(post.path, content=post.body, headers=post.headers)
        assert again.json() == {"accepted": 0, "duplicates": 1, "rejected": []}
