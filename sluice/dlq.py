"""`sluice dlq`: list, show, replay and purge dead letters of a running engine.

    sluice dlq list [--source S] [--json]
    sluice dlq show ID
    sluice dlq replay [ID ... | --all]
    sluice dlq purge --before T

The servers are those of the engine: DATABASE_URL / NATS_URL when set, else the embedded
ones that `sluice run` started for SLUICE_DATA_DIR (it writes their URLs to
`<data dir>/servers.json`). Replay sends each letter's raw event through the webhook's own
path (validation, envelope, publish to JetStream, answered once durable), then marks the
letter replayed; the database's key on event_id keeps a replayed event stored once, however
often it is replayed. A letter that holds a whole message (dead-lettered on its last
delivery) replays the events of that message.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from sluice import envelope
from sluice.config import mask_secrets

if TYPE_CHECKING:
    import argparse

    from sluice.config import Settings
    from sluice.edges.store import PgEventStore

__all__ = ["add_arguments", "cmd_dlq"]


class DlqError(Exception):
    """Something the operator must fix (said in the message); exit status 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="dlq_command", required=True)
    listing = actions.add_parser("list", help="list dead letters, oldest first")
    listing.add_argument("--source", default=None, help="only this source's letters")
    listing.add_argument("--json", action="store_true", help="one JSON array, every field")
    show = actions.add_parser("show", help="one letter, with its raw payload")
    show.add_argument("id", type=int)
    replay = actions.add_parser(
        "replay", help="publish letters' events again through the webhook path"
    )
    replay.add_argument("ids", type=int, nargs="*", metavar="ID")
    replay.add_argument("--all", action="store_true", help="every letter not replayed yet")
    purge = actions.add_parser("purge", help="delete letters last seen before a time")
    purge.add_argument(
        "--before",
        required=True,
        type=_instant,
        help="ISO 8601 time or date (UTC unless it carries an offset)",
    )


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def cmd_dlq(settings: Settings, args: argparse.Namespace) -> int:
    if args.dlq_command == "replay" and bool(args.ids) == bool(args.all):
        print("sluice dlq replay: give letter ids or --all (not both)", file=sys.stderr)
        return 2
    try:
        resolved = engine_urls(settings, nats=args.dlq_command == "replay")
        code: int = anyio.run(_run, resolved, args, backend="asyncio")
    except DlqError as exc:
        print(mask_secrets(f"sluice dlq: {exc}"), file=sys.stderr)
        return 2
    return code


def engine_urls(settings: Settings, *, nats: bool) -> Settings:
    """`settings` with the URLs of the running engine's servers filled in."""
    need = {"database_url"} | ({"nats_url"} if nats else set())
    missing = {name for name in need if not getattr(settings, name)}
    if not missing:
        return settings
    advertised = settings.data_dir / "servers.json"
    try:
        urls = json.loads(advertised.read_text())
    except (OSError, ValueError):
        raise DlqError(
            f"no running sluice found: set {' and '.join(sorted(n.upper() for n in missing))}"
            f", or start `sluice run` (its servers are listed in {advertised})"
        ) from None
    pid = urls.get("sluice_pid")
    if isinstance(pid, int) and not _alive(pid):
        raise DlqError(f"the sluice that wrote {advertised} (pid {pid}) is not running")
    return dataclasses.replace(settings, **{name: urls.get(name) for name in missing})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    from sluice.edges.store import PgEventStore
    from sluice.ports import StoreUnavailable

    assert settings.database_url
    try:
        async with PgEventStore.open(settings.database_url) as store:
            if args.dlq_command == "list":
                return await _list(store, args.source, as_json=args.json)
            if args.dlq_command == "show":
                return await _show(store, args.id)
            if args.dlq_command == "replay":
                return await _replay(store, settings, None if args.all else args.ids)
            count = await store.purge_letters(args.before)
            print(f"purged {count} dead letters last seen before {args.before.isoformat()}")
            return 0
    except StoreUnavailable as exc:
        raise DlqError(f"database unavailable: {exc}") from exc


def _public(letter: dict[str, Any], *, payload: bool) -> dict[str, Any]:
    out = {k: v for k, v in letter.items() if k != "payload"}
    for key in ("first_seen", "last_seen", "replayed_at"):
        if out[key] is not None:
            out[key] = out[key].isoformat()
    if payload:
        raw: bytes = letter["payload"]
        try:
            out["payload"] = raw.decode()
        except UnicodeDecodeError:
            out["payload_base64"] = base64.b64encode(raw).decode()
    return out


async def _list(store: PgEventStore, source: str | None, *, as_json: bool) -> int:
    letters = await store.list_letters(source=source)
    if as_json:
        print(json.dumps([_public(letter, payload=False) for letter in letters], indent=2))
        return 0
    if not letters:
        print("no dead letters")
        return 0
    print(f"{'ID':>6}  {'SOURCE':<10} {'LAST SEEN':<20} {'TRIES':>5}  {'REPLAYED':<8} REASON")
    for letter in letters:
        seen = letter["last_seen"].strftime("%Y-%m-%d %H:%M:%S")
        replayed = "yes" if letter["replayed_at"] else "no"
        reason = letter["reason"].replace("\n", " ")
        if len(reason) > 100:
            reason = reason[:99] + "…"
        print(
            f"{letter['id']:>6}  {letter['source']:<10} {seen:<20} {letter['attempts']:>5}"
            f"  {replayed:<8} {reason}"
        )
    return 0


async def _show(store: PgEventStore, letter_id: int) -> int:
    letters = await store.list_letters(ids=[letter_id])
    if not letters:
        print(f"sluice dlq: no dead letter {letter_id}", file=sys.stderr)
        return 1
    print(json.dumps(_public(letters[0], payload=True), indent=2))
    return 0


def replay_body(payload: bytes) -> bytes:
    """What to send to the webhook for a letter: its event, or its message's events."""
    try:
        message = envelope.decode(payload)
    except envelope.BadEnvelope:
        return payload  # one raw event, as the publisher sent it
    return b"[" + b",".join(bytes(raw) for raw in message.events) + b"]"


async def _replay(store: PgEventStore, settings: Settings, ids: list[int] | None) -> int:
    from sluice.edges.bus import JetStreamBus
    from sluice.http.webhook import Ingest
    from sluice.metrics import Metrics
    from sluice.ports import LogUnavailable

    letters = await store.list_letters(ids=ids, pending=ids is None)
    if ids is not None:
        missing = sorted(set(ids) - {letter["id"] for letter in letters})
        if missing:
            print(f"sluice dlq: no dead letter {', '.join(map(str, missing))}", file=sys.stderr)
    failed = 0
    try:
        async with JetStreamBus.connect(settings, name="sluice-dlq") as bus:
            ingest = Ingest(bus, settings, Metrics())
            for letter in letters:
                answer = await ingest.handle(
                    replay_body(letter["payload"]),
                    route_source=letter["source"],
                    correlation_id=letter["correlation_id"] or f"dlq-{letter['id']}",
                )
                if answer.status == 202 and not answer.body.get("rejected"):
                    await store.mark_replayed([letter["id"]])
                    print(f"{letter['id']}: replayed ({_summary(answer.body)})")
                else:
                    failed += 1
                    print(
                        f"{letter['id']}: not replayed, the webhook answered {answer.status}:"
                        f" {msgspec.json.encode(answer.body).decode()}"
                    )
    except LogUnavailable as exc:
        raise DlqError(f"NATS unavailable: {exc}") from exc
    print(f"{len(letters) - failed} replayed, {failed} not")
    return 1 if failed or (ids is not None and len(letters) < len(ids)) else 0


def _summary(body: dict[str, Any]) -> str:
    return f"{body.get('accepted', 0)} accepted, {body.get('duplicates', 0)} duplicates"
