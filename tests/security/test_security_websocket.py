"""Authentication and permission rules over the WebSocket: the same rules as TCP, for session users and tokens.

In-process (the broker on the test's loop, as under run_coremq) the bridge
checks browsers with the broker's live policy; remote (a run_coremq process
of its own) it logs in as a relay with CLIENT_TOKEN and follows the policy
with its own watcher.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from coremq_broker.models import ApiToken, PermissionRule
from coremq_broker.transports.websocket.bridge import CLOSE_CREDENTIALS
from coremq_broker.transports.websocket.links import close_bridges, get_bridge
from coremq_client import AsyncMessageQueue
from security_world import CASES, FAST_HASHERS, Secured, make_world, migrated_world, run_coremq, secured  # noqa: F401

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60), pytest.mark.django_db(transaction=True)]

ORIGIN = (b"origin", b"http://127.0.0.1:8000")

Open = Callable[..., Awaitable[tuple[WebsocketCommunicator, dict]]]


@pytest_asyncio.fixture
async def open_socket() -> AsyncIterator[Open]:
    """``await open_socket(who, path)``: a WebSocket of the project's app, as ``who``'s session; and its first frame."""
    from coremq_project.asgi import application

    sockets: list[WebsocketCommunicator] = []

    async def open_(who: str = "anonymous", path: str = "/ws/coremq/") -> tuple[WebsocketCommunicator, dict]:
        headers = [ORIGIN]
        if who != "anonymous":
            headers.append((b"cookie", f"sessionid={await sync_to_async(session_of)(who)}".encode()))
        socket = WebsocketCommunicator(application, path, headers=headers)
        sockets.append(socket)
        connected, _ = await socket.connect(timeout=10)
        assert connected
        return socket, await next_frame(socket)

    yield open_
    for socket in sockets:
        try:
            await socket.disconnect()
        except BaseException:  # already closed by the server
            pass
    await close_bridges()


def session_of(username: str) -> str:
    client = Client()
    client.force_login(User.objects.get(username=username))
    return client.cookies["sessionid"].value


async def next_frame(socket: WebsocketCommunicator, timeout: float = 5) -> dict:
    """The next JSON frame, or the close message itself."""
    output = await socket.receive_output(timeout)
    return json.loads(output["text"]) if output["type"] == "websocket.send" else output


async def ask(socket: WebsocketCommunicator, frame: dict) -> dict:
    """Send a request; return the frame that answers it (messages before it are skipped)."""
    await socket.send_to(text_data=json.dumps({**frame, "ref": "r"}))
    while True:
        answer = await next_frame(socket)
        if answer.get("ref") == "r" and answer.get("type") != "message":
            return answer


REQUESTS = {
    "subscribe": (lambda queue: {"action": "subscribe", "queues": [queue]}, "subscribed"),
    "publish": (lambda queue: {"action": "publish", "queue": queue, "message": {"x": 1}}, "published"),
    "history": (lambda queue: {"action": "history", "queues": [queue]}, "history"),
}


async def attempt(socket: WebsocketCommunicator, action: str, queue: str) -> dict:
    build, _ = REQUESTS[action]
    return await ask(socket, build(queue))


def allowed(answer: dict, action: str) -> bool:
    return answer["type"] == REQUESTS[action][1]


@pytest.mark.parametrize("who,action,queue,expected", CASES)
async def test_rules_over_websocket(secured: Secured, open_socket: Open, who: str, action: str, queue: str,
                                    expected: bool) -> None:
    """Each rule allows a session user what it grants over the WebSocket, and denies the rest like TCP does."""
    socket, welcome = await open_socket(who)
    assert welcome["type"] == "welcome"
    answer = await attempt(socket, action, queue)
    if expected:
        assert allowed(answer, action), answer
    else:
        assert answer == {"type": "error", "error": f"permission denied: {action} on queue {queue!r}",
                          "code": "permission_denied", "ref": "r", "action": action}


async def test_token_in_the_query_or_an_auth_request(secured: Secured, open_socket: Open) -> None:
    """?token= logs a browser in as the token's user; so does an auth request, after which its rules apply."""
    socket, _ = await open_socket(path=f"/ws/coremq/?token={secured.world.alice_token}")
    assert allowed(await attempt(socket, "subscribe", "secret"), "subscribe")

    socket, _ = await open_socket()
    assert not allowed(await attempt(socket, "subscribe", "secret"), "subscribe")
    for bad in (secured.world.expired_token, secured.world.revoked_token, "cmq_wrong"):
        assert await ask(socket, {"action": "auth", "token": bad}) == {
            "type": "error", "error": "authentication failed", "code": "auth_failed", "ref": "r", "action": "auth"}
    answer = await ask(socket, {"action": "auth", "token": secured.world.alice_token})
    assert answer == {"type": "authenticated", "user": "alice", "ref": "r"}
    assert allowed(await attempt(socket, "subscribe", "secret"), "subscribe")


async def test_a_token_that_does_not_log_in_is_refused(secured: Secured, open_socket: Open) -> None:
    """A wrong, expired or revoked ?token= gets "authentication failed" and a close with code 4008."""
    for token in ("cmq_wrong", secured.world.expired_token, secured.world.revoked_token):
        socket, first = await open_socket(path=f"/ws/coremq/?token={token}")
        assert first == {"type": "error", "error": "authentication failed", "code": "auth_failed", "ref": None}
        assert await next_frame(socket) == {"type": "websocket.close", "code": CLOSE_CREDENTIALS}


async def test_revoking_a_token_closes_its_browsers_within_a_second(secured: Secured, open_socket: Open) -> None:
    """A browser logged in with a token that is revoked is told so and closed within a second."""
    socket, _ = await open_socket(path=f"/ws/coremq/?token={secured.world.alice_token}")
    await attempt(socket, "subscribe", "secret")
    started = time.monotonic()
    await sync_to_async(ApiToken.objects.filter(pk=secured.world.alice_token_id).update)(revoked=timezone.now())
    assert (await next_frame(socket, timeout=2))["error"] == "credentials revoked"
    assert await next_frame(socket) == {"type": "websocket.close", "code": CLOSE_CREDENTIALS}
    assert time.monotonic() - started < 1.0


async def test_a_rule_change_ends_a_browsers_subscription(secured: Secured, open_socket: Open) -> None:
    """A subscription the rules no longer allow ends within a second, with an error, and nothing more arrives."""
    socket, _ = await open_socket("alice")
    assert allowed(await attempt(socket, "subscribe", "secret"), "subscribe")
    relay = await secured.connect("relay", token=secured.world.relay_token)
    started = time.monotonic()
    await sync_to_async(lambda: PermissionRule.objects.get(pattern="secret").groups.clear())()
    assert await next_frame(socket, timeout=2) == {
        "type": "error", "error": "permission denied: subscribe on queue 'secret' (subscription ended)",
        "code": "permission_denied", "ref": None, "queue": "secret"}
    assert time.monotonic() - started < 1.0
    await relay.publish("secret", {"after": "the change"})
    assert await socket.receive_nothing(timeout=0.3)


async def test_the_bridge_is_one_relay_connection(secured: Secured, open_socket: Open) -> None:
    """Under a deny policy the in-process bridge's own connection passes, as a relay; browsers do not."""
    socket, _ = await open_socket("bob")
    assert allowed(await attempt(socket, "subscribe", "news.eu"), "subscribe")
    bridge = await get_bridge()
    connection = secured.broker.registry.connections[bridge.connection_id]
    assert connection.describe()["user"] == "(websocket bridge)" and "news.eu" in connection.subscriptions
    assert not allowed(await attempt(socket, "subscribe", "unruled"), "subscribe")
    assert bridge.denials == 1


# -- a web process without the broker --------------------------------------------------------

@pytest.fixture
def remote_broker(tmp_path: Path, settings) -> Iterator[int]:
    """run_coremq (deny by default) in a process of its own, and settings that make this process a separate web app.

    Both databases hold the same world; this process logs in to the broker with
    the broker's relay token, and follows its own tables for browsers.
    """
    broker_world = migrated_world(tmp_path / "broker.sqlite3")
    server, port = run_coremq(tmp_path / "broker.sqlite3", coremq={"DEFAULT_POLICY": "deny"})
    settings.PASSWORD_HASHERS = FAST_HASHERS
    settings.COREMQ = {**settings.COREMQ, "HOST": "127.0.0.1", "PORT": port, "DEFAULT_POLICY": "deny",
                       "CLIENT_TOKEN": broker_world.relay_token}
    make_world()
    try:
        yield port
    finally:
        server.stop()


async def test_a_remote_bridge_applies_the_rules(remote_broker: int, open_socket: Open) -> None:
    """A separate web process checks browsers with its own copy of the rules and reaches the broker as a relay."""
    alice, _ = await open_socket("alice")
    bob, _ = await open_socket("bob")
    assert allowed(await attempt(alice, "subscribe", "secret"), "subscribe")
    assert not allowed(await attempt(bob, "subscribe", "secret"), "subscribe")
    assert (await get_bridge()).link.kind == "remote"
    async with AsyncMessageQueue("127.0.0.1", remote_broker, username="bob", password="bob-pw-1") as tcp:
        await tcp.publish("news.eu", {"n": 1})  # bob's right on the broker
    assert allowed(await attempt(alice, "history", "news.eu"), "history")

    await sync_to_async(lambda: PermissionRule.objects.get(pattern="secret").groups.clear())()
    ended = await next_frame(alice, timeout=2)
    assert ended["error"] == "permission denied: subscribe on queue 'secret' (subscription ended)"
