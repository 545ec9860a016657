"""Flow control under daphne: a browser that stops reading is cut off; the others get every message."""

from __future__ import annotations

import threading

import pytest

from coremq_client import MessageQueue

from webservers import Servers, free_port
from rawsocket import RawWebSocket

pytestmark = pytest.mark.timeout(120)

MESSAGES = 300
PAD = "x" * 30_000  # 300 messages of 30 kB: far more than the socket buffers and the bound hold


def test_a_browser_that_does_not_read_is_cut_off(servers: Servers) -> None:
    """Past MAX_WRITE_BUFFER unsent bytes a browser is disconnected; a reading browser still gets all, in order."""
    port, web_port = free_port(), free_port()
    server = servers.run_coremq(port, web_port, max_write_buffer=256 * 1024)
    stuck = RawWebSocket(web_port, "/ws/coremq/?queues=flood", receive_buffer=4096)
    stuck.receive_type("subscribed")
    reader = RawWebSocket(web_port, "/ws/coremq/?queues=flood")
    reader.receive_type("subscribed")
    received: list[int] = []

    def read_all() -> None:
        while len(received) < MESSAGES:
            received.append(reader.receive_type("message")["message"]["n"])

    thread = threading.Thread(target=read_all, daemon=True)
    thread.start()
    with MessageQueue("127.0.0.1", port) as client:
        for n in range(MESSAGES):
            client.publish("flood", {"n": n, "pad": PAD})
    thread.join(60)
    assert received == list(range(MESSAGES))

    got = 0
    with pytest.raises(ConnectionError):
        while True:
            stuck.receive_type("message")
            got += 1
    assert got < MESSAGES
    assert "slow consumer" in "".join(server.output)
