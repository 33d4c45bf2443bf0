"""Both embedded servers, started and stopped together."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from types import TracebackType

    from ._base import _Server

from ._base import (
    EmbeddedError,
    _write_json,
)
from ._nats import EmbeddedNats
from ._postgres import EmbeddedPostgres

# --------------------------------------------------------------------------- both


def record_servers(data_dir: Path, **fields: Any) -> None:
    """Write `data_dir`/servers.json (owner-only: the URLs carry credentials): `fields`
    (nats_url, database_url, pids...) and this process's pid, for `sluice dlq` and
    `sluice keys` to find the running engine's servers."""
    with contextlib.suppress(OSError):
        _write_json(
            Path(data_dir) / "servers.json",
            {
                **fields,
                "sluice_pid": os.getpid(),
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )


class EmbeddedServers:
    """Both servers under one data dir; a context manager yielding (nats_url, database_url)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        nats_port: int | None = None,
        postgres_port: int | None = None,
        database: str = "sluice",
        die_with_parent: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.nats = EmbeddedNats(
            self.data_dir, host=host, port=nats_port, die_with_parent=die_with_parent
        )
        self.postgres = EmbeddedPostgres(
            self.data_dir,
            host=host,
            port=postgres_port,
            database=database,
            die_with_parent=die_with_parent,
        )

    @property
    def servers_json(self) -> Path:
        return self.data_dir / "servers.json"

    def start(self) -> tuple[str, str]:
        """Start both; returns (nats_url, database_url)."""
        nats_url = self.nats.start()
        try:
            database_url = self.postgres.start()
        except BaseException:
            self.nats.stop()
            raise
        self.record()
        return nats_url, database_url

    def record(self) -> None:
        """Write servers.json: the URLs and pids as they are now."""
        with contextlib.suppress(OSError, EmbeddedError):
            _write_json(
                self.servers_json,
                {
                    "nats_url": self.nats.url,
                    "nats_monitor_url": self.nats.monitor_url,
                    "database_url": self.postgres.url,
                    "nats_pid": self.nats.pid,
                    "postgres_pid": self.postgres.pid,
                    "sluice_pid": os.getpid(),
                    "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
            )

    def watchdog(self) -> Watchdog:
        """A watchdog over both servers that rewrites servers.json after a restart."""
        return Watchdog([self.nats, self.postgres], on_restart=self.record)

    def stop(self) -> None:
        try:
            self.postgres.stop()
        finally:
            self.nats.stop()

    def pids(self) -> Iterator[int]:
        for pid in (self.nats.pid, self.postgres.pid):
            if pid is not None:
                yield pid

    def __enter__(self) -> tuple[str, str]:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- watchdog

log = logging.getLogger("sluice.embedded")


class Watchdog:
    """Starts again an embedded server whose process died, as a service manager would.

    A thread looks at each server every `interval` seconds; a server found dead is
    started again on its data directory (recovering as after a crash; its port is the
    one it had, so clients reconnect by themselves) after a backoff that doubles on
    each failed or short-lived start, up to `backoff_max`, and goes back to `backoff`
    once a start has lived `stable` seconds. Every step is logged. Leaving the `with`
    block stops the thread first, so the servers can then be stopped for good.
    """

    def __init__(
        self,
        servers: Sequence[_Server],
        *,
        on_restart: Callable[[], None] | None = None,
        interval: float = 0.5,
        backoff: float = 1.0,
        backoff_max: float = 30.0,
        stable: float = 60.0,
    ) -> None:
        self._servers = list(servers)
        self._on_restart = on_restart
        self._interval = interval
        self._backoff = backoff
        self._backoff_max = backoff_max
        self._stable = stable
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="embedded-watchdog", daemon=True)
        self.restarts = 0

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        delay = {id(server): self._backoff for server in self._servers}
        started = {id(server): time.monotonic() for server in self._servers}
        while not self._stop.wait(self._interval):
            for server in self._servers:
                if server.running:
                    continue
                key = id(server)
                if time.monotonic() - started[key] >= self._stable:
                    delay[key] = self._backoff
                log.warning(
                    "embedded %s exited (%s); starting it again in %.0f s",
                    server.kind,
                    server.exit_status,
                    delay[key],
                )
                if self._stop.wait(delay[key]):
                    return
                delay[key] = min(delay[key] * 2, self._backoff_max)
                started[key] = time.monotonic()
                try:
                    server.start(in_thread=True)
                except Exception as exc:
                    log.error("embedded %s did not start again: %s", server.kind, exc)
                    continue
                self.restarts += 1
                log.warning("embedded %s started again (pid %s)", server.kind, server.pid)
                if self._on_restart is not None:
                    self._on_restart()
