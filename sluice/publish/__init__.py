"""`sluice publish`: a load generator standing in for the reference publisher.

Sends schema-valid facebook/tiktok events (every type, realistic values) to a webhook
as JSON arrays of `--batch` events (1 sends bare objects), at `--rate` events/s or as
fast as the server answers, for `--total` events or `--duration` seconds (or until
Ctrl-C), from `--concurrency` keep-alive connections. `--duplicates` re-sends events
already acknowledged, `--invalid` breaks some. 429/503 answers are retried after their
Retry-After. Prints a progress line, then sent/accepted/rejected counts and latency
percentiles (and, with `--json`, the same summary as JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sluice.publish.runner import (
    Publisher,
    PublishOptions,
    Stats,
    format_summary,
    percentile,
    retry_after_seconds,
    run_publisher,
)

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

__all__ = [
    "DEFAULT_URL",
    "PublishOptions",
    "Publisher",
    "Stats",
    "add_arguments",
    "cmd_publish",
    "format_summary",
    "options_from",
    "percentile",
    "retry_after_seconds",
    "run_publisher",
]

DEFAULT_URL = "http://127.0.0.1:8000/webhook"


def _ratio(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError("must be a ratio in [0, 1)")
    return value


def _positive(kind: Callable[[str], float | int]) -> Callable[[str], float | int]:
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError("must be positive")
        return value

    return parse


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError("expected 'Name: value'")
    return name.strip(), value.strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `publish` flags (used by `sluice publish` and the benchmarks)."""
    parser.add_argument(
        "--url",
        default=os.environ.get("EVENT_ENDPOINT") or DEFAULT_URL,
        help="webhook URL [EVENT_ENDPOINT, else %(default)s]",
    )
    parser.add_argument(
        "--batch", type=_positive(int), default=100, help="events per request; 1 sends bare objects"
    )
    parser.add_argument(
        "--rate", type=_positive(float), default=None, help="events/s [as fast as possible]"
    )
    parser.add_argument("--total", type=_positive(int), default=None, help="events to send")
    parser.add_argument(
        "--duration", type=_positive(float), default=None, help="seconds to send for"
    )
    parser.add_argument(
        "--concurrency", type=_positive(int), default=8, help="connections [%(default)s]"
    )
    parser.add_argument(
        "--duplicates", type=_ratio, default=0.0, help="ratio of exact re-sends [0]"
    )
    parser.add_argument("--invalid", type=_ratio, default=0.0, help="ratio of invalid events [0]")
    parser.add_argument(
        "--max-retries",
        type=int,
        default=30,
        help="retries per request on 429/503 or a failed connection [%(default)s]",
    )
    parser.add_argument(
        "--timeout", type=_positive(float), default=30.0, help="seconds per request"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (reproducible runs)")
    parser.add_argument(
        "-H",
        "--header",
        type=_header,
        action="append",
        default=[],
        help="extra request header 'Name: value' (repeatable)",
    )
    parser.add_argument(
        "--progress", type=float, default=1.0, help="seconds between progress lines; 0: none"
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the summary as JSON to PATH ('-' for stdout)",
    )


def options_from(args: argparse.Namespace) -> PublishOptions:
    if args.duplicates + args.invalid >= 1:
        raise ValueError("--duplicates plus --invalid must stay below 1")
    return PublishOptions(
        url=args.url,
        batch=args.batch,
        rate=args.rate,
        total=args.total,
        duration=args.duration,
        concurrency=args.concurrency,
        duplicates=args.duplicates,
        invalid=args.invalid,
        max_retries=args.max_retries,
        timeout=args.timeout,
        seed=args.seed,
        headers=dict(args.header),
        progress=args.progress,
    )


def cmd_publish(args: argparse.Namespace) -> int:
    """Run `sluice publish`; exit 0 unless events failed (given up) or none were sent."""
    try:
        options = options_from(args)
    except ValueError as exc:
        print(f"sluice publish: {exc}", file=sys.stderr)
        return 2
    stats = run_publisher(options, loop_factory=_uvloop_factory())
    summary = stats.summary()
    if options.progress > 0 and sys.stderr.isatty():
        print(file=sys.stderr)
    print(format_summary(summary), flush=True)
    if args.json is not None:
        text = json.dumps(summary, indent=2)
        if str(args.json) == "-":
            print(text)
        else:
            args.json.write_text(text + "\n")
    return 1 if stats.failed or not stats.sent else 0


def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
