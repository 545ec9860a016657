"""Fixtures for the channel layer tests: a real broker, a real ``redis-server``, layers of both kinds.

``make_layer(**config)`` builds a ``CoreMQChannelLayer`` or, in the same
parametrized run, a ``channels_redis`` ``RedisChannelLayer`` with the same
configuration, so a behaviour that differs fails one of the two.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any, AsyncIterator, Callable, Iterator

import pytest
import pytest_asyncio
import redis

from brokers import BrokerThread
from coremq_broker.core.config import BrokerConfig
from coremq_broker.layers import CoreMQChannelLayer, reset_layer_drops

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
#: History kept per queue by the test broker: a normal channel's backlog waits in it (docs/channels.md).
HISTORY = 1000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """``redis-server`` on a free port (never 6379), without persistence."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="coremq-layer-redis-")
        self.port = free_port()
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.directory], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port, socket_timeout=2).ping()
                return
            except redis.RedisError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}")
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()


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
