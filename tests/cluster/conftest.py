"""Fixtures of the cluster tests: a redis-server per test, and two started nodes on it."""

from __future__ import annotations

from typing import AsyncIterator

import pytest_asyncio

from redis_nodes import Node, RedisServer
from redis_servers import redis_server  # noqa: F401  (the fixture)


@pytest_asyncio.fixture
async def nodes(redis_server: RedisServer) -> AsyncIterator[tuple[Node, Node]]:
    """Two started nodes, "a" and "b", on one Redis."""
    a, b = Node(redis_server, "a"), Node(redis_server, "b")
    await a.engine.start()
    await b.engine.start()
    try:
        yield a, b
    finally:
        await a.engine.close()
        await b.engine.close()
