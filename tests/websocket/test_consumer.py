"""The /ws/coremq/ consumer with a broker on the same loop (as inside run_coremq): one world with TCP clients."""

from __future__ import annotations

import json
from typing import AsyncIterator

import pytest
import pytest_asyncio
from channels.testing import WebsocketCommunicator

from coremq_broker.core.broker import Broker
from coremq_broker.transports.websocket.bridge import CLOSE_SERVICE_RESTART
from coremq_broker.transports.websocket.links import get_bridge
from clients import Connect, async_clients
from coremq_client import AsyncMessageQueue

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

TcpClient = Connect


@pytest_asyncio.fixture
async def tcp_client(in_process_broker: Broker) -> AsyncIterator[TcpClient]:
    """``await tcp_client(queues=[...])``: an AsyncMessageQueue of the same broker, over TCP."""
    async with async_clients(in_process_broker.host, in_process_broker.port) as make:
        yield make


async def test_welcome_gives_a_sub_address_of_the_bridge(in_process_broker, open_browser) -> None:
    """Each browser's id is <bridge connection id>/<n>; the welcome also says the epoch and the frame limit."""
    first, second = await open_browser(), await open_browser()
    bridge_id, _, number = first.id.rpartition("/")
    assert bridge_id in in_process_broker.registry.connections and number.isdigit()
    assert second.id.rpartition("/")[0] == bridge_id and second.id != first.id
    assert first.welcome["epoch"] and first.welcome["max_message_size"] == 64 * 1024


async def test_query_string_subscribes_on_connect(in_process_broker, open_browser) -> None:
    """?queues=a,b subscribes to both at once and answers with their sequence."""
    browser = await open_browser("/ws/coremq/?queues=a,b")
    answer = await browser.receive()
    assert answer == {"type": "subscribed", "queues": ["a", "b"], "ref": None,
                      "sequence": {"a": {"first": None, "last": 0}, "b": {"first": None, "last": 0}}}


async def test_browser_to_browser(in_process_broker, open_browser) -> None:
    """A browser's publish reaches another subscribed browser, with its id as the sender; the ref comes back."""
    reader, writer = await open_browser("/ws/coremq/?queues=chat"), await open_browser()
    await reader.receive_type("subscribed")
    answer = await writer.request({"action": "publish", "queue": "chat", "message": {"text": "hi"}, "ref": "p1"})
    assert answer == {"type": "published", "queue": "chat", "id": 1, "ref": "p1"}
    message = await reader.receive()
    assert message["type"] == "message" and message["queue"] == "chat" and message["id"] == 1
    assert message["message"] == {"text": "hi"} and message["sender"] == writer.id


async def test_publisher_gets_its_own_message_when_subscribed(in_process_broker, open_browser) -> None:
    """A browser subscribed to a queue also sees its own publishes there (one path for rendering)."""
    browser = await open_browser("/ws/coremq/?queues=chat")
    await browser.receive_type("subscribed")
    await browser.send({"action": "publish", "queue": "chat", "message": "mine", "ref": 1})
    message = await browser.receive_type("message")
    assert (message["message"], message["sender"]) == ("mine", browser.id)


async def test_tcp_to_browser_and_back(in_process_broker, open_browser, tcp_client) -> None:
    """A TCP publish reaches subscribed browsers, and a browser's publish reaches TCP subscribers."""
    browser = await open_browser("/ws/coremq/?queues=news")
    await browser.receive_type("subscribed")
    client = await tcp_client(queues=["replies"])
    await client.publish("news", ["an", "array"])
    message = await browser.receive_type("message")
    assert message["message"] == ["an", "array"] and message["sender"] == client.connection_id
    await browser.request({"action": "publish", "queue": "replies", "message": "thanks", "ref": 2})
    delivery = await client.receive(timeout=10)
    assert (delivery.queue, delivery.message, delivery.sender) == ("replies", "thanks", browser.id)


async def test_point_to_point_reaches_one_browser(in_process_broker, open_browser, tcp_client) -> None:
    """A message to a browser's id reaches that browser only, without a subscription; it can answer the sender."""
    target, other = await open_browser("/ws/coremq/?queues=marker"), await open_browser("/ws/coremq/?queues=marker")
    await target.receive_type("subscribed")
    await other.receive_type("subscribed")
    client = await tcp_client()
    await client.publish(target.id, {"secret": 1})
    await client.publish("marker", "after")
    direct = await target.receive_type("message")
    assert (direct["queue"], direct["message"], direct["sender"]) == (target.id, {"secret": 1}, client.connection_id)
    assert (await other.receive())["message"] == "after"  # nothing for it came before the marker
    await target.request({"action": "publish", "queue": client.connection_id, "message": "pong", "ref": 1})
    reply = await client.receive(timeout=10)
    assert (reply.queue, reply.message, reply.sender) == (client.connection_id, "pong", target.id)


async def test_history_is_the_brokers_history(in_process_broker, open_browser, tcp_client) -> None:
    """History asked by a browser holds what TCP clients published, with ids and the sequence."""
    client = await tcp_client()
    for n in range(3):
        await client.publish("log", {"n": n})
    browser = await open_browser()
    answer = await browser.request({"action": "history", "queues": ["log"], "since": {"log": 1}, "ref": "h"})
    assert answer["type"] == "history" and answer["sequence"] == {"log": {"first": 1, "last": 3}}
    assert [(e["id"], e["message"]) for e in answer["history"]["log"]] == [(2, {"n": 1}), (3, {"n": 2})]


async def test_one_upstream_subscription_per_queue(in_process_broker, open_browser) -> None:
    """Many browsers on one queue make one broker connection with one subscription; the last to leave ends it."""
    browsers = [await open_browser("/ws/coremq/?queues=shared") for _ in range(5)]
    for browser in browsers:
        await browser.receive_type("subscribed")
    registry = in_process_broker.registry
    assert len(registry.connections) == 1
    bridge_connection = next(iter(registry.connections.values()))
    assert list(registry.queues["shared"].subscribers) == [bridge_connection]
    for browser in browsers:
        await browser.request({"action": "unsubscribe", "queues": ["shared"], "ref": "u"})
    await browsers[0].request({"action": "history", "queues": ["shared"], "ref": "sync"})  # the unsubscribe has run
    assert "shared" not in bridge_connection.subscriptions


async def test_private_queues_stay_private(in_process_broker, open_browser) -> None:
    """A browser cannot subscribe to or read another browser's id, nor publish to the bridge's own queue."""
    mine, theirs = await open_browser(), await open_browser()
    bridge_id = mine.id.rpartition("/")[0]
    for request in ({"action": "subscribe", "queues": [theirs.id]}, {"action": "history", "queues": [theirs.id]},
                    {"action": "publish", "queue": bridge_id, "message": {"coremq_subscribe": ["x"]}}):
        answer = await mine.request({**request, "ref": "r"})
        assert answer["type"] == "error" and "permission denied" in answer["error"]
    assert (await mine.request({"action": "subscribe", "queues": [mine.id], "ref": "own"}))["type"] == "subscribed"


async def test_bad_frames_get_error_frames_and_the_connection_stays(in_process_broker, open_browser) -> None:
    """Invalid JSON, an unknown action or a binary frame is answered with an error; later requests still work."""
    browser = await open_browser()
    await browser.send("{not json")
    assert (await browser.receive())["error"].startswith("invalid JSON")
    await browser.send({"action": "fly", "ref": 5})
    assert await browser.receive() == {"type": "error", "ref": 5, "code": "unknown_request",
                                       "error": "unknown action 'fly': use subscribe, unsubscribe, publish, history or auth"}
    await browser.communicator.send_to(bytes_data=b"\x00\x01")
    assert "binary" in (await browser.receive())["error"]
    answer = await browser.request({"action": "publish", "queue": "q", "message": "still here", "ref": 6})
    assert answer["type"] == "published"


async def test_frame_size_limit_setting(in_process_broker, open_browser, settings) -> None:
    """COREMQ['WEBSOCKET_MAX_MESSAGE_SIZE'] bounds incoming frames; a larger one gets an error, not a close."""
    settings.COREMQ = {**settings.COREMQ, "WEBSOCKET_MAX_MESSAGE_SIZE": 200}
    browser = await open_browser()
    big = json.dumps({"action": "publish", "queue": "q", "message": "x" * 300, "ref": 1})
    await browser.send(big)
    assert await browser.receive() == {"type": "error", "ref": None, "code": "message_too_large",
                                       "error": f"message too large: {len(big)} bytes, limit is 200"}
    assert (await browser.request({"action": "publish", "queue": "q", "message": "ok", "ref": 2}))["type"] == "published"


async def test_refused_by_the_broker_is_an_error_frame(in_process_broker, open_browser) -> None:
    """A request the broker refuses (another TCP connection's private queue) comes back as an error with the ref."""
    browser = await open_browser()
    other = next(iter(in_process_broker.registry.connections))  # the bridge is a connection too; use a TCP one
    client = AsyncMessageQueue(in_process_broker.host, in_process_broker.port)
    await client.connect()
    try:
        answer = await browser.request({"action": "subscribe", "queues": [client.connection_id], "ref": 9})
        assert answer["type"] == "error" and answer["ref"] == 9 and "permission denied" in answer["error"]
        assert other in in_process_broker.registry.connections
    finally:
        await client.close()


@pytest.mark.django_db(transaction=True)  # channels' denier closes old database connections
async def test_foreign_origins_are_refused(in_process_broker) -> None:
    """AllowedHostsOriginValidator: an origin outside ALLOWED_HOSTS, or none, cannot open the WebSocket."""
    from coremq_project.asgi import application

    for headers in ([(b"origin", b"http://evil.example")], []):
        communicator = WebsocketCommunicator(application, "/ws/coremq/", headers=headers)
        connected, _ = await communicator.connect(timeout=10)
        assert not connected
        await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_session_user_is_attached(in_process_broker, open_browser, django_user_model) -> None:
    """A browser logged in to Django carries its user into the bridge (AuthMiddlewareStack)."""
    from asgiref.sync import sync_to_async
    from django.test import Client

    def login() -> str:
        user = django_user_model.objects.create_user("ada", password="pw-ada-123")
        client = Client()
        client.force_login(user)
        return client.cookies["sessionid"].value

    session = await sync_to_async(login)()
    browser = await open_browser(headers=[(b"origin", b"http://127.0.0.1:8000"), (b"cookie", f"sessionid={session}".encode())])
    bridge = await get_bridge()
    user = bridge.browsers[int(browser.id.rpartition("/")[2])].user
    assert await sync_to_async(lambda: user.username)() == "ada"


async def test_messages_arrive_in_order(in_process_broker, open_browser, tcp_client) -> None:
    """A burst of TCP publishes reaches a browser complete and in order."""
    browser = await open_browser("/ws/coremq/?queues=burst")
    await browser.receive_type("subscribed")
    client = await tcp_client(options={"reply": False})
    for n in range(500):
        await client.publish("burst", {"n": n}, reply=False)
    received = [(await browser.receive_type("message"))["message"]["n"] for _ in range(500)]
    assert received == list(range(500))


async def test_broker_shutdown_closes_browsers_with_a_reason(in_process_broker, open_browser) -> None:
    """When the broker closes, each browser gets an error frame, then a close with code 4012 (the broker is restarting)."""
    browser = await open_browser("/ws/coremq/?queues=q")
    await browser.receive_type("subscribed")
    await in_process_broker.close()
    error = await browser.receive()
    assert error["type"] == "error" and "broker" in error["error"]
    closing = await browser.communicator.receive_output(10)
    assert closing == {"type": "websocket.close", "code": CLOSE_SERVICE_RESTART}
