"""Secrets stay secret: run sluice with known secrets, make things fail, then grep every
output for them.

The engine runs as an operator runs it (`sluice run`, API keys required, DEBUG logs) on
the session's servers, with a DATABASE_URL of a role that has a password, a NATS_URL with
a user and password, SLUICE_KEY_SECRET and an API key. Around it: `sluice config`, keys
made and listed, commands pointed at a wrong database password or an unreachable NATS
with a token (with --debug, so tracebacks are printed too), requests with the key, with
a wrong key, without one. Not one of the secrets may appear in any stdout, stderr,
response body or header, or in /metrics. The one exception is the stdout of
`sluice keys create`, which shows the new key once, on purpose.

A new kind of secret (signing secrets, ...) goes in `Secrets` and `Secrets.env`: every
run below gets it, and the grep covers it.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from tests.conftest import run_async
from tests.factories import make_events
from tests.ops.test_drain_process import start

pytestmark = pytest.mark.integration


def _token(prefix: str) -> str:
    return f"{prefix}-{secrets.token_urlsafe(18)}"


@dataclass
class Secrets:
    """Every secret given to the processes below, made fresh for each run."""

    database_password: str = field(default_factory=lambda: _token("dbpw"))
    wrong_database_password: str = field(default_factory=lambda: _token("wrongpw"))
    nats_password: str = field(default_factory=lambda: _token("natspw"))
    nats_token: str = field(default_factory=lambda: _token("natstok"))
    key_secret: str = field(default_factory=lambda: _token("keysecret"))
    wrong_api_key: str = field(default_factory=lambda: "slk_" + secrets.token_urlsafe(32))
    webhook_secret: str = field(
        default_factory=lambda: "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    )
    api_key: str = ""  # made by `sluice keys create`

    def values(self) -> dict[str, str]:
        found = {f.name: getattr(self, f.name) for f in fields(self)}
        assert all(found.values()), found
        return found

    def env(self, database_url: str, nats_url: str) -> dict[str, str]:
        """The settings carrying them (the engine's own, right ones). A NATS server
        without authentication takes any user and password; one with its own keeps
        them, and its password is one of the secrets."""
        own = urlsplit(nats_url).password
        if own:
            self.nats_password = own
        else:
            nats_url = with_password(nats_url, self.nats_password, user="sluice")
        return {
            "DATABASE_URL": with_password(database_url, self.database_password),
            "NATS_URL": nats_url,
            "SLUICE_KEY_SECRET": self.key_secret,
            "SLUICE_WEBHOOK_SECRETS": f"tiktok={self.webhook_secret}",
        }


def with_password(url: str, password: str, *, user: str | None = None) -> str:
    """`url` with this password (and user: else the URL's own)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user or parts.username}:{password}@{host}"))


JSON = {"Content-Type": "application/json"}


@dataclass
class Seen:
    """Everything the runs showed, by where it came from."""

    outputs: dict[str, str] = field(default_factory=dict)

    def add(self, where: str, text: str) -> None:
        self.outputs[where] = self.outputs.get(where, "") + text

    def leaks(self, known: dict[str, str]) -> list[str]:
        return [
            f"{name} in {where}"
            for where, text in self.outputs.items()
            for name, value in known.items()
            if value in text
        ]


def sluice(*args: str, env: dict[str, str], seen: Seen, expect: int | None = 0) -> str:
    """Run a sluice command; its stderr (and stdout, returned) go to `seen`."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "NATS_URL"))}
    full.pop("DATABASE_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "sluice.cli", *args],
        env=full | env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    where = "sluice " + " ".join(args)
    seen.add(f"{where} (stderr)", done.stderr)
    seen.add(f"{where} (stdout)", done.stdout)
    if expect is not None:
        assert done.returncode == expect, f"{where}: {done.returncode}\n{done.stderr}"
    return done.stdout


@pytest.fixture
def app_role(database_url: str, fresh_database_url: str) -> Iterator[tuple[str, Secrets]]:
    """(URL of a fresh database owned by a role with a password, the secrets)."""
    known = Secrets()
    role = f"app_{uuid.uuid4().hex[:10]}"
    database = urlsplit(fresh_database_url).path.lstrip("/")

    async def execute(url: str, *statements: str) -> None:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    run_async(
        lambda: execute(
            database_url,
            f"CREATE ROLE {role} LOGIN PASSWORD '{known.database_password}'",
            f'ALTER DATABASE "{database}" OWNER TO {role}',
        )
    )
    parts = urlsplit(fresh_database_url)
    role_url = urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc.rpartition('@')[2]}"))
    try:
        yield role_url, known
    finally:
        run_async(lambda: execute(fresh_database_url, f"REASSIGN OWNED BY {role} TO postgres"))
        run_async(lambda: execute(database_url, f"DROP ROLE IF EXISTS {role}"))


def test_no_secret_shows_in_any_output(
    app_role: tuple[str, Secrets], nats_url: str, nats_prefix: str, tmp_path: Path
) -> None:
    role_url, known = app_role
    seen = Seen()
    env = known.env(role_url, nats_url) | {
        "SLUICE_STREAM": f"{nats_prefix}_EVENTS",
        "SLUICE_SUBJECT_PREFIX": nats_prefix,
        "SLUICE_SOURCES": "facebook,tiktok",
        "SLUICE_DATA_DIR": str(tmp_path / "data"),
        "SLUICE_HTTP_PORT": "0",
        "SLUICE_ENV": "dev",
        "SLUICE_AUTH": "required",
        "LOG_LEVEL": "DEBUG",
    }

    # What the operator sees of the configuration, in both log formats.
    for log_format in ("json", "text"):
        shown = sluice("config", "--origin", env=env | {"SLUICE_LOG_FORMAT": log_format}, seen=seen)
        assert "DATABASE_URL=postgresql://app_" in shown and ":***@" in shown
        assert "SLUICE_KEY_SECRET=***" in shown

    # Failures that carry the URLs: a wrong database password, NATS unreachable.
    wrong_db = env | {"DATABASE_URL": with_password(role_url, known.wrong_database_password)}
    unreachable_nats = env | {"NATS_URL": f"nats://{known.nats_token}@127.0.0.1:1"}
    for log_format in ("json", "text"):
        fmt = {"SLUICE_LOG_FORMAT": log_format}
        sluice("--debug", "migrate", env=wrong_db | fmt, seen=seen, expect=2)
        sluice("dlq", "list", env=wrong_db | fmt, seen=seen, expect=2)
        sluice("keys", "list", env=wrong_db | fmt, seen=seen, expect=None)
    # Once (it waits 15 s for NATS to come up), logging JSON: the error is a log record.
    unreachable_nats |= {"SLUICE_LOG_FORMAT": "json"}
    sluice("--debug", "run", "--role", "ingress", env=unreachable_nats, seen=seen, expect=2)
    failed = seen.outputs["sluice --debug migrate (stderr)"]
    assert "password authentication failed" in failed and "Traceback" in failed
    assert "nats://***@127.0.0.1:1" in seen.outputs["sluice --debug run --role ingress (stderr)"]

    # The engine, with a key made for it.
    sluice("migrate", env=env, seen=seen)
    made = subprocess.run(
        [sys.executable, "-m", "sluice.cli", "keys", "create", "--scope", "admin", "--json"],
        env={k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    seen.add("sluice keys create (stderr)", made.stderr)  # its stdout shows the key, once
    known.api_key = json.loads(made.stdout)["key"]
    sluice("keys", "list", env=env, seen=seen)

    running = start(env)
    try:
        key = {"Authorization": f"Bearer {known.api_key}"}
        wrong = {"Authorization": f"Bearer {known.wrong_api_key}"}
        with httpx.Client(base_url=running.url, timeout=30) as client:
            answers = [
                client.get("/health/ready"),
                client.post("/webhook", json=make_events(5, seed=8), headers=key),
                client.post("/webhook", json=make_events(1, seed=9), headers=wrong),
                client.post("/webhook/tiktok", json=make_events(1, seed=9), headers=wrong),
                client.post("/webhook", json=make_events(1, seed=10)),
                client.post("/webhook", content=b"{not json", headers=key | JSON),
                client.get("/reports/events", headers=key),
                client.get("/reports/events", headers=wrong),
                client.get("/reports/top?entity=users&by=nothing", headers=key),
                client.get("/events/no-such-event", headers=key),
                client.get("/dashboard", headers=wrong),
                client.get("/no-such-page", headers=key),
                client.get("/metrics"),
                client.post("/webhook/tiktok", content=b"[]", headers=key | JSON),  # unsigned
            ]
            statuses = [a.status_code for a in answers]
            assert statuses[:6] == [200, 202, 401, 401, 401, 400], statuses
            assert statuses[6:] == [200, 401, 400, 404, 401, 404, 200, 401], statuses
            for answer in answers:
                where = f"{answer.request.method} {answer.request.url.path}"
                seen.add(f"{where} (body)", answer.text)
                seen.add(f"{where} (headers)", str(dict(answer.headers)))
    finally:
        running.signal(signal.SIGTERM)
    assert running.wait(60) == 0, running.output
    seen.add("sluice run (stdout and stderr)", running.output)

    assert seen.leaks(known.values()) == []


def test_the_grep_finds_a_secret_that_is_shown() -> None:
    """The grep above is not blind: a secret in any output is reported by name."""
    known = Secrets(api_key="slk_" + secrets.token_urlsafe(32))
    seen = Seen()
    seen.add("body", f"oops: {known.key_secret}")
    seen.add("log", f'{{"url": "postgresql://app:{known.database_password}@db/x"}}')
    assert sorted(seen.leaks(known.values())) == ["database_password in log", "key_secret in body"]
