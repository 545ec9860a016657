"""Both Python clients over WebSocket (``ws://.../ws/coremq/``) against real run_coremq and daphne processes."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "websocket"))  # the project's server fixtures

from coremq_client import AsyncMessageQueue, AuthenticationFailed, LocalUsageError, MessageQueue  # noqa: E402
from tabs import issue_token  # noqa: E402
from webservers import Servers, free_port  # noqa: E402
from servers import migrate  # noqa: E402

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ws-client") / "db.sqlite3"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "coremq_project.settings", "COREMQ_DATABASE": str(path)}
    migrate(env)
    return path


@pytest.fixture
def servers(database: Path) -> Iterator[Servers]:
    started = Servers(database)
    try:
        yield started
    finally:
        started.stop_all()


def test_sync_client_over_websocket_meets_a_tcp_client(servers: Servers) -> None:
    """Over ws:// a MessageQueue subscribes, publishes and receives, in the same queues as a TCP client."""
    port, web_port = free_port(), free_port()
    servers.run_coremq(port, web_port)
    url = f"ws://127.0.0.1:{web_port}/ws/coremq/"
    with MessageQueue(url, queues=["news"]) as web, MessageQueue("127.0.0.1", port, queues=["news"]) as tcp:
        assert web.welcome_message == "OK: Welcome from CoreMQ!" and "/" in web.connection_id
        assert web.publish("news", {"title": "from ws"}) == {"response": "OK: Message sent", "queue": "news", "id": 1,
                                                             "request": 3}  # TCP's form (1, 2: subscribe, probe)
        assert tcp.receive(timeout=10).message["title"] == "from ws"
        tcp.publish("news", "from tcp")
        got = [web.receive(timeout=10) for _ in range(2)]
        assert [(d.id, d.message if d.id == 2 else d.message["title"]) for d in got] == [(1, "from ws"), (2, "from tcp")]
        assert web.get_history("news") == {"news": [{"title": "from ws", **{k: v for k, v in got[0].message.items()
                                                                          if k.startswith("coremq_")}},
                                                    "from tcp"]}
        with pytest.raises(LocalUsageError, match="not available over WebSocket"):
            web.status()


def test_a_client_over_websocket_resumes_and_reports_what_history_lost(servers: Servers) -> None:
    """Across a restart of its daphne, a ws:// subscriber gets what it missed once, in order; beyond history, a Gap."""
    port, web_port = free_port(), free_port()
    servers.run_coremq(port, coremq={"HISTORY_LENGTH": 5})
    daphne = servers.daphne(port, web_port)
    url = f"ws://127.0.0.1:{web_port}/ws/coremq/"
    gaps = []
    with MessageQueue(url, queues=["kept", "lost"], on_gap=gaps.append, backoff=0.05, max_backoff=0.2) as web, \
            MessageQueue("127.0.0.1", port) as tcp:
        for queue in ("kept", "lost"):
            tcp.publish(queue, {"n": 0})
        assert sorted((d.queue, d.message["n"]) for d in (web.receive(timeout=10), web.receive(timeout=10))) == \
            [("kept", 0), ("lost", 0)]
        daphne.stop()
        for n in range(1, 4):
            tcp.publish("kept", {"n": n})
        for n in range(1, 11):
            tcp.publish("lost", {"n": n})
        servers.daphne(port, web_port)
        got: dict[str, list[int]] = {"kept": [], "lost": []}
        while len(got["kept"]) < 3 or len(got["lost"]) < 5:
            delivery = web.receive(timeout=30)
            assert delivery is not None, got
            got[delivery.queue].append(delivery.message["n"])
        assert got == {"kept": [1, 2, 3], "lost": [6, 7, 8, 9, 10]}
        assert [(g.queue, g.first_missing, g.last_missing) for g in gaps] == [("lost", 2, 6)]  # ids are n + 1


def test_async_client_over_websocket(servers: Servers) -> None:
    """AsyncMessageQueue over ws:// has the same methods: subscribe, publish, receive, history, unsubscribe."""
    port, web_port = free_port(), free_port()
    servers.run_coremq(port, web_port)

    async def scenario() -> None:
        url = f"ws://127.0.0.1:{web_port}/ws/coremq/"
        async with AsyncMessageQueue(url) as web, AsyncMessageQueue("127.0.0.1", port, queues=["a"]) as tcp:
            assert (await web.subscribe("a", "b"))["response"] == "OK: Subscribe successful"
            replies = await asyncio.gather(*(web.publish("a", {"n": n}) for n in range(20)))
            assert [reply["id"] for reply in replies] == list(range(1, 21))
            assert [(await tcp.receive(timeout=10)).message["n"] for _ in range(20)] == list(range(20))
            assert [(await web.receive(timeout=10)).id for _ in range(20)] == list(range(1, 21))
            assert (await web.history("a", since=18))["history"]["a"][0]["coremq_id"] == 19
            await web.unsubscribe("a")
            await tcp.publish("a", "after")
            await tcp.publish("b", "to b")
            delivery = await web.receive(timeout=10)
            assert (delivery.queue, delivery.message) == ("b", "to b")
            # Cut from the client's side while messages keep coming: it reconnects and misses none.
            first = web.connection_id
            web._conn.writer.transport.abort()
            for n in range(8):  # within HISTORY_LENGTH (10)
                await tcp.publish("b", {"n": n})
            got = [await web.receive(timeout=20) for _ in range(8)]
            assert [d.message["n"] for d in got] == list(range(8))
            assert web.errors == [] and web.gaps == []
            assert web.connection_id != first

    asyncio.run(scenario())


def test_a_token_logs_in_over_websocket_and_a_bad_one_is_refused(servers: Servers, database: Path) -> None:
    """token= logs a ws:// client in as the token's user (user is set); a wrong token raises AuthenticationFailed."""
    port, web_port = free_port(), free_port()
    servers.run_coremq(port, web_port)
    token, _ = issue_token(database, "wsuser")
    url = f"ws://127.0.0.1:{web_port}/ws/coremq/"
    with MessageQueue(url, token=token, queues=["q"]) as web:
        assert web.user == "wsuser"
        assert web.publish("q", {"x": 1})["id"] == 1
    with pytest.raises(AuthenticationFailed):
        MessageQueue(url, token="not-a-token", reconnect=False).connect()
    with pytest.raises(LocalUsageError, match="with a token"):
        MessageQueue(url, username="a", password="b", reconnect=False).connect()


def test_a_new_welcome_from_the_endpoint_makes_the_client_reconnect_and_resume(servers: Servers) -> None:
    """When a separate daphne's link to a restarted broker comes back, a ws:// client reconnects and receives again."""
    port, web_port = free_port(), free_port()
    broker = servers.run_coremq(port)
    servers.daphne(port, web_port)
    with MessageQueue(f"ws://127.0.0.1:{web_port}/ws/coremq/", queues=["q"], backoff=0.05, max_backoff=0.5) as web:
        with MessageQueue("127.0.0.1", port) as tcp:
            tcp.publish("q", {"before": "restart"})
        assert web.receive(timeout=10).id == 1
        first_id = web.connection_id
        broker.stop()
        servers.run_coremq(port)
        deadline = time.monotonic() + 60
        while web.connection_id == first_id or not web.connected:
            assert time.monotonic() < deadline, "no new connection"
            time.sleep(0.05)
        with MessageQueue("127.0.0.1", port) as tcp:
            tcp.publish("q", {"after": "restart"})
        delivery = web.receive(timeout=30)
        assert delivery is not None and delivery.message["after"] == "restart"
