"""coremq.js in Chromium when the broker drops messages on their way to a separate daphne's bridge.

The broker's ``drop`` policy sends the bridge a notice naming the ids it
dropped; the bridge passes it to the browsers subscribed to the queue as a
``dropped`` frame, and coremq.js fetches those ids from history, in order,
reporting as a gap only what history no longer holds.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from coremq_client import MessageQueue

from pages import client_page, events, settled
from webservers import Servers, free_port

pytestmark = pytest.mark.timeout(180)

WAIT = 60_000  # ms: how long the page may take to catch up (a wait, not a measurement)
FLOOD = 30_000  # messages published while the web process is stopped: far more than the socket buffers hold
PAD = "x" * 400


def test_dropped_messages_reach_the_page_from_history(servers: Servers, new_page: Any) -> None:
    """Messages the broker dropped for a stalled bridge reach the page from history, once, in order; no gap."""
    port, daphne_port = free_port(), free_port()
    servers.run_coremq(port, coremq={"SLOW_CONSUMER_POLICY": "drop", "MAX_WRITE_BUFFER": 2 * 2**20,
                                     "HISTORY_LENGTH": FLOOD + 10})
    daphne = servers.daphne(port, daphne_port)  # MAX_WRITE_BUFFER as by default: the refill comes in pages
    page = client_page(new_page, daphne_port)
    page.wait_for_function(settled, timeout=WAIT)
    with MessageQueue("127.0.0.1", port) as client:
        client.publish("q", {"n": 1})
        page.wait_for_function("got.length === 1", timeout=WAIT)
        os.kill(daphne.process.pid, signal.SIGSTOP)  # the bridge stops reading: the broker drops for it
        try:
            for n in range(2, FLOOD + 2):
                client.publish("q", {"n": n, "pad": PAD}, reply=n == FLOOD + 1)
        finally:
            os.kill(daphne.process.pid, signal.SIGCONT)
        client.publish("q", {"n": FLOOD + 2})
    page.wait_for_function(f"got.length && got[got.length - 1][0] === {FLOOD + 2} && {settled}", timeout=WAIT)
    got = page.evaluate("got.map(([id, message, replayed]) => [id, message.n, replayed])")
    assert [item[0] for item in got] == list(range(1, FLOOD + 3))
    assert all(item[0] == item[1] for item in got)
    assert page.evaluate("window.droppedFrames") >= 1  # the bridge said so...
    replayed = sum(1 for item in got if item[2])
    print(f"{replayed} of {FLOOD + 2} messages came from history after {page.evaluate('window.droppedFrames')} dropped frame(s)")
    assert replayed  # ...and the page fetched them from history
    assert events(page, "gap") == [] and page.errors == [] and page.evaluate("window.sockets") == 1
    assert "dropped" in "".join(servers.started[0].output)
