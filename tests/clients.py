"""Both Python clients behind one blocking interface, so that a scenario is written once for both.

``MessageQueue`` is used as it is; ``AsyncMessageQueue`` runs on an event loop
of its own in another thread and its coroutines are called from the test's
thread. Either kind can cut its connection from its own side (``cut()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import pytest

from brokers import BrokerThread
from coremq_client import AsyncMessageQueue, MessageQueue

#: Bounds so that a broken client fails instead of hanging; nothing is timed.
PATIENCE = 60.0
#: Reconnect at once: tests wait for reconnections, not for backoff.
FAST = {"backoff": 0.01, "max_backoff": 0.05}

Make = Callable[..., Any]
#: ``await connect(**options)``: a connected AsyncMessageQueue (see :func:`async_clients`).
Connect = Callable[..., Awaitable[AsyncMessageQueue]]
__all__ = ["PATIENCE", "FAST", "BrokerThread", "SyncClient", "AsyncClient", "client_factory", "Connect",
           "async_clients"]


@contextlib.asynccontextmanager
async def async_clients(host: str, port: int) -> AsyncIterator[Connect]:
    """Make connected AsyncMessageQueues of the broker at ``host:port``; all are closed at the end."""
    clients: list[AsyncMessageQueue] = []

    async def make(**options: Any) -> AsyncMessageQueue:
        client = AsyncMessageQueue(host, port, **options)
        clients.append(client)
        await client.connect()
        return client

    try:
        yield make
    finally:
        for client in clients:
            await client.close()


class SyncClient:
    """A MessageQueue with a way to cut its connection from its own side."""

    def __init__(self, broker: BrokerThread, **options: Any) -> None:
        self.client = MessageQueue(broker.host, broker.port, **FAST, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def cut(self) -> None:
        self.client._conn.sock.shutdown(socket.SHUT_RDWR)


class AsyncClient:
    """An AsyncMessageQueue on an event loop in another thread, used with blocking calls."""

    def __init__(self, broker: BrokerThread, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="async-client", daemon=True)
        self.thread.start()

        async def make() -> AsyncMessageQueue:
            return AsyncMessageQueue(broker.host, broker.port, **FAST, **options)

        self.client = self._run(make())

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(PATIENCE)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.client, name)
        if asyncio.iscoroutinefunction(attribute):
            return lambda *args, **kwargs: self._run(attribute(*args, **kwargs))
        if callable(attribute):  # plain methods run on the client's loop too (set_credentials)
            async def call(*args: Any, **kwargs: Any) -> Any:
                return attribute(*args, **kwargs)
            return lambda *args, **kwargs: self._run(call(*args, **kwargs))
        return attribute

    def cut(self) -> None:
        self.loop.call_soon_threadsafe(self.client._conn.writer.transport.abort)

    def close(self) -> None:
        self._run(self.client.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(PATIENCE)
        self.loop.close()


@pytest.fixture(params=["sync", "async"])
def client_factory(request) -> Iterator[Callable[[BrokerThread], Make]]:
    """``client_factory(broker)(**options)`` makes a client of either kind, connected unless ``connect=False``.

    All are closed afterwards.
    """
    made: list[Any] = []

    def for_broker(broker: BrokerThread) -> Make:
        def make(*, connect: bool = True, **options: Any) -> Any:
            kind = SyncClient if request.param == "sync" else AsyncClient
            client = kind(broker, **options)
            made.append(client)
            if connect:
                client.connect()
            return client
        return make

    yield for_broker
    for client in made:
        client.close()
