"""Redis killed, restarted, stopped, or a node's connection cut: errors, then recovery, in order and exactly once."""

from __future__ import annotations

import asyncio

import pytest

from coremq_broker.cluster import ClusterUnavailable

from redis_nodes import Node, RedisServer

pytestmark = pytest.mark.asyncio

STAMPS = b',"coremq_id":'


class Stream:
    """Node ``a`` publishing one message every few ms to ``queue`` until stopped, noting acks and errors."""

    def __init__(self, node: Node, queue: str) -> None:
        self.node = node
        self.queue = queue
        self.acked: list[tuple[int, int]] = []  # (epoch, id)
        self.errors: list[str] = []
        self.running = True
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        n = 0
        while self.running:
            n += 1
            try:
                numbered = await self.node.engine.publish(self.queue, [b'{"n":%d}' % n], STAMPS, history_length=1000)
                self.acked.append((numbered.epoch, numbered.first_id))
            except ClusterUnavailable as exc:
                self.errors.append(str(exc))
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        self.running = False
        await self.task

    async def until(self, predicate, timeout: float = 20.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            assert asyncio.get_running_loop().time() < deadline, (len(self.acked), self.errors[-3:])
            await asyncio.sleep(0.02)


def in_order_once(node: Node, queue: str) -> dict[int, list[int]]:
    """The ids ``node`` delivered for ``queue``, per epoch, checked to be 1.. in order with no repeat."""
    per_epoch: dict[int, list[int]] = {}
    for name, epoch, message_id, _, _ in node.received:
        if name == queue:
            per_epoch.setdefault(epoch, []).append(message_id)
    for ids in per_epoch.values():
        assert ids == list(range(ids[0], ids[0] + len(ids))), ids
    return per_epoch


async def test_redis_killed_and_restarted_mid_stream(redis_server: RedisServer, nodes: tuple[Node, Node]) -> None:
    """While Redis is down publishes raise a clear error; after its restart the stream goes on, resubscribed, as a reset."""
    a, b = nodes
    b.engine.subscribe("s")
    await b.engine.sync()
    stream = Stream(a, "s")
    await stream.until(lambda: len(stream.acked) >= 50)
    redis_server.kill()
    await stream.until(lambda: len(stream.errors) >= 5)
    assert stream.errors[-1].startswith(f"cluster unavailable: Redis at {redis_server.url}")
    await b.wait_for(lambda: not b.engine.healthy)
    acked_before = len(stream.acked)
    redis_server.start()
    await stream.until(lambda: len(stream.acked) >= acked_before + 50)
    await b.wait_for(lambda: b.engine.healthy)
    await stream.stop()
    epochs = in_order_once(b, "s")
    first_epoch, second_epoch = stream.acked[0][0], stream.acked[-1][0]
    assert first_epoch != second_epoch and set(epochs) == {first_epoch, second_epoch}
    assert epochs[second_epoch][0] == 1  # the new numbering from its start: history filled what came before the resubscribe
    await b.wait_for(lambda: b.ids("s")[-1] == stream.acked[-1][1])
    assert [d for d in b.deliveries if d.reset] and b.deliveries[[d.epoch for d in b.deliveries].index(second_epoch)].reset
    acked = {(epoch, message_id) for epoch, message_id in stream.acked}
    delivered = {(epoch, message_id) for _, epoch, message_id, _, _ in b.received}
    assert acked <= delivered  # every acknowledged message reached the other node
    assert b.engine.subscriber.reconnects >= 1
    assert redis_server.client().pubsub_numsub("test:q:s") == [(b"test:q:s", 1)]


async def test_cut_connection_catches_up_from_history(redis_server: RedisServer, nodes: tuple[Node, Node]) -> None:
    """A node whose pub/sub connection is killed reconnects and delivers what it missed from history, no gap, no repeat."""
    a, b = nodes
    b.engine.subscribe("c")
    await b.engine.sync()
    stream = Stream(a, "c")
    await stream.until(lambda: len(stream.acked) >= 30)
    for _ in range(3):
        redis_server.client().client_kill_filter(_type="pubsub")
        count = len(stream.acked)
        await stream.until(lambda: len(stream.acked) >= count + 20)
    await stream.until(lambda: len(stream.acked) >= 200)
    await stream.stop()
    await b.wait_for(lambda: b.ids("c")[-1:] == [stream.acked[-1][1]])
    assert not stream.errors
    assert in_order_once(b, "c") == {stream.acked[0][0]: list(range(1, stream.acked[-1][1] + 1))}
    assert b.engine.subscriber.reconnects >= 1 and b.engine.subscriber.missing == 0


async def test_history_window_passed_reports_missing(redis_server: RedisServer, nodes: tuple[Node, Node]) -> None:
    """What left history while a node was cut off is reported as missing ids, then delivery goes on in order."""
    a, b = nodes
    b.engine.subscribe("w")
    await b.engine.sync()
    await a.engine.publish("w", [b'{"n":1}'], STAMPS, history_length=3)
    await b.wait_for(lambda: b.ids("w") == [1])
    redis_server.client().client_kill_filter(_type="pubsub")  # b reconnects after its backoff (0.1 s)...
    # ...by when these ten went through one pipeline, and history keeps the last three.
    await asyncio.gather(*(a.engine.publish("w", [b'{"n":%d}' % n], STAMPS, history_length=3) for n in range(2, 12)))
    await b.wait_for(lambda: b.ids("w")[-1:] == [11])
    assert b.ids("w") == [1, 9, 10, 11]
    hole = [d for d in b.deliveries if d.missing]
    assert len(hole) == 1 and hole[0].missing == (2, 8) and hole[0].first_id == 9
    assert b.engine.subscriber.missing == 7
    await a.engine.publish("w", [b'{"n":12}'], STAMPS, history_length=3)
    await b.wait_for(lambda: b.ids("w") == [1, 9, 10, 11, 12])


async def test_probe_detects_a_stopped_redis(redis_server: RedisServer, nodes: tuple[Node, Node]) -> None:
    """A Redis stopped with SIGSTOP keeps connections open but answers nothing: the probe notices, publishes fail,
    and after SIGCONT the node reconnects and delivers in order again."""
    a, b = nodes
    b.engine.subscribe("p")
    await b.engine.sync()
    await a.engine.publish("p", [b'{"n":1}'], STAMPS, history_length=100)
    await b.wait_for(lambda: b.ids("p") == [1])
    failed = b.engine.subscriber.probes_failed
    redis_server.pause()
    try:
        await b.wait_for(lambda: b.engine.subscriber.probes_failed > failed and not b.engine.healthy)
        assert "probe" in (b.engine.subscriber.down_reason or "") or b.engine.subscriber.down_reason
        with pytest.raises(ClusterUnavailable, match="cluster unavailable: Redis at"):
            await a.engine.publish("p", [b'{"n":2}'], STAMPS, history_length=100)
    finally:
        redis_server.resume()
    await b.wait_for(lambda: b.engine.healthy)
    await a.wait_for(lambda: a.engine.healthy)
    numbered = await a.engine.publish("p", [b'{"n":3}'], STAMPS, history_length=100)
    await b.wait_for(lambda: b.ids("p")[-1:] == [numbered.first_id])
    in_order_once(b, "p")


async def test_probe_detects_paused_clients(redis_server: RedisServer, nodes: tuple[Node, Node]) -> None:
    """CLIENT PAUSE (writes) holds every publish, the probe's too: the node reports itself unhealthy, then recovers."""
    a, b = nodes
    failed = b.engine.subscriber.probes_failed
    redis_server.client().client_pause(3000, all=False)
    await b.wait_for(lambda: b.engine.subscriber.probes_failed > failed)
    await b.wait_for(lambda: b.engine.healthy)  # the pause ends; the node reconnected
    b.engine.subscribe("after")
    await b.engine.sync()
    await a.engine.publish("after", [b'{"n":1}'], STAMPS, history_length=5)
    await b.wait_for(lambda: b.ids("after") == [1])
