"""Python clients given several servers: three ``run_coremq --redis`` nodes, kill -9 of the subscriber's node.

The subscriber is given all three nodes; a publisher on another node streams
throughout. The subscriber moves to the next node by itself and receives every
message exactly once, in order, without a gap.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from coremq_client import AsyncMessageQueue, MessageQueue
from redis_servers import RedisServer, free_port
from test_run_coremq_nodes import NodeProcess

pytestmark = pytest.mark.timeout(180)
STREAM = 600  # messages, about 3 s at one per 5 ms


@pytest.fixture
def three_nodes(tmp_path: Path) -> Iterator[dict[str, NodeProcess]]:
    server = RedisServer()
    nodes: dict[str, NodeProcess] = {}
    try:
        for name in ("n1", "n2", "n3"):
            nodes[name] = NodeProcess(server.url, name, tmp_path / "db.sqlite3")
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()
        server.close()


def servers_of(nodes: dict[str, NodeProcess]) -> list[tuple[str, int]]:
    return [("127.0.0.1", node.port) for node in nodes.values()]


class Streamer(threading.Thread):
    """Publishes ``{"n": 0..STREAM-1}`` to ``stream`` on one node, one every 5 ms, each confirmed."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.client = MessageQueue("127.0.0.1", port, timeout=10)
        self.client.connect()
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for n in range(STREAM):
                self.client.publish("stream", {"n": n})
                self.sent = n + 1
                time.sleep(0.005)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.client.close()


def wait_until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_sync_client_moves_to_the_next_node_when_its_node_is_killed(three_nodes: dict[str, NodeProcess]) -> None:
    subscriber = MessageQueue(servers=servers_of(three_nodes), queues=["stream"], timeout=10, backoff=0.05)
    subscriber.connect()
    assert subscriber.address == f"127.0.0.1:{three_nodes['n1'].port}"
    streamer = Streamer(three_nodes["n3"].port)
    streamer.start()
    got: list[tuple[int, int]] = []
    try:
        while len(got) < 100:
            delivery = subscriber.receive(timeout=15)
            assert delivery is not None
            got.append((delivery.id, delivery.message["n"]))
        three_nodes["n1"].kill()  # while the stream flows
        assert streamer.sent < STREAM
        while len(got) < STREAM:
            delivery = subscriber.receive(timeout=15)
            assert delivery is not None, (len(got), streamer.sent, streamer.error)
            got.append((delivery.id, delivery.message["n"]))
        streamer.join(30)
        assert streamer.error is None
        assert got == [(n + 1, n) for n in range(STREAM)]  # every message once, in order
        assert subscriber.receive(timeout=0.5) is None
        assert not subscriber.gaps
        assert subscriber.address == f"127.0.0.1:{three_nodes['n2'].port}"  # the next server of the list
    finally:
        subscriber.close()


def test_async_client_moves_to_the_next_node_when_its_node_is_killed(three_nodes: dict[str, NodeProcess]) -> None:
    async def scenario() -> list[tuple[int, int]]:
        servers = servers_of(three_nodes)[1:] + servers_of(three_nodes)[:1]  # n2, n3, n1
        async with AsyncMessageQueue(servers=servers, queues=["stream"], timeout=10, backoff=0.05) as subscriber:
            assert subscriber.address == f"127.0.0.1:{three_nodes['n2'].port}"
            streamer = Streamer(three_nodes["n1"].port)
            streamer.start()
            got: list[tuple[int, int]] = []
            while len(got) < STREAM:
                delivery = await subscriber.receive(timeout=15)
                assert delivery is not None, (len(got), streamer.sent, streamer.error)
                got.append((delivery.id, delivery.message["n"]))
                if len(got) == 100:
                    three_nodes["n2"].kill()
                    assert streamer.sent < STREAM
            await asyncio.to_thread(streamer.join, 30)
            assert streamer.error is None
            assert await subscriber.receive(timeout=0.5) is None
            assert not subscriber.gaps
            assert subscriber.address == f"127.0.0.1:{three_nodes['n3'].port}"
            return got

    assert asyncio.run(scenario()) == [(n + 1, n) for n in range(STREAM)]


def test_connect_skips_a_server_that_does_not_answer(three_nodes: dict[str, NodeProcess]) -> None:
    """The first server is down: connect() tries the next one within connect_timeout."""
    dead = ("127.0.0.1", free_port())
    with MessageQueue(servers=[dead, *servers_of(three_nodes)[:1]], queues=["q"], backoff=0.05) as mq:
        assert mq.address == f"127.0.0.1:{three_nodes['n1'].port}"
        assert mq.publish("q", {"n": 1})["id"] == 1  # type: ignore[index]
