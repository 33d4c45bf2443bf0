"""The embedded nats-server (JetStream, sync_interval: always, a generated password)."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from pathlib import Path

from ._base import (
    _START_TIMEOUT,
    _STOP_TIMEOUT,
    DEFAULT_NATS_MONITOR_PORT,
    DEFAULT_NATS_PORT,
    EmbeddedError,
    _choose_port,
    _connect_host,
    _read_state,
    _Server,
    _url_host,
    _write_json,
    _write_private,
    log,
    nats_binary,
)

NATS_USER = "sluice"


@dataclass(frozen=True, slots=True)
class NatsCredentials:
    """The user and password every client of an embedded nats-server must present."""

    user: str
    password: str

    def __repr__(self) -> str:
        return f"NatsCredentials(user={self.user!r}, password='***')"

    @classmethod
    def load_or_create(cls, path: Path) -> NatsCredentials:
        """The credentials kept in `path` (JSON, mode 0600), generated there on first use."""
        data = _read_state(path)
        user, password = data.get("user"), data.get("password")
        if isinstance(user, str) and isinstance(password, str) and user and password:
            if os.stat(path).st_mode & 0o077:
                log.warning("%s was readable by others: making it owner-only (0600)", path)
                os.chmod(path, 0o600)
            return cls(user, password)
        if path.exists():
            log.warning("%s is unreadable: generating new NATS credentials", path)
        made = cls(NATS_USER, secrets.token_urlsafe(32))
        _write_json(path, {"user": made.user, "password": made.password})
        return made

    def url(self, host: str, port: int, scheme: str = "nats") -> str:
        auth = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}"
        return f"{scheme}://{auth}@{_url_host(host)}:{port}"


@dataclass(frozen=True, slots=True)
class ClusterRoutes:
    """A node's place in a cluster: the cluster's name, the port this node's routes
    listen on, and the route ports of the others (all on the node's host)."""

    name: str
    port: int
    peers: tuple[int, ...]


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
        credentials: NatsCredentials | None = None,
        server_name: str | None = None,
        cluster: ClusterRoutes | None = None,
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
        self.credentials_path = self.dir / "credentials.json"
        self._credentials = credentials
        self.server_name = server_name
        self.cluster = cluster

    @property
    def credentials(self) -> NatsCredentials:
        """Given, else kept in data_dir/nats/credentials.json (made on first use)."""
        if self._credentials is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._credentials = NatsCredentials.load_or_create(self.credentials_path)
        return self._credentials

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
        creds = self.credentials
        auth = [
            "authorization {",
            f"  user: {q(creds.user)}",
            f"  password: {q(creds.password)}",
            "}",
        ]
        lines = [
            "# Written by sluice on every start of the embedded server; edits are overwritten.",
            f"host: {q(self.host)}",
            f"port: {self.port}",
            f"pid_file: {q(str(self.pid_path))}",
            *auth,
        ]
        if self.server_name:
            lines.append(f"server_name: {q(self.server_name)}")
        if self.monitor:
            lines.append(f"http: {q(f'{self.host}:{self.monitor_port}')}")
        if self.cluster is not None:
            host = _connect_host(self.host)
            routes = [creds.url(host, peer, "nats-route") for peer in self.cluster.peers]
            lines += [
                "cluster {",
                f"  name: {q(self.cluster.name)}",
                f"  host: {q(self.host)}",
                f"  port: {self.cluster.port}",
                *(f"  {line}" for line in auth),
                f"  routes: {q(routes)}",
                "}",
            ]
        lines += [
            "jetstream {",
            f"  store_dir: {q(str(self.dir))}",
            "  # fsync every write before acknowledging: a 2xx promises durability.",
            "  sync_interval: always",
            "}",
            "",
        ]
        return "\n".join(lines)

    def _prepare(self) -> None:
        os.chmod(self.dir, 0o700)  # the store, the config and the credentials: ours only

    def _configure(self) -> None:
        _write_private(self.conf_path, self.config_text())
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
        # A cluster node is healthy only once a quorum is up: its peers start after it.
        if not self.monitor or self.monitor_port is None or self.cluster is not None:
            return True
        conn = http.client.HTTPConnection(host, self.monitor_port, timeout=1.0)
        try:
            conn.request("GET", "/healthz")  # ok only once JetStream is up
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def healthy(self) -> bool:
        """True when the monitoring endpoint's /healthz answers 200 (JetStream current)."""
        if self.monitor_port is None or not self.running:
            return False
        conn = http.client.HTTPConnection(_connect_host(self.host), self.monitor_port, timeout=1)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def _make_url(self) -> str:
        assert self.port is not None
        return self.credentials.url(_connect_host(self.host), self.port)
