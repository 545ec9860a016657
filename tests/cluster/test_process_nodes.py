"""``coremq_broker.start(redis=..., node_name=...)``: brokers in processes of their own, as nodes of one cluster."""

from __future__ import annotations

import pytest

from coremq_broker import start
from coremq_client.sync_client import MessageQueue
from redis_servers import RedisServer, free_port


def test_two_started_nodes_share_ids_and_deliveries(redis_server: RedisServer) -> None:
    with start("127.0.0.1", 0, redis=redis_server.url, node_name="p1", log_level="WARNING") as one, \
            start("127.0.0.1", 0, redis=redis_server.url, node_name="p2", log_level="WARNING") as two:
        with MessageQueue("127.0.0.1", two.port, queues=["shared"]) as subscriber, \
                MessageQueue("127.0.0.1", one.port) as publisher:
            assert [publisher.publish("shared", {"n": n})["id"] for n in range(3)] == [1, 2, 3]
            got = [subscriber.receive(timeout=10) for _ in range(3)]
            assert [(d.id, d.message["n"]) for d in got if d is not None] == [(1, 0), (2, 1), (3, 2)]
            assert subscriber.status()["durable"]["node"] == "p2"


def test_start_refuses_an_unreachable_redis_and_a_name_without_redis() -> None:
    with pytest.raises(OSError, match="cluster unavailable: Redis at redis://127.0.0.1:"):
        start("127.0.0.1", 0, redis=f"redis://127.0.0.1:{free_port()}/0", log_level="CRITICAL")
    with pytest.raises(ValueError, match="redis:// or rediss://"):
        start("127.0.0.1", 0, redis="http://example.com")
    with pytest.raises(TypeError, match="node_name needs redis"):
        start("127.0.0.1", 0, node_name="lonely")
