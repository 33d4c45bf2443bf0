"""Settings: defaults < profile (SLUICE_ENV) < SLUICE_PROFILE_FILE < environment."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from sluice.config import ConfigError, Settings, load_settings
from sluice.config.settings import PROFILES, PROFILES_DIR, load_settings_with_origins


def test_every_profile_exists_and_only_names_real_settings() -> None:
    names = {f.metadata["env"] for f in dataclasses.fields(Settings)}
    for env in PROFILES:
        table = tomllib.loads((PROFILES_DIR / f"{env}.toml").read_text())
        assert set(table) <= names - {"SLUICE_ENV", "SLUICE_PROFILE_FILE"}, env
        load_settings({"SLUICE_ENV": env})  # and every value in it is valid


def test_every_setting_has_a_default() -> None:
    defaults = Settings()
    for f in dataclasses.fields(Settings):
        assert f.default is not dataclasses.MISSING, f.name
    assert defaults.env == "dev" and defaults.role == "all"


def test_the_profile_is_chosen_by_sluice_env() -> None:
    dev = load_settings({})
    assert dev.env == "dev" and dev.log_format == "text"
    prod = load_settings({"SLUICE_ENV": "prod"})
    assert prod.log_format == "json" and prod.http_host == "0.0.0.0"
    assert load_settings({"SLUICE_ENV": "staging"}).log_level == "DEBUG"


def test_environment_beats_profile_beats_default(tmp_path: Path) -> None:
    own = tmp_path / "own.toml"
    own.write_text('SLUICE_WRITERS = 7\nSLUICE_SOURCES = ["facebook"]\nLOG_LEVEL = "WARNING"\n')
    environ = {"SLUICE_ENV": "prod", "SLUICE_PROFILE_FILE": str(own), "LOG_LEVEL": "ERROR"}
    settings, origins = load_settings_with_origins(environ)
    assert settings.writers == 7 and origins["SLUICE_WRITERS"] == f"file {own}"
    assert settings.sources == ("facebook",)
    assert settings.log_level == "ERROR" and origins["LOG_LEVEL"] == "environment"
    assert settings.log_format == "json" and origins["SLUICE_LOG_FORMAT"] == "profile prod"
    assert settings.flush_rows == 5000 and origins["SLUICE_FLUSH_ROWS"] == "default"
    assert load_settings(environ, writers=1).writers == 1


def test_every_bad_key_is_reported_at_once(tmp_path: Path) -> None:
    own = tmp_path / "own.toml"
    own.write_text('SLUICE_FLUSH_ROWS = -3\nSLUICE_NO_SUCH = 1\nSLUICE_ENV = "prod"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(
            {
                "SLUICE_PROFILE_FILE": str(own),
                "SLUICE_WRITERS": "many",
                "SLUICE_HTTP_PORT": "70000",
                "LOG_LEVEL": "LOUD",
                "SLUICE_ROLE": "boss",
            }
        )
    text = str(caught.value)
    for expected in [
        "SLUICE_FLUSH_ROWS='-3' (in file",
        "must be a positive integer",
        "SLUICE_NO_SUCH (in",
        "unknown setting",
        "SLUICE_ENV (in",
        "SLUICE_WRITERS='many'",
        "SLUICE_HTTP_PORT='70000': must be a port number",
        "LOG_LEVEL='LOUD'",
        "SLUICE_ROLE='boss': must be one of all, ingress, worker, reports",
    ]:
        assert expected in text, expected
    assert len(caught.value.problems) == 7


def test_unknown_env_and_missing_profile_file() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"SLUICE_ENV": "qa", "SLUICE_PROFILE_FILE": "/nonexistent/x.toml"})
    assert caught.value.problems == [
        "SLUICE_ENV='qa': must be one of dev, staging, prod",
        "profile /nonexistent/x.toml: no such file",
    ]


def test_values_that_contradict_each_other_are_bad() -> None:
    with pytest.raises(ConfigError, match="SLUICE_FETCH_TIMEOUT=40: must be below SLUICE_ACK_WAIT"):
        load_settings({"SLUICE_FETCH_TIMEOUT": "40"})


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:s3cret@db:5432/x", "postgresql://app:***@db:5432/x"),
        ("nats://tok3n@nats:4222", "nats://***@nats:4222"),
        ("nats://a:pw@n1:4222,nats://b:pw2@n2:4222", "nats://a:***@n1:4222,nats://b:***@n2:4222"),
        ("postgresql://db/x?user=app&password=s3cret", "postgresql://db/x?user=app&password=***"),
        ("nats://nats:4222", "nats://nats:4222"),
    ],
)
def test_secrets_are_masked(url: str, shown: str) -> None:
    masked = load_settings({"DATABASE_URL": url, "NATS_URL": url}).masked()
    assert masked["DATABASE_URL"] == masked["NATS_URL"] == shown


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "NATS_", "DATA"))}
    clean.pop("LOG_LEVEL", None)
    return subprocess.run(
        [sys.executable, "-m", "sluice.cli", *args],
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_sluice_config_prints_the_effective_values_masked() -> None:
    done = run_cli(
        "config",
        "--origin",
        SLUICE_ENV="prod",
        DATABASE_URL="postgresql://app:s3cret@db/x",
        SLUICE_WRITERS="3",
    )
    assert done.returncode == 0, done.stderr
    lines = dict(line.split("=", 1) for line in done.stdout.splitlines())
    assert "s3cret" not in done.stdout
    assert lines["DATABASE_URL"] == "postgresql://app:***@db/x  # environment"
    assert lines["SLUICE_WRITERS"] == "3  # environment"
    assert lines["SLUICE_LOG_FORMAT"] == "json  # profile prod"
    assert lines["SLUICE_FLUSH_ROWS"] == "5000  # default"
    plain = run_cli("config")
    assert "SLUICE_ENV=dev" in plain.stdout.splitlines()


def test_bad_config_stops_the_cli_with_one_message() -> None:
    done = run_cli("run", SLUICE_WRITERS="0", SLUICE_HTTP_PORT="x")
    assert done.returncode == 2
    assert "SLUICE_WRITERS='0'" in done.stderr and "SLUICE_HTTP_PORT='x'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("raw", "expected"), [("1", True), ("true", True), ("On", True), ("0", False), ("no", False)]
)
def test_reuse_port_is_a_flag(raw: str, expected: bool) -> None:
    assert load_settings({"SLUICE_HTTP_REUSE_PORT": raw}).http_reuse_port is expected
    assert load_settings({}).http_reuse_port is False


def test_a_bad_flag_is_reported() -> None:
    with pytest.raises(ConfigError, match="SLUICE_HTTP_REUSE_PORT='maybe': must be a boolean"):
        load_settings({"SLUICE_HTTP_REUSE_PORT": "maybe"})


def test_fetch_max_bytes_defaults_to_8_mib_and_reads_the_environment() -> None:
    assert load_settings({}).fetch_max_bytes == 8 * 1024 * 1024
    assert load_settings({"SLUICE_FETCH_MAX_BYTES": "1048576"}).fetch_max_bytes == 1048576


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("0", "must be a positive integer"),
        ("-5", "must be a positive integer"),
        ("8MiB", "cannot parse '8MiB'"),
    ],
)
def test_a_bad_fetch_max_bytes_is_reported(raw: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"SLUICE_FETCH_MAX_BYTES": raw})
    assert caught.value.problems == [f"SLUICE_FETCH_MAX_BYTES={raw!r}: {reason}"]


def test_max_held_bytes_defaults_to_32_mib_and_reads_the_environment() -> None:
    assert load_settings({}).max_held_bytes == 32 * 1024 * 1024
    assert load_settings({"SLUICE_MAX_HELD_BYTES": "1048576"}).max_held_bytes == 1048576
    with pytest.raises(ConfigError, match="SLUICE_MAX_HELD_BYTES='0': must be a positive"):
        load_settings({"SLUICE_MAX_HELD_BYTES": "0"})


def test_urls_in_error_texts_lose_their_passwords() -> None:
    from sluice.config import mask_urls

    text = (
        "connection to postgresql://app:s3cret@db:5432/events failed; "
        "nats://tok3n@nats:4222 and nats://u:p4ss@a:4222,nats://u:p4ss@b:4222 unreachable"
    )
    masked = mask_urls(text)
    assert "s3cret" not in masked and "tok3n" not in masked and "p4ss" not in masked
    assert "postgresql://app:***@db:5432/events" in masked
    assert mask_urls("no url here") == "no url here"


@pytest.mark.anyio
async def test_readiness_errors_never_carry_a_password() -> None:
    from sluice.http.health import Health

    health = Health()

    async def failing() -> None:
        raise OSError("cannot reach postgresql://app:s3cret@db:5432/events")

    health.checks["postgres"] = failing
    ok, checks = await health.readiness()
    assert not ok and "s3cret" not in str(checks["postgres"]["error"])
    assert "app:***@db" in str(checks["postgres"]["error"])


def test_the_key_secret_is_masked_and_profiles_say_where_keys_are_required() -> None:
    masked = load_settings({"SLUICE_KEY_SECRET": "hunter2-secret"}).masked()
    assert masked["SLUICE_KEY_SECRET"] == "***"
    assert load_settings({}).auth == "optional"
    assert load_settings({"SLUICE_ENV": "staging"}).auth == "required"
    assert load_settings({"SLUICE_ENV": "prod"}).auth == "required"
    assert load_settings({"SLUICE_ENV": "prod", "SLUICE_AUTH": "optional"}).auth == "optional"
    with pytest.raises(ConfigError, match="SLUICE_AUTH='maybe': must be one of optional, required"):
        load_settings({"SLUICE_AUTH": "maybe"})
