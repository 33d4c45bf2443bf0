"""The embedded nats-server (JetStream, sync_interval: always)."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    pass

from ._base import (
    _START_TIMEOUT,
    _STOP_TIMEOUT,
    DEFAULT_NATS_MONITOR_PORT,
    DEFAULT_NATS_PORT,
    EmbeddedError,
    _choose_port,
    _connect_host,
    _Server,
    _url_host,
    nats_binary,
)

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
