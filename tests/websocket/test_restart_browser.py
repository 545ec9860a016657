"""coremq.js in Chromium across real restarts of run_coremq: a durable queue's ids go on, and nothing comes twice."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import WebSocketRoute

from coremq_client import MessageQueue

from pages import client_page, events, settled
from tabs import Tab
from webservers import Servers, free_port

pytestmark = pytest.mark.timeout(180)

WAIT = 30_000  # ms: how long a page may take to show something (a wait, not a measurement)


def publish(port: int, *texts: str) -> None:
    with MessageQueue("127.0.0.1", port) as client:
        for text in texts:
            client.publish("q", text)


def wait_for(page: Any, count: int) -> list[list[Any]]:
    page.wait_for_function(f"got.length >= {count}", timeout=WAIT)
    return page.evaluate("got")


def test_durable_queue_resumes_across_in_process_restarts(servers: Servers, new_page: Any, tmp_path: Path) -> None:
    """run_coremq restarts twice (nothing missed, then one message missed): every id reaches the page once, in order."""
    port, web_port, durable = free_port(), free_port(), tmp_path / "history.sqlite3"
    server = servers.run_coremq(port, web_port, durable_path=durable)
    blocked = threading.Event()

    def gate(route: WebSocketRoute) -> None:
        # While blocked, the page's reconnection attempts fail as if the server were still down.
        if blocked.is_set():
            route.close(code=1013, reason="blocked by the test")
        else:
            route.connect_to_server()

    page = client_page(new_page, web_port, before=lambda p: p.route_web_socket("**/ws/coremq/", gate))
    page.wait_for_function(settled, timeout=WAIT)
    publish(port, "1", "2", "3", "4", "5")
    wait_for(page, 5)

    # A restart that loses nothing: the next live message is not a hole to fill from history.
    server.stop()
    server = servers.run_coremq(port, web_port, durable_path=durable)
    page.wait_for_function(f"events.filter(([n]) => n === 'reset').length === 1 && {settled}", timeout=WAIT)
    publish(port, "6")
    wait_for(page, 6)

    # A restart while the page is away and a message is published: it comes from history, once.
    blocked.set()
    server.stop()
    page.wait_for_function("mq.state === 'reconnecting'", timeout=WAIT)
    server = servers.run_coremq(port, web_port, durable_path=durable)
    publish(port, "7")
    blocked.clear()
    page.wait_for_function(f"events.filter(([n]) => n === 'reset').length === 2 && {settled}", timeout=WAIT)
    publish(port, "8")
    wait_for(page, 8)
    page.wait_for_timeout(300)  # a duplicate, were one sent, would be in by now
    got = page.evaluate("got")
    assert [(item[0], item[1]) for item in got] == [(n, str(n)) for n in range(1, 9)]
    assert [item[2] for item in got] == [False] * 6 + [True, False]
    assert events(page, "gap") == [] and page.errors == []


def test_durable_queue_resumes_when_a_separate_daphnes_broker_restarts(servers: Servers, new_page: Any,
                                                                       tmp_path: Path) -> None:
    """Under a separate daphne the bridge reconnects after a broker restart: the page gets each durable id once."""
    port, daphne_port, durable = free_port(), free_port(), tmp_path / "history.sqlite3"
    broker = servers.run_coremq(port, durable_path=durable)
    servers.daphne(port, daphne_port)
    page = client_page(new_page, daphne_port)
    page.wait_for_function(settled, timeout=WAIT)
    publish(port, "1", "2", "3", "4", "5")
    wait_for(page, 5)
    broker.stop()
    broker = servers.run_coremq(port, durable_path=durable)
    page.wait_for_function(f"events.filter(([n]) => n === 'reset').length === 1 && {settled}", timeout=WAIT)
    publish(port, "6")
    wait_for(page, 6)
    broker.stop()
    servers.run_coremq(port, durable_path=durable)
    publish(port, "7")  # before or after the bridge is back: from history or live, once either way
    page.wait_for_function(f"events.filter(([n]) => n === 'reset').length === 2 && {settled}", timeout=WAIT)
    publish(port, "8")
    wait_for(page, 8)
    page.wait_for_timeout(300)  # a duplicate, were one sent, would be in by now
    got = page.evaluate("got")
    assert [(item[0], item[1]) for item in got] == [(n, str(n)) for n in range(1, 9)]
    assert events(page, "gap") == [] and page.errors == [] and page.evaluate("window.sockets") == 1


def test_the_subscribe_answer_says_which_queues_continued(servers: Servers, tmp_path: Path) -> None:
    """After a restart the subscribe answer marks a durable queue `continued`; a queue new in this run is not."""
    port, web_port, durable = free_port(), free_port(), tmp_path / "history.sqlite3"
    server = servers.run_coremq(port, web_port, durable_path=durable)
    publish(port, "1", "2")
    server.stop()
    servers.run_coremq(port, web_port, durable_path=durable)
    tab = Tab(web_port)
    answer = tab.request({"action": "subscribe", "queues": ["q", "fresh"], "ref": 1})
    assert answer["sequence"] == {"q": {"first": 1, "last": 2, "continued": True}, "fresh": {"first": None, "last": 0}}
    tab.close()
