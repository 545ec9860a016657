"""The Channels tutorial's chat room under daphne, on channels_redis and on CoreMQ, switched by CHANNEL_LAYERS alone.

Each test runs once per layer (``layer``: redis, coremq). The chat project
(``tests/layers/chatapp``) is the same code; only the environment's
``CHAT_CHANNEL_LAYERS`` (the whole setting, JSON) differs. Clients are real:
the ``websockets`` package and Chromium.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import websockets

from servers import ROOT, ServerProcess

HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def channel_layers(layer: str, address: str) -> dict:
    """The CHANNEL_LAYERS setting of each backend: the one thing that changes between the two runs."""
    if layer == "redis":
        return {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [address]}}}
    return {"default": {"BACKEND": "coremq_broker.layers.CoreMQChannelLayer", "CONFIG": {"hosts": [address]}}}


class ChatServer(ServerProcess):
    """``daphne chatapp.asgi:application`` on a free port."""

    def __init__(self, setting: dict) -> None:
        self.port = _free_port()
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "chatapp.settings", "PYTHONUNBUFFERED": "1",
               "CHAT_CHANNEL_LAYERS": json.dumps(setting),
               "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")])}
        super().__init__([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
                          "chatapp.asgi:application"], env)
        deadline = time.monotonic() + 60
        while not _accepts(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"daphne did not start:\n{''.join(self.output)}")
            time.sleep(0.05)

    def url(self, room: str, scheme: str = "ws") -> str:
        path = f"/ws/chat/{room}/" if scheme == "ws" else f"/chat/{room}/"
        return f"{scheme}://127.0.0.1:{self.port}{path}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(params=["redis", "coremq"])
def chat_setting(request: pytest.FixtureRequest) -> dict:
    if request.param == "redis":
        return channel_layers("redis", request.getfixturevalue("redis_server").url)
    broker = request.getfixturevalue("layer_broker")
    return channel_layers("coremq", f"coremq://127.0.0.1:{broker.port}")


@pytest.fixture
def chat_servers(chat_setting: dict) -> Iterator[list[ChatServer]]:
    """Two daphne processes of the chat project on the same layer: a room spans both."""
    started = [ChatServer(chat_setting), ChatServer(chat_setting)]
    try:
        yield started
    finally:
        for server in started:
            server.stop()


async def _next_message(ws) -> str:
    return json.loads(await asyncio.wait_for(ws.recv(), 10))["message"]


async def _join(url: str):
    """A client in a room: the consumer joins the room's group before it accepts, so it is a member on return."""
    return await websockets.connect(url, origin="http://127.0.0.1")


@pytest.mark.asyncio
async def test_chat_room_with_websockets_clients(chat_servers):
    """Clients of one room, on two daphne processes, each get every message, each sender's in its order; others none."""
    one, two = chat_servers
    room = [await _join(one.url("lobby")), await _join(one.url("lobby")), await _join(two.url("lobby"))]
    elsewhere = await _join(two.url("kitchen"))
    try:
        for n in range(20):
            await room[n % 2].send(json.dumps({"message": f"m{n}"}))
        for ws in room:
            got = [await _next_message(ws) for _ in range(20)]
            for sender in (0, 1):  # two senders' messages may interleave; each one's keep their order
                assert [m for m in got if int(m[1:]) % 2 == sender] == [f"m{n}" for n in range(sender, 20, 2)]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(elsewhere.recv(), 0.5)
        await room[2].close()  # leaves the group (group_discard); the others go on
        await room[0].send(json.dumps({"message": "after"}))
        assert await _next_message(room[1]) == "after"
        assert await _next_message(room[0]) == "after"
    finally:
        for ws in [*room, elsewhere]:
            await ws.close()


def test_chat_room_in_chromium(chat_servers):
    """The tutorial's page in two Chromium tabs on two processes: what one types shows in both chat logs."""
    from playwright.sync_api import expect, sync_playwright

    one, two = chat_servers
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pages = []
            for server in (one, two):
                page = browser.new_context().new_page()
                page.goto(server.url("lobby", "http"))
                expect(page.locator("body")).to_have_attribute("data-connected", "yes", timeout=15_000)
                pages.append(page)
            pages[0].fill("#chat-message-input", "hello from tab one")
            pages[0].keyboard.press("Enter")
            for page in pages:
                expect(page.locator("#chat-log")).to_have_value("hello from tab one\n", timeout=15_000)
            pages[1].fill("#chat-message-input", "and from tab two")
            pages[1].click("#chat-message-submit")
            for page in pages:
                expect(page.locator("#chat-log")).to_have_value(
                    "hello from tab one\nand from tab two\n", timeout=15_000)
        finally:
            browser.close()
