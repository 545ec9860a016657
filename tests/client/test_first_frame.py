"""A client that only waits for messages is not closed by the broker's first-frame deadline."""

from __future__ import annotations

import asyncio
import time

from brokers import BrokerThread
from coremq_broker.core.config import BrokerConfig
from coremq_client.async_client import AsyncMessageQueue
from coremq_client.sync_client import MessageQueue


def _broker() -> BrokerThread:
    return BrokerThread(BrokerConfig(host="127.0.0.1", port=0, first_frame_timeout=0.3, shutdown_timeout=1.0))


def test_a_blocking_client_without_queues_keeps_its_connection_past_the_first_frame_deadline():
    """MessageQueue() with no queues, options or credentials still sends a request, so it keeps its id."""
    broker = _broker()
    try:
        with MessageQueue(broker.host, broker.port, backoff=0.05) as mq:
            first = mq.connection_id
            time.sleep(1.0)  # three deadlines
            assert mq.connection_id == first
            assert broker.call(lambda: broker.broker.registry.describe()["timeouts"]) == 0
            assert mq.status()["connections"] == 1
    finally:
        broker.close()


def test_an_async_client_without_queues_keeps_its_connection_past_the_first_frame_deadline():
    """AsyncMessageQueue() with nothing to replay keeps its id past the first-frame deadline too."""
    broker = _broker()

    async def run() -> None:
        async with AsyncMessageQueue(broker.host, broker.port, backoff=0.05) as mq:
            first = mq.connection_id
            await asyncio.sleep(1.0)
            assert mq.connection_id == first
            assert (await mq.status())["connections"] == 1

    try:
        asyncio.run(run())
        assert broker.call(lambda: broker.broker.registry.describe()["timeouts"]) == 0
    finally:
        broker.close()
