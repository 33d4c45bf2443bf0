"""The `sluice` command: run | migrate | config."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
from typing import TYPE_CHECKING, Any

import anyio

from sluice.config import ConfigError, Settings, load_settings
from sluice.logs import setup_logging

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

log = logging.getLogger("sluice.cli")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sluice", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "run", help="start the engine (embedded NATS/PostgreSQL unless URLs are set)"
    )
    commands.add_parser("migrate", help="apply pending database migrations and exit")
    commands.add_parser("config", help="print the effective configuration, secrets masked")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    setup_logging(settings.log_level, json=settings.env != "dev")
    handler = {"run": cmd_run, "migrate": cmd_migrate, "config": cmd_config}[args.command]
    raise SystemExit(handler(settings))


def cmd_config(settings: Settings) -> int:
    for key, value in settings.masked().items():
        print(f"{key}={value}")
    return 0


@contextlib.contextmanager
def _servers(settings: Settings, *, nats: bool = True) -> Iterator[Settings]:
    """Start the embedded servers for whichever URL is unset; stop them on the way out."""
    from sluice.edges.embedded import EmbeddedNats, EmbeddedPostgres, EmbeddedServers

    with contextlib.ExitStack() as stack:
        changes: dict[str, Any] = {}
        want_nats = nats and not settings.nats_url
        if want_nats and not settings.database_url:
            both = EmbeddedServers(settings.data_dir)
            stack.callback(both.stop)
            changes["nats_url"], changes["database_url"] = both.start()
        elif want_nats:
            nats_server = EmbeddedNats(settings.data_dir)
            stack.callback(nats_server.stop)
            changes["nats_url"] = nats_server.start()
        elif not settings.database_url:
            postgres = EmbeddedPostgres(settings.data_dir)
            stack.callback(postgres.stop)
            changes["database_url"] = postgres.start()
        yield dataclasses.replace(settings, **changes)


def cmd_migrate(settings: Settings) -> int:
    from sluice.edges.store import PgEventStore

    async def migrate(settings: Settings) -> None:
        assert settings.database_url is not None
        async with PgEventStore.open(settings.database_url, migrate=True):
            pass

    with _servers(settings, nats=False) as s:
        anyio.run(migrate, s, backend="asyncio")
    print("migrations applied")
    return 0


def cmd_run(settings: Settings) -> int:
    from sluice.app import Engine, run_until_signalled

    def announce(engine: Engine) -> None:
        url = engine.http_url
        data = settings.data_dir.resolve() if not settings.database_url else "external servers"
        print(
            f"sluice is running\n"
            f"  webhook:  POST {url}/webhook\n"
            f"  health:   GET  {url}/health/ready\n"
            f"  metrics:  GET  {url}/metrics\n"
            f"  data:     {data}\n"
            f"  stop:     Ctrl-C (drains, then exits)",
            flush=True,
        )

    with _servers(settings) as resolved:
        code: int = anyio.run(
            lambda: run_until_signalled(resolved, on_ready=announce),
            backend="asyncio",
            backend_options={"use_uvloop": _has_uvloop()},
        )
    return code


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
