"""`sluice keys`: create, list and revoke API keys.

    sluice keys create --scope ingest [--scope report ...] [--name N] [--source S ...]
                       [--rate-requests N] [--rate-events N] [--json]
    sluice keys list [--json]
    sluice keys revoke ID|NAME

The database is DATABASE_URL when set, else the embedded one of the `sluice run` that
holds SLUICE_DATA_DIR (found through its `servers.json`), else the embedded PostgreSQL
started for the command, as `sluice migrate` does; pending migrations are applied first.
Keys are hashed with the server secret (SLUICE_KEY_SECRET, else `<data dir>/key.secret`),
which the engine must share. A key is printed once, at creation: only its hash is stored.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import sys
from typing import TYPE_CHECKING, Any

import anyio

from sluice.auth import SCOPES, hash_key, load_secret, new_key
from sluice.config import mask_secrets

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sluice.config import Settings
    from sluice.edges.keys import PgKeyStore

__all__ = ["add_arguments", "cmd_keys"]


class KeysError(Exception):
    """Something the operator must fix (said in the message); exit status 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="make a key and print it (once)")
    create.add_argument(
        "--scope",
        action="append",
        required=True,
        choices=SCOPES,
        help="what the key may do (repeatable): ingest (webhook), report (reports, "
        "events, dashboard), admin (everything)",
    )
    create.add_argument("--name", default=None, help="a unique name [key-<random>]")
    create.add_argument(
        "--source",
        action="append",
        default=None,
        help="only events of this source may be sent with it (repeatable) [all]",
    )
    for what in ("requests", "events"):
        create.add_argument(
            f"--rate-{what}",
            type=_rate,
            default=None,
            metavar="N",
            help=f"this key's {what} per second (0: no limit) "
            f"[the profile's SLUICE_RATE_LIMIT_{what.upper()}]",
        )
    create.add_argument("--json", action="store_true", help="print one JSON object")
    listing = actions.add_parser("list", help="every key (never the key itself)")
    listing.add_argument("--json", action="store_true", help="one JSON array")
    revoke = actions.add_parser("revoke", help="revoke a key (within SLUICE_KEY_CACHE_TTL)")
    revoke.add_argument("key", metavar="ID|NAME")


def _rate(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 2**31 - 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 0 (0: no limit)")
    return value


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    from sluice.ports import StoreUnavailable
    from sluice.sql.migrate import MigrationError

    try:
        if args.keys_command == "create":
            _check_create(settings, args)
        with _database(settings) as url:
            code: int = anyio.run(_run, settings, url, args, backend="asyncio")
    except KeysError as exc:
        print(mask_secrets(f"sluice keys: {exc}"), file=sys.stderr)
        return 2
    except (StoreUnavailable, MigrationError) as exc:
        print(mask_secrets(f"sluice keys: database unavailable: {exc}"), file=sys.stderr)
        return 2
    return code


def _check_create(settings: Settings, args: argparse.Namespace) -> None:
    from sluice.sources import SOURCE_NAMES

    if args.name is not None and (not args.name.strip() or args.name.isdigit()):
        raise KeysError(f"--name {args.name!r}: a name must have a character other than digits")
    for source in args.source or ():
        if source not in SOURCE_NAMES:
            raise KeysError(
                f"--source {source!r}: unknown source; expected one of {', '.join(SOURCE_NAMES)}"
            )


@contextlib.contextmanager
def _database(settings: Settings) -> Iterator[str]:
    """The database URL to use, starting the embedded server when nothing runs."""
    from sluice.cli import _running_sluice, _servers

    if settings.database_url:
        yield settings.database_url
        return
    holder = _running_sluice(settings.data_dir)
    if holder is not None:
        yield str(holder["database_url"])
        return
    with _servers(settings, nats=False) as started:
        assert started.database_url is not None
        yield started.database_url


async def _run(settings: Settings, url: str, args: argparse.Namespace) -> int:
    from sluice.edges.keys import PgKeyStore
    from sluice.edges.store import PgEventStore

    async with PgEventStore.open(url, max_size=1, migrate=True):
        pass
    async with PgKeyStore.open(url, max_size=1) as store:
        if args.keys_command == "create":
            return await _create(store, settings, args)
        if args.keys_command == "list":
            return await _list(store, as_json=args.json)
        return await _revoke(store, args.key)


async def _create(store: PgKeyStore, settings: Settings, args: argparse.Namespace) -> int:
    from sluice.edges.keys import NameTaken

    key = new_key()
    secret = load_secret(settings.key_secret, settings.data_dir)
    sources = sorted(set(args.source)) if args.source else None
    try:
        row = await store.create(
            hash_key(secret, key),
            name=args.name or f"key-{secrets.token_hex(4)}",
            scopes=sorted(set(args.scope)),
            sources=sources,
            rate_requests=args.rate_requests,
            rate_events=args.rate_events,
        )
    except NameTaken as exc:
        raise KeysError(str(exc)) from None
    if args.json:
        print(json.dumps({**_public(row), "key": key}, indent=2))
        return 0
    limited = f"; sources {', '.join(sources)}" if sources else ""
    own = row["rate_requests"] is not None or row["rate_events"] is not None
    rates = f"; rate limits (requests/s,events/s) {_rates(row)}" if own else ""
    print(f"API key {row['id']} ({row['name']}): scopes {', '.join(row['scopes'])}{limited}{rates}")
    print(key)
    print("Shown once: store it now (only its hash is kept).", file=sys.stderr)
    return 0


def _rates(row: dict[str, Any]) -> str:
    """`requests/s,events/s`: a number, `-` for the profile's, `unlimited` for 0."""

    def one(value: int | None) -> str:
        return "-" if value is None else "unlimited" if value == 0 else str(value)

    return f"{one(row['rate_requests'])},{one(row['rate_events'])}"


def _public(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for name in ("created_at", "last_used_at", "revoked_at"):
        if out.get(name) is not None:
            out[name] = out[name].isoformat()
    return out


async def _list(store: PgKeyStore, *, as_json: bool) -> int:
    rows = await store.list_keys()
    if as_json:
        print(json.dumps([_public(row) for row in rows], indent=2))
        return 0
    if not rows:
        print("no API keys (create one: sluice keys create --scope ingest)")
        return 0

    def when(moment: Any) -> str:
        return moment.strftime("%Y-%m-%d %H:%M:%S") if moment is not None else "-"

    print(
        f"{'ID':>5}  {'NAME':<20} {'SCOPES':<20} {'SOURCES':<18} {'REQ/S,EVENTS/S':<20} "
        f"{'CREATED':<19}  {'LAST USED':<19}  REVOKED"
    )
    for row in rows:
        sources = ",".join(row["sources"]) if row["sources"] is not None else "all"
        print(
            f"{row['id']:>5}  {row['name']:<20} {','.join(row['scopes']):<20} {sources:<18} "
            f"{_rates(row):<20} {when(row['created_at']):<19}  "
            f"{when(row['last_used_at']):<19}  {when(row['revoked_at'])}"
        )
    return 0


async def _revoke(store: PgKeyStore, id_or_name: str) -> int:
    found = await store.revoke(id_or_name)
    if not found:
        print(f"sluice keys: no API key {id_or_name!r}", file=sys.stderr)
        return 1
    for row in found:
        print(
            f"revoked API key {row['id']} ({row['name']}) at {row['revoked_at'].isoformat()}; "
            "processes stop accepting it within SLUICE_KEY_CACHE_TTL"
        )
    return 0
