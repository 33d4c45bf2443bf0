"""`sluice publish`: a load generator standing in for the reference publisher.

Sends schema-valid facebook/tiktok events (every type, realistic values) to a webhook
as JSON arrays of `--batch` events (1 sends bare objects), at `--rate` events/s or as
fast as the server answers, for `--total` events or `--duration` seconds (neither:
DEFAULT_TOTAL events; `--forever`: until Ctrl-C), from `--concurrency` keep-alive
connections. `--duplicates` re-sends events
already acknowledged, `--invalid` breaks some. 429/503 answers are retried after their
Retry-After; failed connections are retried with a backoff shared by every connection.
`--api-key` (or SLUICE_API_KEY) sends the API key; `--sign-secret` signs each request
as Standard Webhooks asks (a fresh webhook-id per request, kept by its retries).
Prints a progress line, then sent/accepted/rejected counts and latency
percentiles (and, with `--json`, the same summary as JSON).

The events look like live traffic (`Traffic`): users and videos repeat, drawn from pools
(`--users`, `--videos`), timestamps are near now with a few late ones (`--jitter`,
`--late`, `--late-by`). `--worst-case` sends what costs the database most instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sluice.config import is_webhook_secret
from sluice.publish.events import Traffic
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
    "DEFAULT_TOTAL",
    "DEFAULT_URL",
    "PublishOptions",
    "Publisher",
    "Stats",
    "Traffic",
    "add_arguments",
    "cmd_publish",
    "format_summary",
    "options_from",
    "percentile",
    "retry_after_seconds",
    "run_publisher",
]

DEFAULT_URL = "http://127.0.0.1:8000/webhook"
DEFAULT_TOTAL = 10_000  # events, when neither --total, --duration nor --forever is given


def _ratio(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError("must be a ratio in [0, 1)")
    return value


def _not_negative(kind: Callable[[str], float | int]) -> Callable[[str], float | int]:
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError("must not be negative")
        return value

    return parse


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


def _late_ratio(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be a ratio in [0, 1]")
    return value


def _sign_secret(text: str) -> str:
    if not is_webhook_secret(text):
        raise argparse.ArgumentTypeError("expected whsec_ followed by base64")
    return text


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError("expected 'Name: value'")
    return name.strip(), value.strip()


_EPILOG = """\
what the events look like:
  Every source, stage and event type (docs/events.md), about half facebook and half tiktok,
  with realistic values. Users come from a pool of --users per source and videos from
  a pool of --videos per source, both drawn log-uniformly: the k most active make up
  log(k+1)/log(N+1) of the events (of 100,000 users the first sends ~6% of a source's
  events, the first 100 ~40%, the first 10,000 ~80%). A user keeps the same
  attributes all along (facebook: name, age, gender, country, city; tiktok: username,
  followers). Timestamps (and actionTime) are now minus up to --jitter seconds,
  uniformly; a --late ratio of events is up to --late-by seconds old (out of order).
  --users 0 / --videos 0 draw a new user / video for every event; --worst-case is
  --users 0 --videos 0 --jitter 3600 --late 0 (a new user and video on every event,
  timestamps over the last hour: the most work for the database's rollups).
  Purchase amounts are lognormal around 30.00 (most in the tens, about 1 in 100 over
  300), between 0.50 and 5,000.00, with 2 decimal places.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `publish` flags (used by `sluice publish` and the benchmarks)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    parser.add_argument(
        "--url",
        default=os.environ.get("EVENT_ENDPOINT") or DEFAULT_URL,
        help="webhook URL [EVENT_ENDPOINT, else %(default)s]",
    )
    parser.add_argument(
        "--batch",
        type=_positive(int),
        default=100,
        help="events per request; 1 sends bare objects [%(default)s]",
    )
    parser.add_argument(
        "--rate",
        type=_positive(float),
        default=None,
        help="events/s [as fast as the server answers]",
    )
    parser.add_argument(
        "--total",
        type=_positive(int),
        default=None,
        help=f"events to send [{DEFAULT_TOTAL:,} unless --duration or --forever]",
    )
    parser.add_argument(
        "--duration", type=_positive(float), default=None, help="seconds to send for [none]"
    )
    parser.add_argument(
        "--forever",
        action="store_true",
        help="send until Ctrl-C or SIGTERM, without --total or --duration [off]",
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
        "--timeout",
        type=_positive(float),
        default=30.0,
        help="seconds per request [%(default)s]",
    )
    live = Traffic()
    parser.add_argument(
        "--users",
        type=_not_negative(int),
        default=live.users,
        help="users per source, drawn log-uniformly; 0: a new one every event [%(default)s]",
    )
    parser.add_argument(
        "--videos",
        type=_not_negative(int),
        default=live.videos,
        help="videos per source, drawn log-uniformly; 0: a new one every event [%(default)s]",
    )
    parser.add_argument(
        "--jitter",
        type=_not_negative(float),
        default=live.jitter,
        help="timestamps are now minus up to this many seconds [%(default)s]",
    )
    parser.add_argument(
        "--late",
        type=_late_ratio,
        default=live.late,
        help="ratio of late (out-of-order) events [%(default)s]",
    )
    parser.add_argument(
        "--late-by",
        type=_not_negative(float),
        default=live.late_by,
        help="a late event is up to this many seconds old [%(default)s]",
    )
    parser.add_argument(
        "--worst-case",
        action="store_true",
        help="--users 0 --videos 0 --jitter 3600 --late 0 (overrides those flags) [off]",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="random seed, for reproducible runs [random]"
    )
    parser.add_argument(
        "-H",
        "--header",
        type=_header,
        action="append",
        default=[],
        help="extra request header 'Name: value' (repeatable) [none]",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("SLUICE_API_KEY") or None,
        metavar="KEY",
        help="send Authorization: Bearer KEY [SLUICE_API_KEY, else none]",
    )
    parser.add_argument(
        "--sign-secret",
        type=_sign_secret,
        action="append",
        default=[],
        metavar="whsec_...",
        help="sign each request (Standard Webhooks: webhook-id, webhook-timestamp,"
        " webhook-signature) with this secret; repeat to sign with two during a"
        " rotation [none]",
    )
    parser.add_argument(
        "--progress",
        type=float,
        default=1.0,
        help="seconds between progress lines; 0: none [%(default)s]",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the summary as JSON to PATH ('-' for stdout) [none]",
    )


def options_from(args: argparse.Namespace) -> PublishOptions:
    if args.duplicates + args.invalid >= 1:
        raise ValueError("--duplicates plus --invalid must stay below 1")
    if args.forever and (args.total is not None or args.duration is not None):
        raise ValueError("--forever goes without --total and --duration")
    if args.worst_case:
        traffic = Traffic.worst_case()
    else:
        traffic = Traffic(
            users=args.users,
            videos=args.videos,
            jitter=args.jitter,
            late=args.late,
            late_by=args.late_by,
        )
    return PublishOptions(
        url=args.url,
        batch=args.batch,
        rate=args.rate,
        total=_total(args),
        duration=args.duration,
        concurrency=args.concurrency,
        duplicates=args.duplicates,
        invalid=args.invalid,
        max_retries=args.max_retries,
        timeout=args.timeout,
        seed=args.seed,
        headers=_headers(args),
        sign_secrets=tuple(args.sign_secret),
        progress=args.progress,
        traffic=traffic,
    )


def _headers(args: argparse.Namespace) -> dict[str, str]:
    headers = dict(args.header)
    if args.api_key and not any(name.lower() == "authorization" for name in headers):
        headers["Authorization"] = f"Bearer {args.api_key}"
    return headers


def _total(args: argparse.Namespace) -> int | None:
    if args.total is None and args.duration is None and not args.forever:
        return DEFAULT_TOTAL
    return args.total  # type: ignore[no-any-return]


def cmd_publish(args: argparse.Namespace) -> int:
    """Run `sluice publish`; exit 0 unless events failed (given up) or none were sent."""
    try:
        options = options_from(args)
    except ValueError as exc:
        print(f"sluice publish: {exc}", file=sys.stderr)
        return 2
    if args.total is None and args.duration is None and not args.forever:
        print(
            f"sluice publish: sending {DEFAULT_TOTAL:,} events (the default; --total, "
            "--duration or --forever for another amount)",
            file=sys.stderr,
            flush=True,
        )
    stats = run_publisher(options, loop_factory=_uvloop_factory())
    summary = {**stats.summary(), "traffic": dataclasses.asdict(options.traffic)}
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
