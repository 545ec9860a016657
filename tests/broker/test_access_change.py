"""One access check for TCP connections and the bridge's browsers, applied the moment the policy changes."""

from __future__ import annotations

import asyncio
import json

import pytest

from coremq_broker.core.access import RulePolicy, Rule
from coremq_broker.core.config import BrokerConfig
from coremq_broker.server import new_broker
from coremq_client.async_client import AsyncMessageQueue

pytestmark = pytest.mark.django_db(transaction=True)  # the bridge's links read Django settings


class Page:
    """A browser as the bridge sees it: the ASGI send collects its frames."""

    def __init__(self) -> None:
        self.frames: list[dict] = []

    async def send(self, message: dict) -> None:
        if message["type"] == "websocket.send":
            self.frames.append(json.loads(message["text"]))


@pytest.mark.asyncio
async def test_a_new_policy_ends_subscriptions_of_tcp_clients_and_idle_browsers_at_once() -> None:
    """set_access ends what the new policy denies, for a TCP client and a browser that receives nothing,
    before it returns (no poll): both get the same 'subscription ended' refusal, other queues stay."""
    from coremq_broker.transports.websocket.links import close_bridges, get_bridge

    everyone = frozenset({"publish", "subscribe", "history"})
    open_policy = RulePolicy(rules=(Rule("*", everyone, anonymous=True),))
    closed = RulePolicy(rules=(Rule("open.*", everyone, anonymous=True),), default="deny")
    broker = new_broker(BrokerConfig(host="127.0.0.1", port=0, shutdown_timeout=2.0), access=open_policy)
    await broker.start()
    client = AsyncMessageQueue(broker.host, broker.port)
    try:
        await client.connect()
        await client.subscribe("secret", "open.news")
        bridge = await get_bridge()
        page = Page()
        browser = bridge.attach(page.send)
        await bridge.subscribe(browser, ["secret", "open.news"])
        tcp = next(c for c in broker.registry.connections.values() if c.transport_name == "tcp")
        broker.set_access(closed)
        assert browser.queues == {"open.news"} and tcp.subscriptions == {tcp.id, "open.news"}
        await asyncio.sleep(0.05)  # the pump hands the browser its frames
        errors = [frame["error"] for frame in page.frames if frame["type"] == "error"]
        assert errors == ["permission denied: subscribe on queue 'secret' (subscription ended)"]
        # The TCP client and the bridge's own upstream subscription (no relay rule here); the browser.
        assert broker.registry.denials == 2 and bridge.denials == 1
    finally:
        await client.close()
        await close_bridges()
        await broker.close()
