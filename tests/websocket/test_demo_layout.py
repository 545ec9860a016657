"""The demo page's layout in headless Chromium: the connection id in the header, and a phone-width screen."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
from playwright.sync_api import expect

from coremq_client import MessageQueue

from webservers import Servers, free_port

pytestmark = pytest.mark.timeout(180)

WAIT = 30_000  # ms: how long the page may take to show something (a wait, not a measurement)
PHONE = {"width": 375, "height": 740}
LONG_WORD = "Supercalifragilisticexpialidocious" * 80  # one word of 2,720 letters


@pytest.fixture
def open_page(chromium: Any) -> Iterator[Any]:
    """``open_page(url, viewport)``: a demo tab in its own context, once its chat is subscribed."""
    contexts = []

    def open_demo(url: str, viewport: dict[str, int]) -> Any:
        context = chromium.new_context(viewport=viewport)
        contexts.append(context)
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        page.goto(url)
        expect(page.locator("#connection")).to_have_attribute("data-state", "open", timeout=WAIT)
        expect(page.locator("#log")).to_contain_text("subscribed to chat", timeout=WAIT)
        return page

    yield open_demo
    for context in contexts:
        context.close()


def visible_id(page: Any) -> dict:
    """The id the page knows, the text the header shows, and whether the id's end lies inside the visible box."""
    return page.evaluate("""() => {
        const code = document.getElementById("connection-id");
        const tail = code.querySelector(".id-tail");
        const box = code.getBoundingClientRect(), end = tail.getBoundingClientRect();
        return {id: window.demo.mq.connectionId, text: code.textContent, tail: tail.textContent,
                tailShown: end.width > 0 && end.left >= box.left - 0.5 && end.right <= box.right + 0.5
                           && end.right <= document.documentElement.clientWidth};
    }""")


@pytest.mark.parametrize("viewport", [pytest.param({"width": 1240, "height": 860}, id="desktop"),
                                      pytest.param(PHONE, id="phone")])
def test_header_shows_each_tabs_own_connection_id(servers: Servers, open_page, viewport) -> None:
    """Two tabs show different ids in the header: the /n suffix is never cut, and the full id is the text."""
    port, web_port = free_port(), free_port()
    servers.run_coremq(port, web_port)
    first, second = (open_page(f"http://127.0.0.1:{web_port}/", viewport) for _ in range(2))
    shown = [visible_id(first), visible_id(second)]
    for page_id in shown:
        assert page_id["text"] == page_id["id"] and page_id["id"].endswith(page_id["tail"]), page_id
        assert page_id["tail"].startswith("/") and page_id["tailShown"], page_id
    assert shown[0]["tail"] != shown[1]["tail"]
    assert first.errors == [] and second.errors == []


def test_a_long_word_does_not_widen_the_page_at_phone_width(servers: Servers, open_page) -> None:
    """At 375 px a 2,720-letter word in the chat (text and name) and in the log leaves the page 375 px wide."""
    port, web_port = free_port(), free_port()
    servers.run_coremq(port, web_port)
    page = open_page(f"http://127.0.0.1:{web_port}/", PHONE)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.fill("#chat-name", LONG_WORD[:24])
    page.fill("#chat-text", LONG_WORD[:500])  # the input's maxlength
    page.click("#chat-send")
    with MessageQueue("127.0.0.1", port) as client:
        client.publish("chat", {"name": LONG_WORD, "text": LONG_WORD})
        client.publish(page.evaluate("window.demo.mq.connectionId"), {"direct": LONG_WORD})  # shown in the log
    expect(page.locator("#chat-messages li")).to_have_count(2, timeout=WAIT)
    expect(page.locator("#log")).to_contain_text("direct message", timeout=WAIT)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert page.evaluate("document.body.scrollWidth") <= PHONE["width"]
    assert page.errors == []
