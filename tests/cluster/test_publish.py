"""Ids, history and delivery of the cluster engine, against a real redis-server."""

from __future__ import annotations

import asyncio

import pytest

from coremq_broker.cluster import ClusterUnavailable, RedisEngine

from redis_nodes import Node, RedisServer, settings_for

pytestmark = pytest.mark.asyncio

STAMPS = b',"coremq_sender":"x","coremq_id":'


def body(n: int) -> bytes:
    return b'{"n":%d}' % n


async def test_ids_atomic_under_concurrent_publishers_on_two_nodes(nodes: tuple[Node, Node]) -> None:
    """Two nodes publishing at once to one queue get disjoint ids that together are 1..N, each batch contiguous."""
    a, b = nodes

    async def publisher(node: Node, tag: int) -> list[tuple[int, int]]:
        spans = []
        for i in range(200):
            size = 1 + i % 3
            numbered = await node.engine.publish("q", [body(tag * 10000 + i)] * size, STAMPS, history_length=10)
            spans.append((numbered.first_id, numbered.last_id))
        return spans

    results = await asyncio.gather(*(publisher(node, tag) for node, tag in ((a, 1), (b, 2), (a, 3), (b, 4))))
    ids = sorted(i for spans in results for first, last in spans for i in range(first, last + 1))
    assert ids == list(range(1, len(ids) + 1))
    assert len(ids) == 4 * sum(1 + i % 3 for i in range(200))
    for spans in results:  # each caller's batches are numbered in the order it sent them
        assert [first for first, _ in spans] == sorted(first for first, _ in spans)


async def test_delivery_in_id_order_exactly_once_on_every_node(nodes: tuple[Node, Node]) -> None:
    """Batches from both nodes reach the subscribers of both nodes once each, in id order."""
    a, b = nodes
    a.engine.subscribe("q")
    b.engine.subscribe("q")
    await a.engine.sync()
    await b.engine.sync()

    async def publisher(node: Node) -> None:
        for i in range(150):
            await node.engine.publish("q", [body(i), body(i + 1)], STAMPS, history_length=5)

    await asyncio.gather(publisher(a), publisher(b), publisher(a))
    for node in (a, b):
        await node.wait_for(lambda node=node: len(node.ids("q")) == 900)
        assert node.ids("q") == list(range(1, 901))
        assert not any(d.reset or d.missing for d in node.deliveries)
    assert all(stamps == STAMPS for *_, stamps in a.received)
    epochs = {epoch for _, epoch, *_ in a.received + b.received}
    assert len(epochs) == 1


async def test_history_since_and_paging(nodes: tuple[Node, Node]) -> None:
    """History keeps the last N per queue, reads since an id, pages with `more`, on any node."""
    a, b = nodes
    for i in range(1, 26):
        await a.engine.publish("h", [body(i)], STAMPS, history_length=10)
    page = await b.engine.history("h")
    assert [m[0] for m in page.messages] == list(range(16, 26))
    assert (page.first, page.last, page.more) == (16, 25, False)
    assert page.messages[0][1:3] == (body(16), STAMPS)
    assert page.messages[0][3].startswith(b"a ")  # the origin: node a
    page = await b.engine.history("h", since=20)
    assert [m[0] for m in page.messages] == [21, 22, 23, 24, 25]
    page = await b.engine.history("h", since=10, limit=4)
    assert [m[0] for m in page.messages] == [16, 17, 18, 19] and page.more
    page = await b.engine.history("h", since=19, limit=4)
    assert [m[0] for m in page.messages] == [20, 21, 22, 23] and page.more
    page = await b.engine.history("h", since=23, limit=4)
    assert [m[0] for m in page.messages] == [24, 25] and not page.more
    page = await b.engine.history("h", since=25)
    assert page.messages == [] and page.last == 25
    empty = await b.engine.history("never")
    assert (empty.epoch, empty.first, empty.last, empty.messages) == (None, None, 0, [])
    # A shorter history length takes effect at the next publish; zero keeps none.
    await a.engine.publish("h", [body(26)], STAMPS, history_length=3)
    assert [m[0] for m in (await a.engine.history("h")).messages] == [24, 25, 26]
    await a.engine.publish("h", [body(27)], STAMPS, history_length=0)
    page = await a.engine.history("h")
    assert page.messages == [] and page.last == 27 and page.epoch is not None


async def test_keys_carry_prefix_and_expiry(redis_server: RedisServer, nodes: tuple[Node, Node]) -> None:
    """Every key starts with the prefix; a queue's keys expire queue_ttl after its last publish."""
    a, _ = nodes
    await a.engine.publish("k", [body(1)], STAMPS, history_length=5)
    client = redis_server.client()
    keys = sorted(client.keys("*"))
    assert keys and all(key.startswith(b"test:") for key in keys)
    assert b"test:q:k:m" in keys and b"test:q:k:h" in keys
    ttl = client.pttl("test:q:k:m")
    assert 0 < ttl <= 7 * 24 * 3600 * 1000
    assert 0 < client.pttl("test:q:k:h") <= ttl
    assert client.hget("test:q:k:m", "last") == b"1"


async def test_epoch_changes_only_when_redis_lost_the_queue(redis_server: RedisServer, nodes: tuple[Node, Node]) -> None:
    """The epoch stays across publishes and nodes; FLUSHALL or a restart without persistence gives a new one and ids from 1."""
    a, b = nodes
    first = await a.engine.publish("e", [body(1)], STAMPS, history_length=5)
    again = await b.engine.publish("e", [body(2)], STAMPS, history_length=5)
    assert again.epoch == first.epoch and again.first_id == 2
    redis_server.client().flushall()
    after_flush = await a.engine.publish("e", [body(3)], STAMPS, history_length=5)
    assert after_flush.first_id == 1 and after_flush.epoch > first.epoch
    redis_server.restart()
    for _ in range(50):  # the first command after the restart may find its pooled connection closed
        try:
            after_restart = await b.engine.publish("e", [body(4)], STAMPS, history_length=5)
            break
        except ClusterUnavailable:
            await asyncio.sleep(0.1)
    assert after_restart.first_id == 1 and after_restart.epoch not in (first.epoch, after_flush.epoch)
    page = await a.engine.history("e")
    assert page.epoch == after_restart.epoch and [m[0] for m in page.messages] == [1]


async def test_reset_reported_to_listening_node(redis_server: RedisServer, nodes: tuple[Node, Node]) -> None:
    """A node listening when Redis loses the queue delivers the new numbering from 1, marked reset."""
    a, b = nodes
    b.engine.subscribe("r")
    await b.engine.sync()
    for i in range(3):
        await a.engine.publish("r", [body(i)], STAMPS, history_length=5)
    await b.wait_for(lambda: b.ids("r") == [1, 2, 3])
    redis_server.client().flushall()
    await a.engine.publish("r", [body(9)], STAMPS, history_length=5)
    await b.wait_for(lambda: b.ids("r") == [1, 2, 3, 1])
    assert b.deliveries[-1].reset and b.deliveries[-1].epoch != b.deliveries[0].epoch


async def test_point_to_point_reaches_the_node_holding_the_connection(nodes: tuple[Node, Node]) -> None:
    """A message to a connection (or its sub-address) reaches the node that listens for it; to nobody it is refused and not kept."""
    a, b = nodes
    b.engine.listen("conn-1")
    await b.engine.sync()
    numbered = await a.engine.publish("conn-1/7", [body(1)], STAMPS, history_length=5, to_connection="conn-1")
    assert numbered.receivers == 1
    await b.wait_for(lambda: b.ids("conn-1/7") == [1])
    assert a.received == []
    with pytest.raises(LookupError):
        await a.engine.publish("conn-2", [body(1)], STAMPS, history_length=5, to_connection="conn-2")
    assert (await a.engine.history("conn-2")).epoch is None  # nothing kept
    with pytest.raises(LookupError):
        await a.engine.publish("conn-1/7", [body(2)], STAMPS, history_length=5, to_connection="conn-9")
    page = await a.engine.history("conn-1/7")
    assert [m[0] for m in page.messages] == [1] and page.last == 1  # the refused one gave its id back
    b.engine.forget("conn-1")
    await b.engine.sync()
    with pytest.raises(LookupError):
        await a.engine.publish("conn-1", [body(3)], STAMPS, history_length=5, to_connection="conn-1")


async def test_unreachable_redis_at_start_raises(redis_server: RedisServer) -> None:
    """A node whose Redis does not answer refuses to start with a clear error."""
    port = redis_server.port
    redis_server.kill()
    engine = RedisEngine(settings_for(redis_server, "a"))
    with pytest.raises(ClusterUnavailable, match=f"cluster unavailable: Redis at redis://127.0.0.1:{port}/0"):
        await engine.start()
    await engine.close()


async def test_script_reloaded_after_script_flush(redis_server: RedisServer, nodes: tuple[Node, Node]) -> None:
    """A Redis that forgot the script (SCRIPT FLUSH, a restart) gets it again; the batches go through once."""
    a, _ = nodes
    await a.engine.publish("s", [body(1)], STAMPS, history_length=5)
    redis_server.client().script_flush()
    numbered = await asyncio.gather(*(a.engine.publish("s", [body(i)], STAMPS, history_length=5) for i in range(3)))
    assert sorted(n.first_id for n in numbered) == [2, 3, 4]
    assert (await a.engine.history("s")).last == 4


async def test_idle_queue_expires_into_a_new_epoch(redis_server: RedisServer) -> None:
    """A queue not published to for queue_ttl loses its keys; its next publish starts a new epoch at id 1."""
    node = Node(redis_server, "a", queue_ttl=0.2)
    await node.engine.start()
    try:
        first = await node.engine.publish("idle", [body(1), body(2)], STAMPS, history_length=5)
        client = redis_server.client()
        while client.exists("test:q:idle:m", "test:q:idle:h"):
            await asyncio.sleep(0.05)
        again = await node.engine.publish("idle", [body(3)], STAMPS, history_length=5)
        assert again.first_id == 1 and again.epoch != first.epoch
    finally:
        await node.engine.close()


async def test_persistent_redis_keeps_the_numbering_across_a_kill() -> None:
    """With appendonly/appendfsync always, Redis killed with -9 and restarted keeps epoch, ids and history."""
    server = RedisServer("--appendonly", "yes", "--appendfsync", "always")
    node = Node(server, "a")
    try:
        await node.engine.start()
        first = await node.engine.publish("kept", [body(i) for i in range(5)], STAMPS, history_length=10)
        server.restart()
        for _ in range(50):  # the pooled connection died with the server
            try:
                after = await node.engine.publish("kept", [body(5)], STAMPS, history_length=10)
                break
            except ClusterUnavailable:
                await asyncio.sleep(0.1)
        assert (after.epoch, after.first_id) == (first.epoch, 6)
        assert [m[0] for m in (await node.engine.history("kept")).messages] == [1, 2, 3, 4, 5, 6]
    finally:
        await node.engine.close()
        server.close()
