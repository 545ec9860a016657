"""get_history() follows the broker's size-limited pages: every message kept, once, in order."""

from __future__ import annotations

import asyncio

import pytest

from brokers import BrokerThread
from coremq_broker.core.config import BrokerConfig
from coremq_client.async_client import AsyncMessageQueue
from coremq_client.sync_client import MessageQueue
from wire import RawClient

LIMIT = 16 * 2**10
QUEUES = [f"h{q:02d}" for q in range(50)]


@pytest.fixture
def filled():
    """A broker whose 50 queues hold 20 messages of ~600 bytes each: many replies' worth at a 16 KiB frame limit."""
    broker = BrokerThread(BrokerConfig(host="127.0.0.1", port=0, history_length=20, max_frame_size=LIMIT,
                                       shutdown_timeout=1.0))
    publisher = RawClient(broker.host, broker.port)
    for name in QUEUES:
        for n in range(20):
            publisher.send(name, {"n": n, "pad": "x" * 600})
            assert publisher.read()[1]["response"] == "OK: Message sent"
    try:
        yield broker
    finally:
        broker.close()


def _numbers(history: dict) -> dict:
    return {name: [m["n"] for m in messages] for name, messages in history.items()}


def test_the_blocking_get_history_gathers_every_page(filled):
    """MessageQueue.get_history() of 50 queues returns all 20 messages of each, although one reply holds a few."""
    with MessageQueue(filled.host, filled.port, max_frame_size=LIMIT, reconnect=False) as mq:
        assert "more" in mq.history(*QUEUES)  # one raw page is not all of it
        assert _numbers(mq.get_history(*QUEUES)) == {name: list(range(20)) for name in QUEUES}
        assert _numbers(mq.get_history(*QUEUES, since=15)) == {name: list(range(15, 20)) for name in QUEUES}


def test_the_async_get_history_gathers_every_page(filled):
    """AsyncMessageQueue.get_history() of 50 queues returns all 20 messages of each."""

    async def run() -> dict:
        async with AsyncMessageQueue(filled.host, filled.port, max_frame_size=LIMIT, reconnect=False) as mq:
            return await mq.get_history(*QUEUES)

    assert _numbers(asyncio.run(run())) == {name: list(range(20)) for name in QUEUES}
