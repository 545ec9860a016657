"""Fixtures for the WebSocket bridge: brokers on the test's loop, browsers as communicators, real servers and Chromium."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import pytest
import pytest_asyncio
from channels.testing import WebsocketCommunicator

from coremq_broker.core.broker import Broker
from coremq_broker.core.config import BrokerConfig
from coremq_broker.transports.tcp import TcpConnection
from coremq_broker.transports.websocket.links import close_bridges
from webservers import CHROMIUM, CHROMIUM_ARGS, Servers
from servers import migrate

ORIGIN = (b"origin", b"http://127.0.0.1:8000")


class Browser:
    """A WebSocket client of the project's ASGI app, speaking JSON frames; ``welcome`` is read on open."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.communicator = communicator
        self.welcome: dict = {}
        self.id = ""

    async def open(self) -> "Browser":
        connected, _ = await self.communicator.connect(timeout=10)
        assert connected
        self.welcome = await self.receive()
        assert self.welcome["type"] == "welcome", self.welcome
        self.id = self.welcome["connection_id"]
        return self

    async def send(self, frame: Any) -> None:
        await self.communicator.send_to(text_data=frame if isinstance(frame, str) else json.dumps(frame))

    async def receive(self, timeout: float = 10) -> dict:
        output = await self.communicator.receive_output(timeout)
        assert output["type"] == "websocket.send", output
        return json.loads(output["text"])

    async def receive_type(self, kind: str, timeout: float = 10) -> dict:
        """The next frame of type ``kind``; frames of other types before it are skipped."""
        while True:
            frame = await self.receive(timeout)
            if frame["type"] == kind:
                return frame

    async def request(self, frame: dict) -> dict:
        """Send a request and return the frame that carries its ``ref`` back (messages in between are skipped)."""
        await self.send(frame)
        while True:
            answer = await self.receive()
            if answer.get("ref") == frame.get("ref") and answer["type"] != "message":
                return answer

    async def nothing_pending(self) -> bool:
        return await self.communicator.receive_nothing(timeout=0.2)

    async def close(self) -> None:
        await self.communicator.disconnect()


OpenBrowser = Callable[..., Awaitable[Browser]]


@pytest_asyncio.fixture
async def in_process_broker() -> AsyncIterator[Broker]:
    """A broker started on the test's own event loop, so the bridge links to it in-process (as in run_coremq)."""
    broker = Broker(BrokerConfig(host="127.0.0.1", port=0, shutdown_timeout=2.0), transport=TcpConnection)
    await broker.start()
    try:
        yield broker
    finally:
        await close_bridges()
        await broker.close()


@pytest_asyncio.fixture
async def open_browser() -> AsyncIterator[OpenBrowser]:
    """``await open_browser(path="/ws/coremq/", headers=...)``: a connected browser with its welcome read."""
    from coremq_project.asgi import application

    opened: list[Browser] = []

    async def make(path: str = "/ws/coremq/", *, headers: list[tuple[bytes, bytes]] | None = None) -> Browser:
        communicator = WebsocketCommunicator(application, path, headers=[ORIGIN] if headers is None else headers)
        browser = Browser(communicator)
        opened.append(browser)
        return await browser.open()

    yield make
    for browser in opened:
        try:
            await asyncio.wait_for(browser.close(), 5)
        except (Exception, asyncio.CancelledError):  # already closed, or the app ended
            pass
    await close_bridges()


@pytest.fixture(scope="session")
def e2e_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database for the servers of the browser tests."""
    database = tmp_path_factory.mktemp("e2e") / "db.sqlite3"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "coremq_project.settings", "COREMQ_DATABASE": str(database)}
    migrate(env)
    return database


@pytest.fixture
def servers(e2e_database: Path) -> Iterator[Servers]:
    """Start ``run_coremq`` and daphne processes of the project; they are stopped after the test."""
    started = Servers(e2e_database)
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Headless Chromium (Debian's, which .ci/run installs) driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def new_page(chromium: Any) -> Iterator[Callable[[str], Any]]:
    """``new_page(url, **context_options)``: a fresh tab (own context, so own storage) with the page's errors collected."""
    contexts = []

    def open_page(url: str, **context_options: Any) -> Any:
        context = chromium.new_context(viewport={"width": 1240, "height": 860}, **context_options)
        contexts.append(context)
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        page.goto(url)
        return page

    yield open_page
    for context in contexts:
        context.close()
