"""Two real brokers (TCP) on one Redis through ClusterEngine: a publish on one reaches a subscriber on the other.

The engine learns of the subscriber from the broker's registry (``ClusterEngine.bind``
watches it): the subscriber's node listens to the queue's channel once it subscribed.
"""

from __future__ import annotations

import asyncio
import time

from coremq_broker.cluster.broker_engine import ClusterEngine
from coremq_broker.core.config import BrokerConfig
from coremq_client.sync_client import MessageQueue

from brokers import BrokerThread
from redis_nodes import settings_for
from redis_servers import RedisServer


def test_publish_on_one_broker_delivered_by_the_other(redis_server: RedisServer) -> None:
    """Ids come from Redis whichever broker takes the publish; each subscriber gets every message once, in order."""
    engines = {name: ClusterEngine(settings_for(redis_server, name), address=name) for name in ("a", "b")}
    brokers = {name: BrokerThread(BrokerConfig(port=0), engine=engine) for name, engine in engines.items()}
    clients = []
    try:
        subscriber = MessageQueue(brokers["b"].host, brokers["b"].port, queues=["news"], resume=False)
        clients.append(subscriber)
        subscriber.connect()
        b = brokers["b"]
        assert b.call(lambda: engines["b"].redis.listening("news"))
        asyncio.run_coroutine_threadsafe(engines["b"].redis.sync(), b.loop).result(10)
        publishers = [MessageQueue(brokers[name].host, brokers[name].port) for name in ("a", "b", "a")]
        clients.extend(publishers)
        for publisher in publishers:
            publisher.connect()
        acknowledged = []
        for n in range(30):
            reply = publishers[n % 3].publish("news", {"n": n})
            acknowledged.append(reply["id"])
        assert acknowledged == list(range(1, 31))  # one numbering across both brokers
        received = []
        while len(received) < 30:
            delivery = subscriber.receive(timeout=10)
            assert delivery is not None, received
            received.append((delivery.id, delivery.message["n"]))
        assert received == [(n + 1, n) for n in range(30)]
        # Each node's heartbeat carries its registry's counts: a holds two connections, b two.
        nodes = asyncio.run_coroutine_threadsafe(engines["a"].redis.nodes(), brokers["a"].loop).result(10)
        assert [node["name"] for node in nodes] == ["a", "b"]
        assert all(set(ClusterEngine.FIGURES) <= set(node) for node in nodes)
        deadline = time.monotonic() + 20
        while {node["name"]: node["connections"] for node in nodes} != {"a": 2, "b": 2}:
            assert time.monotonic() < deadline, nodes
            time.sleep(0.05)
            nodes = asyncio.run_coroutine_threadsafe(engines["a"].redis.nodes(), brokers["a"].loop).result(10)
    finally:
        for client in clients:
            client.close()
        for broker in brokers.values():
            broker.stop()


def test_history_after_redis_lost_the_queue_is_the_new_numbering(redis_server: RedisServer) -> None:
    """A node's own older messages of a queue Redis lost are not mixed into the history it answers."""
    engines = {name: ClusterEngine(settings_for(redis_server, name), address=name) for name in ("a", "b")}
    brokers = {name: BrokerThread(BrokerConfig(port=0), engine=engine) for name, engine in engines.items()}
    clients = []
    try:
        a = MessageQueue(brokers["a"].host, brokers["a"].port)
        b = MessageQueue(brokers["b"].host, brokers["b"].port)
        clients += [a, b]
        a.connect()
        b.connect()
        for n in range(5):
            a.publish("kept", {"n": n})
        assert [m["n"] for m in b.get_history("kept")["kept"]] == [0, 1, 2, 3, 4]  # read from Redis on b
        redis_server.client().flushall()  # Redis lost every queue
        assert [b.publish("kept", {"n": n})["id"] for n in (10, 11)] == [1, 2]
        history = a.history("kept")
        assert [(m["coremq_id"], m["n"]) for m in history["history"]["kept"]] == [(1, 10), (2, 11)]
        assert history["sequence"]["kept"]["last"] == 2
    finally:
        for mq in clients:
            mq.close()
        for broker in brokers.values():
            broker.stop()
