"""Fixtures shared by the whole suite: a real broker on 127.0.0.1:0."""

from __future__ import annotations

from typing import Iterator

import pytest

from brokers import BrokerThread
from coremq_broker.core.config import BrokerConfig


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
