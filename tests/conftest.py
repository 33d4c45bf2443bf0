"""Shared fixtures: real nats-server and PostgreSQL for integration tests.

Contract (other tests rely on these names):
- `nats_url` (session): URL of a nats-server with JetStream.
- `database_url` (session): URL of a PostgreSQL server (database `postgres`).
- `fresh_database_url` (function): a new, empty database on that server, dropped after.
SLUICE_TEST_NATS_URL / SLUICE_TEST_DATABASE_URL override the embedded servers.
"""

# TODO(embedded helper): start throwaway servers via sluice.edges.embedded when the
# env vars are unset.
