"""Anonymous browsers per client address are bounded as TCP clients are (MAX_CONNECTIONS_PER_ADDRESS)."""

from __future__ import annotations

import pytest

from coremq_broker.transports.websocket.bridge import CLOSE_TRY_AGAIN_LATER

from tabs import Tab
from webservers import Servers, free_port

pytestmark = pytest.mark.timeout(120)

LIMIT = {"MAX_CONNECTIONS_PER_ADDRESS": 3}


@pytest.mark.parametrize("kind", ["in-process", "separate"])
def test_one_address_holds_at_most_the_limit_of_anonymous_browsers(servers: Servers, kind: str) -> None:
    """The 4th anonymous WebSocket from one address (limit 3) gets an error and 4013; other addresses, and a freed place, still connect."""
    port = free_port()
    if kind == "in-process":
        web_port = free_port()
        servers.run_coremq(port, web_port, coremq=LIMIT)
    else:
        servers.run_coremq(port)
        web_port = free_port()
        servers.daphne(port, web_port, coremq=LIMIT)
    tabs = [Tab(web_port, source="127.0.0.5") for _ in range(3)]
    for tab in tabs:
        assert tab.receive_type("welcome")["connection_id"]
    refused = Tab(web_port, source="127.0.0.5")
    assert refused.receive()["error"] == "too many connections from 127.0.0.5: limit is 3"
    assert refused.closed() == CLOSE_TRY_AGAIN_LATER
    elsewhere = Tab(web_port, source="127.0.0.6")
    assert elsewhere.receive_type("welcome")["connection_id"]
    tabs[0].ws.close()
    again = None
    for _ in range(50):  # the server sees the close a moment later
        again = Tab(web_port, source="127.0.0.5")
        frame = again.receive()
        if frame["type"] == "welcome":
            break
        again.closed()
    assert again is not None and again.frames[-1]["type"] == "welcome"
