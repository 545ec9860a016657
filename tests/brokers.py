"""A real broker in a thread of the test process, for tests and fixtures.

Import it as ``from brokers import BrokerThread`` (tests/ is on sys.path):
``from conftest import ...`` is fragile, since every directory's conftest.py
is imported under that one name.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

from coremq_broker.core.broker import Broker
from coremq_broker.core.config import BrokerConfig
from coremq_broker.transports.tcp import TcpConnection

__all__ = ["BrokerThread"]


class BrokerThread:
    """A real :class:`Broker` serving from its own event loop in a thread."""

    def __init__(self, config: BrokerConfig, **broker_options: Any) -> None:
        self.config = config
        self.broker_options = {"transport": TcpConnection, **broker_options}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="coremq-test-broker", daemon=True)
        self.thread.start()
        self.broker = self._open(config)

    @property
    def host(self) -> str:
        return self.broker.host

    @property
    def port(self) -> int:
        return self.broker.port

    def call(self, function: Callable[[], Any]) -> Any:
        """Run ``function`` on the broker's loop and return its result."""

        async def run() -> Any:
            return function()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def _open(self, config: BrokerConfig) -> Broker:
        broker = Broker(config, **self.broker_options)
        asyncio.run_coroutine_threadsafe(broker.start(), self.loop).result(10)
        return broker

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.broker.close(), self.loop).result(30)

    def restart(self) -> None:
        """Close the broker (BYE to every client) and open a new one on the same port."""
        port = self.port
        self.close()
        self.broker = self._open(self.config.with_options(port=port))

    def stop(self) -> None:
        self.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
