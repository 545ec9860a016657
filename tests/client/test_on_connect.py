"""on_connect: both clients hand the welcome of every connection, first and reconnected, to a callback."""

from __future__ import annotations

import asyncio
import queue

import pytest

from coremq_client import AsyncMessageQueue, MessageQueue

pytestmark = pytest.mark.timeout(60)


def test_sync_on_connect_sees_every_connection(broker) -> None:
    """MessageQueue calls on_connect with the welcome on connect and again, with a new id, after a reconnect."""
    welcomes: queue.Queue[dict] = queue.Queue()
    with MessageQueue(broker.host, broker.port, queues=["q"], on_connect=welcomes.put) as client:
        first = welcomes.get(timeout=5)
        assert first["connection_id"] == client.connection_id
        broker.restart()
        second = welcomes.get(timeout=10)
        assert second["connection_id"] != first["connection_id"]
        assert second["response"].startswith("OK:")


def test_sync_on_connect_failure_is_logged_not_raised(broker, caplog) -> None:
    """An on_connect that raises is logged; the client connects and works anyway."""
    def broken(welcome: dict) -> None:
        raise RuntimeError("broken callback")

    with MessageQueue(broker.host, broker.port, on_connect=broken) as client:
        assert client.publish("q", {"a": 1})["response"] == "OK: Message sent"
    assert "on_connect callback failed" in caplog.text


@pytest.mark.asyncio
async def test_async_on_connect_coroutine_runs_after_each_connection(broker) -> None:
    """AsyncMessageQueue runs a coroutine on_connect as a task per connection; it may make requests."""
    seen: asyncio.Queue[tuple[str, dict]] = asyncio.Queue()

    async def on_connect(welcome: dict) -> None:
        await seen.put((welcome["connection_id"], await client.status()))

    client = AsyncMessageQueue(broker.host, broker.port, queues=["q"], on_connect=on_connect)
    try:
        await client.connect()
        first_id, status = await asyncio.wait_for(seen.get(), 5)
        assert first_id == client.connection_id and status["response"] == "OK: Status"
        await asyncio.to_thread(broker.restart)
        second_id, _ = await asyncio.wait_for(seen.get(), 10)
        assert second_id != first_id
    finally:
        await client.close()
