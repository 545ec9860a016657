"""The bridge from a process without the broker (as under a separate daphne): one TCP link, reconnecting by itself."""

from __future__ import annotations

import asyncio

import pytest

from coremq_broker.transports.websocket.links import get_bridge
from coremq_client import AsyncMessageQueue

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


@pytest.fixture
def remote_settings(settings, broker):
    """settings.COREMQ pointing at the test broker, which runs on another loop (so the link is remote)."""
    settings.COREMQ = {**settings.COREMQ, "HOST": broker.host, "PORT": broker.port}
    return broker


def bridge_connections(broker) -> int:
    return broker.call(lambda: sum(1 for c in broker.broker.registry.connections.values() if c.transport_name == "tcp"))


async def test_many_browsers_one_connection(remote_settings, open_browser) -> None:
    """Browsers of a web process share one TCP connection to the broker, and messages reach them all."""
    browsers = [await open_browser("/ws/coremq/?queues=room") for _ in range(4)]
    for browser in browsers:
        await browser.receive_type("subscribed")
    assert (await get_bridge()).link.kind == "remote"
    assert bridge_connections(remote_settings) == 1
    async with AsyncMessageQueue(remote_settings.host, remote_settings.port) as client:
        await client.publish("room", {"hello": "everyone"})
        for browser in browsers:
            message = await browser.receive_type("message")
            assert (message["message"], message["sender"]) == ({"hello": "everyone"}, client.connection_id)


async def test_point_to_point_over_the_remote_link(remote_settings, open_browser) -> None:
    """A TCP client reaches one browser by its id through the remote bridge, and the browser answers it."""
    browser = await open_browser()
    async with AsyncMessageQueue(remote_settings.host, remote_settings.port) as client:
        await client.publish(browser.id, "ping")
        message = await browser.receive_type("message")
        assert (message["queue"], message["message"]) == (browser.id, "ping")
        await browser.request({"action": "publish", "queue": client.connection_id, "message": "pong", "ref": 1})
        delivery = await client.receive(timeout=10)
        assert (delivery.message, delivery.sender) == ("pong", browser.id)


async def test_broker_restart_new_welcome_and_resubscribed(remote_settings, open_browser) -> None:
    """After a broker restart the bridge reconnects by itself: browsers get a new id and epoch and keep their queues."""
    browser = await open_browser("/ws/coremq/?queues=news")
    await browser.receive_type("subscribed")
    await asyncio.to_thread(remote_settings.restart)
    welcome = await browser.receive_type("welcome")
    assert welcome["connection_id"] != browser.id and welcome["epoch"] != browser.welcome["epoch"]
    assert welcome["connection_id"].endswith("/" + browser.id.rpartition("/")[2])
    async with AsyncMessageQueue(remote_settings.host, remote_settings.port) as client:
        await client.publish("news", "after the restart")
        message = await browser.receive_type("message")
        assert (message["message"], message["id"]) == ("after the restart", 1)
    await browser.send({"action": "publish", "queue": welcome["connection_id"], "message": "me", "ref": 2})
    frames = {frame["type"]: frame for frame in [await browser.receive(), await browser.receive()]}
    assert frames["published"]["ref"] == 2 and frames["message"]["queue"] == welcome["connection_id"]


async def test_requests_wait_for_the_reconnection(remote_settings, open_browser) -> None:
    """A publish made while the broker restarts is carried out on the new connection, not lost."""
    reader, writer = await open_browser("/ws/coremq/?queues=q"), await open_browser()
    await reader.receive_type("subscribed")
    port = remote_settings.port
    await asyncio.to_thread(remote_settings.close)
    await writer.send({"action": "publish", "queue": "q", "message": "while away", "ref": "w"})
    await asyncio.sleep(0.2)  # let the publish reach the bridge while nothing listens
    reopened = await asyncio.to_thread(remote_settings._open, remote_settings.config.with_options(port=port))
    remote_settings.broker = reopened
    answer = await writer.receive_type("published")
    assert answer["ref"] == "w"
    assert (await reader.receive_type("message"))["message"] == "while away"
