"""mask_secrets, and the outputs that go through it: log lines (JSON and text, tracebacks
included), uncaught tracebacks, /metrics."""

from __future__ import annotations

import io
import logging
import subprocess
import sys

import pytest

from sluice.config import load_settings, mask_secrets, remember_secrets
from sluice.logs import JsonFormatter, MaskSecrets, TextFormatter
from sluice.metrics import Metrics

PG_PASSWORD = "pg-Pa55word-in-the-url"
KEY = "slk_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_AbCdE"
SIGNING = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.mark.parametrize(
    ("text", "secrets"),
    [
        (f"connect to postgresql://app:{PG_PASSWORD}@db:5432/x failed", [PG_PASSWORD]),
        ("nats://tok3n-value@nats:4222 and nats://u:p4ssw0rd@b:4222", ["tok3n-value", "p4ssw0rd"]),
        ("postgresql://db/x?user=app&password=s3cret-q", ["s3cret-q"]),
        ("postgresql://u:comma,pass@db/x", ["comma,pass", "comma"]),
        (f"Authorization: Bearer {KEY}", [KEY[4:]]),
        (f"{{'secret': '{SIGNING}'}}", [SIGNING[6:]]),
        ("host=db user=app password=hunter2-libpq dbname=x", ["hunter2-libpq"]),
    ],
)
def test_secrets_are_masked_in_free_text(text: str, secrets: list[str]) -> None:
    masked = mask_secrets(text)
    for secret in secrets:
        assert secret not in masked
    assert "***" in masked


def test_text_without_secrets_is_unchanged() -> None:
    text = "12 accepted, 0 duplicates, 0 rejected source=tiktok reason=eventId http://h:8000/x"
    assert mask_secrets(text) == text


def test_remembered_secrets_are_masked_however_they_appear() -> None:
    settings = load_settings(
        {
            "SLUICE_KEY_SECRET": "a plain server secret",
            "DATABASE_URL": "postgresql://app:p%40ss-word@db/x",
        }
    )
    remember_secrets(*settings.secrets())
    masked = mask_secrets("secret is a plain server secret; password p@ss-word alone")
    assert "a plain server secret" not in masked and "p@ss-word" not in masked
    remember_secrets("abc")  # too short to mask as free text
    assert mask_secrets("abc") == "abc"


def record_with_secrets() -> logging.LogRecord:
    url = f"postgresql://app:{PG_PASSWORD}@db:5432/x"
    try:
        raise ConnectionError(f"cannot reach {url}")
    except ConnectionError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "sluice.test", logging.ERROR, __file__, 1, "failed on %s with %s", (url, KEY), exc_info
    )
    record.target = url
    record.keys = [KEY, "fine"]
    return record


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()])
def test_log_lines_mask_message_fields_and_traceback(formatter: logging.Formatter) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(MaskSecrets())
    handler.setFormatter(formatter)
    handler.handle(record_with_secrets())
    line = stream.getvalue()
    assert "ConnectionError" in line and "db:5432" in line  # the traceback is there
    assert PG_PASSWORD not in line and KEY not in line
    assert line.count("***") >= 4


def test_uncaught_tracebacks_of_the_cli_are_masked() -> None:
    code = (
        "from sluice.logs import mask_uncaught\n"
        "mask_uncaught()\n"
        f"raise RuntimeError('postgresql://app:{PG_PASSWORD}@db/x')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "RuntimeError: postgresql://app:***@db/x" in done.stderr
    assert PG_PASSWORD not in done.stderr


def test_metrics_labels_are_masked() -> None:
    metrics = Metrics()
    metrics.events_rejected.labels("tiktok", KEY).inc()
    text = metrics.exposition().decode()
    assert 'reason="slk_***"' in text and KEY not in text
