"""Both embedded servers, started and stopped together."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType

from ._base import (
    _write_json,
)
from ._nats import EmbeddedNats
from ._postgres import EmbeddedPostgres

# --------------------------------------------------------------------------- both


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
        with contextlib.suppress(OSError):
            _write_json(
                self.servers_json,
                {
                    "nats_url": nats_url,
                    "nats_monitor_url": self.nats.monitor_url,
                    "database_url": database_url,
                    "nats_pid": self.nats.pid,
                    "postgres_pid": self.postgres.pid,
                    "sluice_pid": os.getpid(),
                    "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
            )
        return nats_url, database_url

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
