"""Fixtures for the channel layer tests: a real broker, a real ``redis-server``, layers of both kinds.

``make_layer(**config)`` builds a ``CoreMQChannelLayer`` or, in the same
parametrized run, a ``channels_redis`` ``RedisChannelLayer`` with the same
configuration, so a behaviour that differs fails one of the two.
"""

from __future__ import annotations

import os
from typing import Any, AsyncIterator, Callable, Iterator

import pytest
import pytest_asyncio

from brokers import BrokerThread
from redis_servers import RedisServer
from coremq_broker.core.config import BrokerConfig
from coremq_broker.layers import CoreMQChannelLayer, reset_layer_drops

#: History kept per queue by the test broker: a normal channel's backlog waits in it (docs/channels.md).
HISTORY = 1000


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def layer_broker() -> Iterator[BrokerThread]:
    """A real CoreMQ broker on an ephemeral port whose queues keep the layers' backlog."""
    running = BrokerThread(BrokerConfig(host="127.0.0.1", port=0, shutdown_timeout=2.0, history_length=HISTORY))
    try:
        yield running
    finally:
        running.stop()


MakeLayer = Callable[..., Any]


@pytest.fixture(params=["coremq", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest_asyncio.fixture
async def make_layer(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[MakeLayer]:
    """``make_layer(**config)``: a layer of this run's backend; each test gets its own prefix; flushed after."""
    made: list[Any] = []
    prefix = f"t{os.urandom(4).hex()}"
    if backend == "coremq":
        broker = request.getfixturevalue("layer_broker")
        reset_layer_drops()

        def make(**config: Any) -> Any:
            layer = CoreMQChannelLayer(hosts=[f"coremq://127.0.0.1:{broker.port}"], prefix=prefix, **config)
            made.append(layer)
            return layer
    else:
        from channels_redis.core import RedisChannelLayer

        server = request.getfixturevalue("redis_server")

        def make(**config: Any) -> Any:
            layer = RedisChannelLayer(hosts=[server.url], prefix=prefix, **config)
            made.append(layer)
            return layer

    yield make
    for layer in made:
        await layer.flush()
