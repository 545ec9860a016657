"""Fixtures for the WebSocket bridge: brokers on the test's loop, browsers as communicators, real servers and Chromium."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import pytest
import pytest_asyncio
from channels.testing import WebsocketCommunicator

from coremq_broker.broker import Broker
from coremq_broker.config import BrokerConfig
from coremq_broker.websocket.links import close_bridges

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
    broker = Broker(BrokerConfig(host="127.0.0.1", port=0, shutdown_timeout=2.0))
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


# -- real servers and a real browser (the end-to-end tests) ------------------------------

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A server process of the project (``run_coremq`` or daphne) with its output collected."""

    def __init__(self, args: list[str], *, broker_port: int, database: Path, ready: str | None = None,
                 http_port: int | None = None, env: dict[str, str] | None = None) -> None:
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "e2e_settings", "COREMQ_DATABASE": str(database),
               "COREMQ_E2E_PORT": str(broker_port), "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]),
               **(env or {})}
        self.args = args
        self.process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
        self.output: list[str] = []
        self._ready = threading.Event()
        self._wanted = ready
        threading.Thread(target=self._read, daemon=True).start()
        if ready is not None:
            self._wait(lambda: self._ready.is_set(), f"a line starting with {ready!r}")
        if http_port is not None:
            self._wait(lambda: _answers(http_port), f"HTTP on port {http_port}")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            if self._wanted and line.startswith(self._wanted):
                self._ready.set()

    def _wait(self, condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                pytest.fail(f"{self.args[1:3]} exited {self.process.returncode}:\n{''.join(self.output)}")
            if time.monotonic() > deadline:
                self.process.kill()
                self.process.wait()
                pytest.fail(f"no {what} within {timeout}s:\n{''.join(self.output)}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (graceful), then kill if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/static/coremq/coremq.js", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def e2e_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database for the servers of the browser tests."""
    database = tmp_path_factory.mktemp("e2e") / "db.sqlite3"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "coremq_project.settings", "COREMQ_DATABASE": str(database)}
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    return database


class Servers:
    """Project servers started by one test; all stopped after it."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.started: list[Server] = []

    def run_coremq(self, port: int, web_port: int | None = None, *, max_write_buffer: int | None = None) -> Server:
        """``manage.py run_coremq --port P`` with ``--web-port W``, or ``--no-web`` without one."""
        args = [sys.executable, "manage.py", "run_coremq", "--port", str(port)]
        args += ["--no-web"] if web_port is None else ["--web-port", str(web_port)]
        ready = "CoreMQ web app on" if web_port is not None else "CoreMQ broker listening on"
        env = {} if max_write_buffer is None else {"COREMQ_E2E_MAX_WRITE_BUFFER": str(max_write_buffer)}
        return self._start(Server(args, broker_port=port, database=self.database, ready=ready, env=env))

    def daphne(self, port: int, web_port: int) -> Server:
        """``daphne coremq_project.asgi:application``: a web process of its own, linked to the broker on ``port``."""
        args = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(web_port),
                "coremq_project.asgi:application"]
        return self._start(Server(args, broker_port=port, database=self.database, http_port=web_port))

    def _start(self, server: Server) -> Server:
        self.started.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()


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
    """``new_page(url)``: a fresh tab (own context, so own storage) with the page's errors collected."""
    contexts = []

    def open_page(url: str) -> Any:
        context = chromium.new_context(viewport={"width": 1240, "height": 860})
        contexts.append(context)
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        page.goto(url)
        return page

    yield open_page
    for context in contexts:
        context.close()
