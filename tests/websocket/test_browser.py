"""End to end in headless Chromium: the demo page against run_coremq (and daphne) over real sockets."""

from __future__ import annotations

import threading

import pytest
from playwright.sync_api import WebSocketRoute, expect

from coremq_client import MessageQueue

from screenshots import screenshot_path
from webservers import Servers, free_port

pytestmark = pytest.mark.timeout(180)

WAIT = 30_000  # ms: how long the page may take to show something (a wait, not a measurement)


def open_demo(new_page, web_port: int):
    page = new_page(f"http://127.0.0.1:{web_port}/")
    expect(page.locator("#connection")).to_have_attribute("data-state", "open", timeout=WAIT)
    expect(page.locator("#log")).to_contain_text("subscribed to chat", timeout=WAIT)
    return page


def chat_line(page, text: str):
    return page.locator("#chat-messages li", has_text=text)


def test_two_pages_one_publishes_the_other_shows(servers: Servers, new_page) -> None:
    """A chat message sent from one page appears in another page, with the sender's name."""
    port, web_port = free_port(), free_port()
    servers.run_coremq(port, web_port)
    alice, bob = open_demo(new_page, web_port), open_demo(new_page, web_port)
    alice.fill("#chat-name", "alice")
    alice.fill("#chat-text", "hello from alice")
    alice.click("#chat-send")
    expect(chat_line(bob, "hello from alice")).to_contain_text("alice", timeout=WAIT)
    expect(chat_line(alice, "hello from alice")).to_have_class("mine", timeout=WAIT)
    assert alice.errors == [] and bob.errors == []


def test_python_client_and_django_view_reach_the_page(servers: Servers, new_page) -> None:
    """A message from a Python TCP client shows in the chat; a click that POSTs to a Django view moves the counter."""
    port, web_port = free_port(), free_port()
    servers.run_coremq(port, web_port)
    page = open_demo(new_page, web_port)
    expect(page.locator("#log")).to_contain_text("subscribed to counter", timeout=WAIT)
    with MessageQueue("127.0.0.1", port) as client:
        client.publish("chat", {"name": "python", "text": "hi from a TCP client"})
    expect(chat_line(page, "hi from a TCP client")).to_contain_text("python", timeout=WAIT)
    page.click("#counter-increment-10")
    expect(page.locator("#counter-value")).to_have_text("10", timeout=WAIT)
    page.click("#counter-increment")
    expect(page.locator("#counter-value")).to_have_text("11", timeout=WAIT)
    assert page.errors == []


def test_page_recovers_subscriptions_and_missed_messages_after_broker_restart(servers: Servers, new_page) -> None:
    """After run_coremq restarts, the page reconnects by itself, shows what was published meanwhile, then live ones."""
    port, web_port = free_port(), free_port()
    server = servers.run_coremq(port, web_port)
    blocked = threading.Event()

    def gate(route: WebSocketRoute) -> None:
        # While blocked, the page's reconnection attempts fail as if the server were still down.
        if blocked.is_set():
            route.close(code=1013, reason="blocked by the test")
        else:
            route.connect_to_server()

    page = new_page("about:blank")
    page.route_web_socket("**/ws/coremq/", gate)
    page.goto(f"http://127.0.0.1:{web_port}/")
    expect(page.locator("#log")).to_contain_text("subscribed to chat", timeout=WAIT)
    with MessageQueue("127.0.0.1", port) as client:
        client.publish("chat", {"name": "python", "text": "before the restart"})
    expect(chat_line(page, "before the restart")).to_be_visible(timeout=WAIT)

    blocked.set()
    server.stop()
    expect(page.locator("#connection")).to_have_attribute("data-state", "reconnecting", timeout=WAIT)
    servers.run_coremq(port, web_port)
    with MessageQueue("127.0.0.1", port) as client:  # the page cannot see these live
        client.publish("chat", {"name": "python", "text": "missed one"})
        client.publish("chat", {"name": "python", "text": "missed two"})
    blocked.clear()

    expect(chat_line(page, "missed one")).to_have_class("replayed", timeout=WAIT)
    expect(chat_line(page, "missed two")).to_have_class("replayed", timeout=WAIT)
    expect(page.locator("#connection")).to_have_attribute("data-state", "open", timeout=WAIT)
    with MessageQueue("127.0.0.1", port) as client:
        client.publish("chat", {"name": "python", "text": "live again"})
    expect(chat_line(page, "live again")).to_be_visible(timeout=WAIT)
    assert "replayed" not in (chat_line(page, "live again").get_attribute("class") or "")
    texts = page.locator("#chat-messages li p").all_inner_texts()
    assert texts == ["before the restart", "missed one", "missed two", "live again"]
    assert page.errors == []


def test_page_on_a_separate_daphne_chats_with_run_coremq_pages(servers: Servers, new_page) -> None:
    """A page served by a separate daphne process (remote link) and one served by run_coremq share one world."""
    port, web_port, daphne_port = free_port(), free_port(), free_port()
    servers.run_coremq(port, web_port)
    servers.daphne(port, daphne_port)
    local, remote = open_demo(new_page, web_port), open_demo(new_page, daphne_port)
    remote.fill("#chat-text", "from the daphne page")
    remote.click("#chat-send")
    expect(chat_line(local, "from the daphne page")).to_be_visible(timeout=WAIT)
    local.fill("#chat-text", "from the run_coremq page")
    local.click("#chat-send")
    expect(chat_line(remote, "from the run_coremq page")).to_be_visible(timeout=WAIT)
    remote.click("#counter-increment")
    expect(local.locator("#counter-value")).not_to_have_text("0", timeout=WAIT)
    assert local.errors == [] and remote.errors == []


def test_demo_page_screenshot(servers: Servers, new_page) -> None:
    """The demo page renders its chat, counter and log without script errors (screenshot: docs/img/demo.png)."""
    port, web_port = free_port(), free_port()
    servers.run_coremq(port, web_port)
    ada, grace = open_demo(new_page, web_port), open_demo(new_page, web_port)
    ada.fill("#chat-name", "Ada")
    grace.fill("#chat-name", "Grace")
    for page, text in [(ada, "Hi! Is the new broker up?"),
                       (grace, "Yes: one process, one event loop, and the browsers are clients too."),
                       (ada, "And a Django view can publish to this page?")]:
        page.fill("#chat-text", text)
        page.click("#chat-send")
        expect(chat_line(grace, text)).to_be_visible(timeout=WAIT)
    with MessageQueue("127.0.0.1", port) as client:
        client.publish("chat", {"name": "python", "text": "Hello from a Python client over TCP."})
    expect(chat_line(grace, "Python client")).to_be_visible(timeout=WAIT)
    for button in ("#counter-increment-10", "#counter-increment-10", "#counter-increment"):
        grace.click(button)
    expect(grace.locator("#counter-value")).to_have_text("21", timeout=WAIT)
    shot = screenshot_path("demo.png")  # docs/img/ only under `make screenshots`
    grace.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000 and grace.errors == []
