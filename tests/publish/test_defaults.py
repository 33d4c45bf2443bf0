"""`sluice publish` with safe defaults: a bounded run, defaults in --help, realistic
amounts, a backoff against a stopped server, no "None" latencies."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import socket
import statistics
import time
from decimal import Decimal
from pathlib import Path

import pytest

from sluice.cli import main
from sluice.publish import DEFAULT_TOTAL, Publisher, PublishOptions, add_arguments, format_summary
from sluice.publish.events import AMOUNT_MAX, AMOUNT_MIN, _amount
from tests.publish.conftest import FakeWebhook


def test_without_total_or_duration_it_sends_the_default_and_says_so(
    webhook: FakeWebhook, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "summary.json"
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "publish",
                "--url",
                webhook.url,
                "--batch",
                "500",
                "--progress",
                "0",
                "--json",
                str(out),
            ]
        )
    assert exit_info.value.code == 0
    assert json.loads(out.read_text())["sent"] == DEFAULT_TOTAL == 10_000
    assert len(webhook.requests) == 20
    assert "sending 10,000 events (the default" in capsys.readouterr().err


def test_forever_goes_alone(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["publish", "--forever", "--total", "5"])
    assert exit_info.value.code == 2
    assert "--forever goes without --total" in capsys.readouterr().err


def test_every_option_states_its_default_in_help() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for action in parser._actions:  # argparse has no public list
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help.rstrip().endswith("]"), action.option_strings
        text = action.help % {"default": action.default} if "%(" in action.help else action.help
        assert "[" in text and "None]" not in text, action.option_strings


def test_purchase_amounts_are_skewed_around_tens_bounded_with_two_places() -> None:
    rng = random.Random(7)
    amounts = [Decimal(_amount(rng)) for _ in range(20_000)]
    assert all(a.as_tuple().exponent == -2 for a in amounts)
    assert all(Decimal(str(AMOUNT_MIN)) <= a <= Decimal(str(AMOUNT_MAX)) for a in amounts)
    median = statistics.median(amounts)
    assert 20 <= median <= 45  # tens
    assert statistics.mean(amounts) > median  # skewed right: a tail of larger baskets
    assert sum(a > 300 for a in amounts) / len(amounts) < 0.03
    assert sum(a < 10 for a in amounts) / len(amounts) < 0.2


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again: connections are refused


def test_a_stopped_server_gets_a_few_attempts_a_second_not_a_flood() -> None:
    url = f"http://127.0.0.1:{closed_port()}/webhook"
    options = PublishOptions(url, total=10_000, duration=2.0, concurrency=8, progress=0)
    began = time.perf_counter()
    stats = asyncio.run(Publisher(options, out=io.StringIO()).run())
    assert time.perf_counter() - began < 4  # the backoff gives way to the end of the run
    # Rounds at 0, 0.1, 0.3, 0.7, 1.5 s (+-20%): each of the 8 connections once a round.
    assert 8 <= stats.connection_errors <= 8 * 6
    assert stats.accepted == 0 and stats.failed == stats.sent
    (reason,) = stats.errors
    assert "Connect call failed" in reason or "refused" in reason.lower()
    summary = format_summary(stats.summary())
    assert "None" not in summary
    assert "latency: none measured" in summary


def test_the_backoff_ends_with_the_first_answer(webhook: FakeWebhook) -> None:
    publisher = Publisher(PublishOptions(webhook.url, total=10, batch=5, progress=0))
    publisher._connection_failed()  # as after a failed connection
    stats = asyncio.run(publisher.run())
    assert stats.accepted == 10
    assert publisher._failures_in_a_row == 0


def test_progress_lines_without_answers_say_so() -> None:
    url = f"http://127.0.0.1:{closed_port()}/webhook"
    out = io.StringIO()
    options = PublishOptions(url, duration=1.0, concurrency=2, progress=0.2)
    publisher = Publisher(options, out=out)
    publisher._progress_min = 0.2  # not a terminal: lines at most this often
    asyncio.run(publisher.run())
    lines = out.getvalue().splitlines()
    assert lines and all("no answers" in line and "None" not in line for line in lines)
