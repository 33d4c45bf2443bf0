"""Embedded nats-server and PostgreSQL: the one-command local default.

With no NATS_URL / DATABASE_URL, `sluice run` starts its own servers with data under one
directory (``./.sluice`` by default), kept across restarts::

    with EmbeddedServers(Path(".sluice")) as (nats_url, database_url):
        ...  # run the engine

The API is synchronous on purpose: the servers are started from the main thread before the
event loop starts and stopped after it ends.

Layout of ``data_dir``::

    servers.json            URLs (with credentials) and pids of the last start (0600)
    nats/                   owner-only (0700)
    nats/credentials.json   the user and password clients must present (0600, made once)
    nats/nats.conf          written on every start (0600; edits are overwritten)
    nats/nats.log           server output; nats/nats.pid; nats/jetstream/ (the store)
    postgres/data/          PGDATA (initdb on first start, reused later)
    postgres/password       the superuser's password (mode 0600): SCRAM everywhere, no trust
    postgres/postgres.log   server output; postgres/run/ (unix socket directory)

Both servers listen on loopback (127.0.0.1) and require generated credentials (nats-server
a user and password, PostgreSQL its superuser's password); the URLs sluice builds for
itself carry them (logs show them masked).

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

PostgreSQL listens on a loopback address only; every connection, TCP or unix socket, must
give the password (which the URL carries).

Root: PostgreSQL refuses to run as root. Then the server runs as the system user
``sluice-pg`` (created with ``useradd --system`` when missing, ``nobody`` as a last resort);
``postgres/`` is chowned to it, and directories on the way to the data and the binaries get
search permission (o+x, logged as a warning) where that user could not traverse them.
"""

from ._base import (
    DEFAULT_NATS_MONITOR_PORT,
    DEFAULT_NATS_PORT,
    DEFAULT_POSTGRES_PORT,
    EmbeddedError,
    nats_binary,
    postgres_bin_dir,
)
from ._cluster import EmbeddedNatsCluster
from ._nats import EmbeddedNats, NatsCredentials
from ._postgres import EmbeddedPostgres
from ._servers import EmbeddedServers, Watchdog, record_servers

__all__ = [
    "DEFAULT_NATS_MONITOR_PORT",
    "DEFAULT_NATS_PORT",
    "DEFAULT_POSTGRES_PORT",
    "EmbeddedError",
    "EmbeddedNats",
    "EmbeddedNatsCluster",
    "EmbeddedPostgres",
    "EmbeddedServers",
    "NatsCredentials",
    "Watchdog",
    "nats_binary",
    "postgres_bin_dir",
    "record_servers",
]
