"""The channel layer across nodes: two ``run_coremq --redis URL --node-name N`` processes on one real redis-server.

Each layer talks to its own node; groups, process-local channels and normal
channels (tickets included) work between them as on one broker.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Iterator

import pytest

from coremq_broker.layers import CoreMQChannelLayer
from redis_servers import RedisServer
from servers import ROOT, ServerProcess

pytestmark = pytest.mark.timeout(180)


class Node(ServerProcess):
    """``manage.py run_coremq`` as node ``name`` of the cluster on ``redis_url``; :attr:`port` once it listens."""

    def __init__(self, redis_url: str, name: str, database: Path) -> None:
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "coremq_project.settings", "COREMQ_DATABASE": str(database),
               "PYTHONUNBUFFERED": "1"}
        super().__init__([sys.executable, "manage.py", "run_coremq", "--no-web", "--no-memcached", "--host",
                          "127.0.0.1", "--port", "0", "--redis", redis_url, "--node-name", name], env)
        line = self.wait_for("CoreMQ broker listening on")
        self.port = int(re.search(r":(\d+) \(TCP\)", line).group(1))  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, Node]]:
    redis = RedisServer()
    database = tmp_path_factory.mktemp("layer-nodes") / "db.sqlite3"
    nodes: list[Node] = []
    try:
        nodes = [Node(redis.url, "layer-a", database), Node(redis.url, "layer-b", database)]
        yield nodes[0], nodes[1]
    finally:
        for node in nodes:
            node.stop()
        redis.close()


def layer_on(node: Node, prefix: str) -> CoreMQChannelLayer:
    return CoreMQChannelLayer(hosts=[f"coremq://127.0.0.1:{node.port}"], prefix=prefix)


async def receive(layer: CoreMQChannelLayer, channel: str) -> dict:
    return await asyncio.wait_for(layer.receive(channel), 15)


@pytest.mark.asyncio
async def test_groups_and_channels_across_nodes(two_nodes):
    """A group with members on two nodes, a send to a channel of the other node, a normal channel between them."""
    a_node, b_node = two_nodes
    prefix = f"n{os.urandom(3).hex()}"
    a, b = layer_on(a_node, prefix), layer_on(b_node, prefix)
    on_a, on_b = await a.new_channel(), await b.new_channel()
    await a.group_add("everywhere", on_a)
    await b.group_add("everywhere", on_b)
    for n in range(5):
        await b.group_send("everywhere", {"type": "n", "n": n})
    assert [(await receive(a, on_a))["n"] for _ in range(5)] == list(range(5))
    assert [(await receive(b, on_b))["n"] for _ in range(5)] == list(range(5))
    await b.send(on_a, {"type": "direct"})
    assert await receive(a, on_a) == {"type": "direct"}
    for n in range(3):
        await a.send("jobs", {"type": "job", "n": n})
    assert [(await receive(b, "jobs"))["n"] for _ in range(3)] == [0, 1, 2]
    await a.flush()
    await b.flush()


@pytest.mark.asyncio
async def test_competing_receivers_on_two_nodes(two_nodes):
    """Receivers of one normal channel on two nodes get each message once between them."""
    a_node, b_node = two_nodes
    prefix = f"w{os.urandom(3).hex()}"
    a, b, sender = layer_on(a_node, prefix), layer_on(b_node, prefix), layer_on(a_node, prefix)
    got: list[int] = []

    async def work(layer: CoreMQChannelLayer) -> None:
        while True:
            got.append((await layer.receive("work"))["n"])

    workers = [asyncio.ensure_future(work(layer)) for layer in (a, b)]
    for n in range(30):
        await sender.send("work", {"type": "job", "n": n})
    for _ in range(300):
        if len(got) >= 30:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    for worker in workers:
        worker.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    assert sorted(got) == list(range(30))
    for layer in (a, b, sender):
        await layer.flush()
