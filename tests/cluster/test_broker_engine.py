"""ClusterEngine behind the engine seam: numbered or refused once per batch, local delivery in the channel's id order.

The broker side is a recording ``Node`` (the seam's callback interface) over
real registries; Redis is a real redis-server.
"""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio

from coremq_broker.cluster.broker_engine import ClusterEngine
from coremq_broker.core.config import BrokerConfig
from coremq_broker.core.engine import Batch
from coremq_broker.core.limits import Bounds
from coremq_broker.core.registry import Connection, QueueSettings, Registry

from redis_nodes import RedisServer, settings_for

pytestmark = pytest.mark.asyncio

STAMPS = b',"coremq_id":'


class RecordingNode:
    """The broker's side of the seam: what it was told to deliver here, acknowledge or refuse."""

    def __init__(self) -> None:
        self.local: dict[str, list[int]] = {}  # ids delivered to this node's subscribers, per queue
        self.numbered_batches: list[tuple[Batch, int]] = []
        self.refusals: list[tuple[Batch, str]] = []

    def numbered(self, batch: Batch, first_id: int) -> None:
        self.numbered_batches.append((batch, first_id))
        self.local.setdefault(batch.queue.name, []).extend(range(first_id, first_id + len(batch.bodies)))

    def refused(self, batch: Batch, reason: str) -> None:
        self.refusals.append((batch, reason))

    def delivered_elsewhere(self, queue: str, first_id: int, bodies: list[bytes], stamps: bytes) -> None:
        self.local.setdefault(queue, []).extend(range(first_id, first_id + len(bodies)))


class Sender(Connection):
    """A publisher as the engine sees it: only whether it is held (not read) or released."""

    def __init__(self) -> None:
        super().__init__("sender")
        self.holds = self.releases = 0

    def hold(self) -> None:
        self.holds += 1

    def release(self) -> None:
        self.releases += 1


class Side:
    def __init__(self, server: RedisServer, name: str, **options: object) -> None:
        config = BrokerConfig()
        default = QueueSettings(history_length=50)
        self.bounds = Bounds(config, default)
        self.registry = Registry(lambda queue: default, self.bounds)
        self.node = RecordingNode()
        self.engine = ClusterEngine(settings_for(server, name, **options), address=name)
        self.engine.bind(self.node, self.registry, self.bounds)

    def publish(self, queue: str, count: int, owner: str | None = None, sender: Connection | None = None) -> Batch:
        if owner is not None:  # the broker makes an address private to its connection
            self.registry.queue(queue).owner = owner
        batch = Batch(self.registry.queue(queue), [b'{"n":%d}' % i for i in range(count)], STAMPS, sender, 1, 0.0)
        self.engine.publish(batch)
        return batch

    async def settle(self) -> None:
        while self.engine._tasks:
            await asyncio.wait(set(self.engine._tasks))


@pytest_asyncio.fixture
async def sides(redis_server: RedisServer):
    a, b = Side(redis_server, "a"), Side(redis_server, "b")
    loop = asyncio.get_running_loop()
    await a.engine.start(loop)
    await b.engine.start(loop)
    try:
        yield a, b
    finally:
        await a.engine.close()
        await b.engine.close()


async def test_every_batch_numbered_once_and_local_order_is_id_order(sides: tuple[Side, Side]) -> None:
    """Both nodes publish at once; each batch is numbered once on its node; the listening node delivers 1..N in order."""
    a, b = sides
    a.engine.subscriber_added("q")
    await a.engine.redis.sync()
    batches = []
    for round in range(100):
        batches.append(a.publish("q", 1 + round % 3))
        batches.append(b.publish("q", 2))
        if round % 10 == 0:
            await asyncio.sleep(0)
    await a.settle()
    await b.settle()
    total = sum(len(batch.bodies) for batch in batches)
    for side in (a, b):
        assert not side.node.refusals
        numbered = side.node.numbered_batches
        assert len(numbered) == len({id(batch) for batch, _ in numbered}) == 100
    deadline = asyncio.get_running_loop().time() + 20
    while len(a.node.local.get("q", [])) < total and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    assert a.node.local["q"] == list(range(1, total + 1))  # ours and b's, interleaved in id order, once each
    ids = sorted(i for side in (a, b) for batch, first in side.node.numbered_batches
                 for i in range(first, first + len(batch.bodies)))
    assert ids == list(range(1, total + 1))
    assert "q" not in b.node.local or b.node.local["q"] == sorted(b.node.local["q"])
    assert [entry[0] for entry in a.registry.queues["q"].history] == list(range(total - 49, total + 1))


async def test_refused_when_redis_is_down(redis_server: RedisServer, sides: tuple[Side, Side]) -> None:
    """With Redis gone every batch is refused once, with a reason naming Redis; nothing is numbered."""
    a, _ = sides
    redis_server.kill()
    for _ in range(5):
        a.publish("down", 2)
    await a.settle()
    assert len(a.node.refusals) == 5 and not a.node.numbered_batches
    assert all(reason.startswith("cluster unavailable: Redis at redis://127.0.0.1:") for _, reason in a.node.refusals)


async def test_point_to_point_across_nodes(sides: tuple[Side, Side]) -> None:
    """A batch to a connection held by the other node is delivered there; to a connection held nowhere, refused."""
    a, b = sides
    b.engine.connection_opened("c-1")
    await b.engine.redis.sync()
    a.publish("c-1/3", 1, owner="c-1")
    await a.settle()
    while not b.node.local.get("c-1/3"):
        await asyncio.sleep(0.02)
    assert b.node.local["c-1/3"] == [1] and [first for _, first in a.node.numbered_batches] == [1]
    a.publish("c-2", 1, owner="c-2")
    await a.settle()
    assert [reason for _, reason in a.node.refusals] == ["no such connection: c-2"]


async def test_publishers_held_and_refused_while_redis_lags(redis_server: RedisServer) -> None:
    """A stopped Redis: the publisher is held from a quarter of max_pending, refused at once past it ('cluster busy'),
    released when the batches drained (here: failed)."""
    side = Side(redis_server, "a", max_pending=8)
    await side.engine.start(asyncio.get_running_loop())
    sender = Sender()
    redis_server.pause()
    try:
        for _ in range(8):
            side.publish("lag", 1, sender=sender)
        assert sender.holds == 1 and sender.releases == 0
        side.publish("lag", 1, sender=sender)
        assert [reason for _, reason in side.node.refusals] == ["cluster busy: 8 publishes wait for Redis"]
        await side.settle()  # the eight time out
        assert len(side.node.refusals) == 9 and not side.node.numbered_batches
        assert all(reason.startswith("cluster unavailable") for _, reason in side.node.refusals[1:])
        assert sender.releases == 1
        assert side.engine.describe()["busy"] == 1
    finally:
        redis_server.resume()
        await side.engine.close()
