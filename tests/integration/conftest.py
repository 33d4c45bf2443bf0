"""Integration tests run on asyncio: nats-py and asyncpg are asyncio-only."""

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
