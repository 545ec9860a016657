"""coremq.js given a list of URLs: two ``run_coremq --redis`` nodes with their web side, the first killed (kill -9).

The page (Chromium) is given both nodes' endpoints; a Python publisher on the
second node streams throughout. When the first node dies the client rotates to
the second URL, resumes from history and the page gets every message exactly
once, in order, with no gap.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from coremq_client import MessageQueue
from redis_servers import RedisServer, free_port
from servers import ROOT, ServerProcess, migrate

pytestmark = pytest.mark.timeout(180)
HERE = Path(__file__).resolve().parent
CLIENT = ROOT / "coremq_broker" / "static" / "coremq" / "coremq.js"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-features=LocalNetworkAccessChecks"]  # the page is routed, not served from 127.0.0.1
STREAM = 300  # messages, about 3 s at one per 10 ms


class WebNode(ServerProcess):
    """``run_coremq --redis URL --node-name N --web-port 0``: :attr:`port` (TCP) and :attr:`web_port`."""

    def __init__(self, redis_url: str, name: str, env: dict[str, str]) -> None:
        super().__init__([sys.executable, "manage.py", "run_coremq", "--no-memcached", "--host", "127.0.0.1",
                          "--port", "0", "--web-port", "0", "--redis", redis_url, "--node-name", name], env)
        self.port = int(re.search(r":(\d+) \(TCP\)", self.wait_for("CoreMQ broker listening on")).group(1))  # type: ignore[union-attr]
        self.web_port = int(re.search(r":(\d+)/", self.wait_for("CoreMQ web app on")).group(1))  # type: ignore[union-attr]
        self.url = f"ws://127.0.0.1:{self.web_port}/ws/coremq/"

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()


@pytest.fixture
def web_nodes(tmp_path: Path) -> Iterator[tuple[str, WebNode, WebNode]]:
    """The test page's origin, and nodes w1 and w2 (web side included) on one redis-server."""
    origin = f"http://127.0.0.1:{free_port()}"  # nothing listens: the browser's requests are answered by route()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "failover_settings", "COREMQ_DATABASE": str(tmp_path / "db.sqlite3"),
           "COREMQ_TEST_TRUSTED_ORIGIN": origin, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    migrate(env)
    redis = RedisServer()
    nodes: list[WebNode] = []
    try:
        nodes.append(WebNode(redis.url, "w1", env))
        nodes.append(WebNode(redis.url, "w2", env))
        yield origin, nodes[0], nodes[1]
    finally:
        for node in nodes:
            node.stop()
        redis.close()


def stream(port: int, sent: list[int], errors: list[BaseException]) -> None:
    try:
        with MessageQueue("127.0.0.1", port, timeout=10) as publisher:
            for n in range(STREAM):
                publisher.publish("stream", {"n": n})
                sent.append(n)
                time.sleep(0.01)
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def test_coremq_js_rotates_to_the_next_url_when_its_node_is_killed(web_nodes: tuple[str, WebNode, WebNode]) -> None:
    from playwright.sync_api import sync_playwright

    origin, first, second = web_nodes
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.route(f"{origin}/", lambda route: route.fulfill(
                content_type="text/html", body="<!doctype html><title>failover</title>"))
            page.goto(f"{origin}/")
            page.add_script_tag(path=str(CLIENT))
            page.evaluate("""async (urls) => {
                window.got = []; window.gaps = []; window.resets = [];
                window.mq = new CoreMQ(urls, { minDelay: 50, maxDelay: 400 });
                mq.on("gap", (gap) => gaps.push(gap));
                mq.on("reset", (reset) => resets.push(reset));
                await mq.subscribe("stream", (message, meta) => got.push([meta.id, message.n]));
            }""", [first.url, second.url])
            assert page.evaluate("[mq.urls, mq.url]") == [[first.url, second.url], first.url]
            sent: list[int] = []
            failures: list[BaseException] = []
            streamer = threading.Thread(target=stream, args=(second.port, sent, failures), daemon=True)
            streamer.start()
            page.wait_for_function("got.length >= 50", timeout=30_000)
            first.kill()  # while the stream flows
            assert len(sent) < STREAM
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", first.web_port), timeout=1).close()
            page.wait_for_function(f"got.length >= {STREAM}", timeout=60_000)
            streamer.join(30)
            assert failures == []
            time.sleep(0.3)  # anything twice would come now
            assert page.evaluate("got") == [[n + 1, n] for n in range(STREAM)]  # every message once, in order
            assert page.evaluate("[gaps, mq.url, mq.state]") == [[], second.url, "open"]
            # Each node's welcome has an epoch of its own: moving to another node is announced as a reset, and
            # the resume still delivers exactly (the queue's ids, kept in Redis, compare across nodes).
            assert page.evaluate("resets.length") == 1
            assert errors == []
        finally:
            browser.close()


def test_python_client_over_websocket_rotates_to_the_next_url(web_nodes: tuple[str, WebNode, WebNode]) -> None:
    """``MessageQueue(servers=[ws URL, ws URL])``: the first node killed mid-stream, every message once, in order."""
    _, first, second = web_nodes
    subscriber = MessageQueue(servers=[first.url, second.url], queues=["stream"], timeout=10, backoff=0.05)
    subscriber.connect()
    sent: list[int] = []
    failures: list[BaseException] = []
    streamer = threading.Thread(target=stream, args=(second.port, sent, failures), daemon=True)
    streamer.start()
    got: list[tuple[int, int]] = []
    try:
        while len(got) < STREAM:
            delivery = subscriber.receive(timeout=15)
            assert delivery is not None, (len(got), len(sent), failures)
            got.append((delivery.id, delivery.message["n"]))
            if len(got) == 50:
                first.kill()  # while the stream flows
                assert len(sent) < STREAM
        streamer.join(30)
        assert failures == []
        assert got == [(n + 1, n) for n in range(STREAM)]
        assert subscriber.receive(timeout=0.3) is None and not subscriber.gaps
        assert subscriber.address == second.url
    finally:
        subscriber.close()
