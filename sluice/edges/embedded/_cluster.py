"""An embedded NATS cluster: three (or more) nats-servers on loopback, routed together."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._base import (
    _START_TIMEOUT,
    EmbeddedError,
    _any_free_port,
    _port_free,
    _read_state,
    _write_json,
    log,
)
from ._nats import ClusterRoutes, EmbeddedNats, NatsCredentials
from ._servers import Watchdog

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType

CLUSTER_NAME = "sluice"


class EmbeddedNatsCluster:
    """`size` nats-servers with JetStream (``sync_interval: always`` each), one cluster.

    Layout under ``data_dir/nats-cluster``: ``credentials.json`` (one user and password
    for clients and routes, 0600), ``ports.json`` (each node's client, route and
    monitoring ports: the same on every start, so a client's URL list stays good), and
    ``n1/nats/`` ... ``nN/nats/`` (each node's store, config and log, as `EmbeddedNats`).
    Node i is named ``sluice-<i>`` (the name JetStream gives as a stream's leader).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        size: int = 3,
        host: str = "127.0.0.1",
        die_with_parent: bool = True,
        start_timeout: float = _START_TIMEOUT,
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.dir = Path(data_dir).expanduser().resolve() / "nats-cluster"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        self.host = host
        self.start_timeout = start_timeout
        self.credentials = NatsCredentials.load_or_create(self.dir / "credentials.json")
        self._ports_path = self.dir / "ports.json"
        self._chosen = ports = self._ports(size)
        self.nodes = [
            EmbeddedNats(
                self.dir / f"n{i + 1}",
                host=host,
                port=ports[i]["client"],
                monitor_port=ports[i]["monitor"],
                credentials=self.credentials,
                server_name=f"sluice-{i + 1}",
                cluster=ClusterRoutes(
                    CLUSTER_NAME,
                    ports[i]["route"],
                    tuple(p["route"] for j, p in enumerate(ports) if j != i),
                ),
                die_with_parent=die_with_parent,
                start_timeout=start_timeout,
            )
            for i in range(size)
        ]

    def _ports(self, size: int) -> list[dict[str, int]]:
        """The ports of the last start when all are free (or ours), else new free ones."""
        kept: Any = _read_state(self._ports_path).get("nodes")
        if (
            isinstance(kept, list)
            and len(kept) == size
            and all(isinstance(n, dict) for n in kept)
            and all(isinstance(n.get(k), int) for n in kept for k in ("client", "route", "monitor"))
            and all(
                _port_free(self.host, n[k]) for n in kept for k in ("client", "route", "monitor")
            )
        ):
            return [{k: int(n[k]) for k in ("client", "route", "monitor")} for n in kept]
        taken: set[int] = set()
        chosen = []
        for _ in range(size):
            node = {}
            for kind in ("client", "route", "monitor"):
                node[kind] = port = _any_free_port(self.host, taken)
                taken.add(port)
            chosen.append(node)
        return chosen

    @property
    def url(self) -> str:
        """NATS_URL for this cluster: every node's URL (with the credentials), comma-separated."""
        return ",".join(node.url for node in self.nodes)

    @property
    def names(self) -> list[str]:
        return [node.server_name or "" for node in self.nodes]

    def node(self, server_name: str) -> EmbeddedNats:
        """The node JetStream calls `server_name` (e.g. a stream's cluster leader)."""
        for node in self.nodes:
            if node.server_name == server_name:
                return node
        raise KeyError(server_name)

    def start(self) -> str:
        """Start every node, wait until each reports JetStream healthy (a meta leader
        elected, its streams current), and return the cluster's URL list."""
        try:
            for node in self.nodes:
                node.start()
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        _write_json(self._ports_path, {"nodes": self._chosen})  # the same ones next time
        log.info("embedded NATS cluster of %d nodes ready", len(self.nodes))
        return self.url

    def wait_healthy(self, timeout: float | None = None) -> None:
        """Until every node's /healthz answers 200. Raises EmbeddedError after `timeout`
        (default: the start timeout)."""
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        while not all(node.healthy() for node in self.nodes):
            if time.monotonic() > deadline:
                sick = [n.server_name for n in self.nodes if not n.healthy()]
                raise EmbeddedError(f"NATS cluster nodes not healthy in time: {sick}")
            time.sleep(0.1)

    def stop(self) -> None:
        errors = []
        for node in self.nodes:
            try:
                node.stop()
            except Exception as exc:  # stop the others anyway
                errors.append(exc)
        if errors:
            raise errors[0]

    def watchdog(self) -> Watchdog:
        """Starts again a node whose process died (on its ports and data)."""
        return Watchdog(self.nodes)

    def pids(self) -> Iterator[int]:
        for node in self.nodes:
            if node.pid is not None:
                yield node.pid

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
