"""Which channels a node listens to, and how few commands it takes, seen from Redis itself."""

from __future__ import annotations

import pytest

from redis_nodes import Node, RedisServer

pytestmark = pytest.mark.asyncio

STAMPS = b',"coremq_id":'


def calls(server: RedisServer, command: str) -> int:
    stats = server.client().info("commandstats").get(f"cmdstat_{command}")
    return stats["calls"] if stats else 0


def numsub(server: RedisServer, *queues: str) -> list[int]:
    return [count for _, count in server.client().pubsub_numsub(*(f"test:q:{q}" for q in queues))]


async def test_first_local_subscriber_subscribes_last_one_leaves(redis_server: RedisServer,
                                                                 nodes: tuple[Node, Node]) -> None:
    """A node holds a queue's channel while it has local subscribers: counted, not one per subscriber."""
    a, b = nodes
    a.engine.subscribe("q")
    a.engine.subscribe("q")
    b.engine.subscribe("q")
    await a.engine.sync()
    await b.engine.sync()
    assert numsub(redis_server, "q") == [2]  # one per node, whatever the local count
    a.engine.unsubscribe("q")
    await a.engine.sync()
    assert numsub(redis_server, "q") == [2]
    a.engine.unsubscribe("q")
    await a.engine.sync()
    assert numsub(redis_server, "q") == [1]
    await a.engine.publish("q", [b'{"n":1}'], STAMPS, history_length=5)
    await b.wait_for(lambda: b.ids("q") == [1])
    assert a.received == []


async def test_subscription_changes_are_batched(redis_server: RedisServer, nodes: tuple[Node, Node]) -> None:
    """500 queues subscribed in one loop iteration take one SUBSCRIBE; leaving them, one UNSUBSCRIBE."""
    a, _ = nodes
    queues = [f"batch-{i}" for i in range(500)]
    subscribes, unsubscribes = calls(redis_server, "subscribe"), calls(redis_server, "unsubscribe")
    for queue in queues:
        a.engine.subscribe(queue)
    await a.engine.sync()
    assert calls(redis_server, "subscribe") == subscribes + 1
    assert numsub(redis_server, *queues) == [1] * 500
    clients = [c for c in redis_server.client().client_list() if int(c["sub"]) > 0]
    assert sorted(int(c["sub"]) for c in clients) == [1, 1 + 500]  # node b's probe; node a's probe and queues
    for queue in queues:
        a.engine.unsubscribe(queue)
    await a.engine.sync()
    assert calls(redis_server, "unsubscribe") == unsubscribes + 1
    assert numsub(redis_server, *queues) == [0] * 500
    assert a.engine.subscriber.subscribe_commands == 2  # at connect (the probe), then the batch


async def test_subscribe_and_leave_in_one_iteration_sends_nothing(redis_server: RedisServer,
                                                                  nodes: tuple[Node, Node]) -> None:
    """A subscriber that comes and goes before the loop turns costs Redis no command."""
    a, _ = nodes
    subscribes = calls(redis_server, "subscribe")
    a.engine.subscribe("brief")
    a.engine.unsubscribe("brief")
    await a.engine.sync()
    assert calls(redis_server, "subscribe") == subscribes
    assert numsub(redis_server, "brief") == [0]


async def test_rejoining_starts_a_new_mark(nodes: tuple[Node, Node]) -> None:
    """After its last local subscriber left, a node forgets the queue: rejoining takes what comes next, no old holes."""
    a, b = nodes
    b.engine.subscribe("m")
    await b.engine.sync()
    await a.engine.publish("m", [b'{"n":1}'], STAMPS, history_length=5)
    await b.wait_for(lambda: b.ids("m") == [1])
    b.engine.unsubscribe("m")
    await b.engine.sync()
    await a.engine.publish("m", [b'{"n":2}', b'{"n":3}'], STAMPS, history_length=5)
    b.engine.subscribe("m")
    await b.engine.sync()
    await a.engine.publish("m", [b'{"n":4}'], STAMPS, history_length=5)
    await b.wait_for(lambda: b.ids("m") == [1, 4])
    assert b.deliveries[-1].missing is None
