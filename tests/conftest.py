"""Fixtures shared by the whole suite: a real broker on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Iterator

import pytest

from coremq_broker.broker import Broker
from coremq_broker.config import BrokerConfig


class BrokerThread:
    """A real :class:`Broker` serving from its own event loop in a thread."""

    def __init__(self, config: BrokerConfig, **broker_options: Any) -> None:
        self.config = config
        self.broker_options = broker_options
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


@pytest.fixture
def broker_config() -> BrokerConfig:
    """The configuration of the ``broker`` fixture; override it in a module to change limits."""
    return BrokerConfig(host="127.0.0.1", port=0, shutdown_timeout=2.0)


@pytest.fixture
def broker(broker_config: BrokerConfig) -> Iterator[BrokerThread]:
    """A running broker on an ephemeral port, closed after the test."""
    running = BrokerThread(broker_config)
    try:
        yield running
    finally:
        running.stop()
