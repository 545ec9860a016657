"""Flow control under daphne: a browser that stops reading is cut off; the others get every message."""

from __future__ import annotations

import pytest

from webservers import Servers, free_port
from rawsocket import RawWebSocket, flood_stuck_and_reader

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
    flood_stuck_and_reader(stuck, reader, port, MESSAGES, PAD)
    assert "slow consumer" in "".join(server.output)
