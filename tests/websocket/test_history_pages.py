"""A browser's history request with a limit is answered one page at a time, with `more`, through a real daphne."""

from __future__ import annotations

import pytest

from coremq_client import MessageQueue

from tabs import Tab
from webservers import Servers, free_port

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("kind", ["in-process", "separate"])
def test_history_pages_with_limit_and_whole_without(servers: Servers, kind: str) -> None:
    """limit n gives the n oldest after `since` and `more`; asking on from the last id gets the rest; no limit, all."""
    port, web_port = free_port(), free_port()
    if kind == "in-process":
        servers.run_coremq(port, web_port)
    else:
        servers.run_coremq(port)
        servers.daphne(port, web_port)
    with MessageQueue("127.0.0.1", port) as client:
        for n in range(1, 6):
            client.publish("log", {"n": n})
        page = client.history("log", since=1, limit=2)  # the Python clients page the same way
        assert [m["n"] for m in page["history"]["log"]] == [2, 3] and page["more"] == {"log": True}
    tab = Tab(web_port)
    tab.receive_type("welcome")
    pages, since, ref = [], 1, 0
    while True:
        ref += 1
        answer = tab.request({"action": "history", "since": {"log": since}, "limit": 2, "ref": ref})
        ids = [entry["id"] for entry in answer["history"]["log"]]
        pages.append((ids, answer.get("more")))
        if not answer.get("more"):
            break
        since = ids[-1]
    assert pages == [([2, 3], {"log": True}), ([4, 5], None)]
    whole = tab.request({"action": "history", "queues": ["log"], "ref": "all"})
    assert [entry["message"]["n"] for entry in whole["history"]["log"]] == [1, 2, 3, 4, 5] and "more" not in whole
    refused = tab.request({"action": "history", "queues": ["log"], "limit": 0, "ref": "bad"})
    assert refused["type"] == "error" and "limit" in refused["error"]
