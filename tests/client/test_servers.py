"""``servers=``: the list a client connects to in turn, and the session's moves along it (no socket)."""

from __future__ import annotations

import pytest

from coremq_client import MessageQueue
from coremq_client._state import servers_from
from coremq_client.errors import ConnectionClosed, ServerError


def test_servers_are_pairs_or_websocket_urls_of_one_kind() -> None:
    assert servers_from("127.0.0.1", 6747, None) == [("127.0.0.1", 6747)]
    assert servers_from("ws://h:1/ws/coremq/", 6747, None) == ["ws://h:1/ws/coremq/"]
    assert servers_from("127.0.0.1", 6747, [("a", 1), ["b", 2]]) == [("a", 1), ("b", 2)]
    for bad in ([], "a:1", [("a", "1")], [("a", 1, 2)], [("a", True)], ["tcp://a:1"], [("a", 1), "ws://b/"]):
        with pytest.raises(ValueError):
            servers_from("127.0.0.1", 6747, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not both"):
        servers_from("other", 6747, [("a", 1)])


def test_the_session_moves_to_the_next_server_after_a_failed_attempt_and_a_loss() -> None:
    mq = MessageQueue(servers=[("a", 1), ("b", 2), ("c", 3)])
    session = mq._session
    assert (mq.host, mq.port, mq.address, mq.url) == ("a", 1, "a:1", None)
    delays = session.delays()
    session.retry_delay(ConnectionClosed("refused"), delays, None, wait=True)
    assert mq.address == "b:2"
    assert session.reconnects_after(ConnectionClosed("lost"), mq.address, closing=False)
    assert mq.address == "c:3"
    session.retry_delay(ServerError("ERROR: too many connections"), delays, None, wait=False)
    assert mq.address == "a:1"  # the first after the last
    assert not session.reconnects_after(ConnectionClosed("lost"), mq.address, closing=True)
    assert mq.address == "a:1"  # closing: no move
    with pytest.raises(ServerError):
        session.retry_delay(ServerError("ERROR: refused"), delays, None, wait=True)
    assert mq.address == "a:1"


def test_without_reconnect_a_failed_attempt_ends_on_the_first_server() -> None:
    mq = MessageQueue(servers=[("a", 1), ("b", 2)], reconnect=False)
    with pytest.raises(ConnectionClosed):
        mq._session.retry_delay(ConnectionClosed("refused"), mq._session.delays(), None, wait=True)
    assert mq.address == "a:1"
    assert mq.servers == [("a", 1), ("b", 2)]
