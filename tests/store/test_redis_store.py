"""Several nodes: the store's keys in Redis (a private redis-server), so every node answers the same over
memcached's port and the CoreMQ protocol: reads across nodes, CAS conflicts, expiry as Redis TTLs, flags."""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from pathlib import Path

import pytest
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheServerError

from brokers import BrokerThread
from coremq_broker.core.config import BrokerConfig
from coremq_broker.store.config import StoreConfig
from coremq_broker.store.redis_store import RedisStore
from coremq_broker.store.requests import StoreRequests
from coremq_broker.transports.memcached import MemcachedService
from coremq_client.errors import ServerError
from coremq_client.sync_client import MessageQueue
from memcached_peers import StoreServerThread, exchange
from redis_servers import RedisServer, redis_server  # noqa: F401  (the fixture)
from servers import ServerProcess
from test_differential import CASES, _normalise

pytestmark = pytest.mark.timeout(180)
CLUSTER_TESTS = Path(__file__).resolve().parent.parent / "cluster"


class StoreNode:
    """A broker with the store in Redis: its memcached port and its control requests."""

    def __init__(self, redis_url: str) -> None:
        self.broker = BrokerThread(BrokerConfig(host="127.0.0.1", port=0, shutdown_timeout=1.0))
        self.service = MemcachedService(StoreConfig(memcached_port=0, memcached_max_item_size=4096),
                                        redis_url=redis_url, key_prefix="test:")
        requests = StoreRequests(self.service.store)
        self.stops = self.broker.call(lambda: [self.service.attach(self.broker.broker),
                                               requests.attach(self.broker.broker)])
        self.memcached = Client(("127.0.0.1", self.service.server.port), default_noreply=False, timeout=10)

    def client(self, **options) -> MessageQueue:
        return MessageQueue("127.0.0.1", self.broker.port, **options)

    def close(self) -> None:
        self.memcached.close()
        self.broker.call(lambda: [stop() for stop in self.stops])
        self.broker.stop()
        self.service.store.close()


@pytest.fixture
def two_nodes(redis_server):  # noqa: F811
    a, b = StoreNode(redis_server.url), StoreNode(redis_server.url)
    try:
        yield a, b, redis_server
    finally:
        a.close()
        b.close()


def test_a_key_set_on_one_node_is_read_on_the_other(two_nodes):
    a, b, redis_server = two_nodes
    assert a.memcached.set("k", b"v1", flags=5) is True
    assert b.memcached.get("k") == b"v1"
    assert b.memcached.raw_command(b"mg k f s", b"\r\n") == b"HD f5 s2"
    with b.client() as mq:
        item = mq.store_get("k")
        assert (item.value, item.flags) == (b"v1", 5)
        mq.store_set("k", "v2", flags=9)
        assert mq.store_get("k").cas > item.cas
    assert a.memcached.gets("k")[0] == b"v2"
    with a.client() as mq:
        assert mq.store_get("k").flags == 9
    assert redis_server.client().hmget(b"test:s:k:i", "v", "f") == [b"v2", b"9"]
    assert b.memcached.append("k", b"+") and a.memcached.prepend("k", b"-")
    assert b.memcached.get("k") == b"-v2+"
    assert a.memcached.delete("k") is True
    assert b.memcached.get("k") is None and b.memcached.delete("k") is False
    assert a.memcached.add("n", b"1") is True and b.memcached.add("n", b"2") is False
    assert b.memcached.replace("n", b"3") is True and a.memcached.replace("none", b"3") is False
    assert a.memcached.get_many(["n", "none"]) == {"n": b"3"}


def test_cas_conflicts_across_nodes(two_nodes):
    a, b, _ = two_nodes
    a.memcached.set("c", b"0")
    value_a, cas_a = a.memcached.gets("c")
    value_b, cas_b = b.memcached.gets("c")
    assert cas_a == cas_b
    assert a.memcached.cas("c", b"from a", cas_a) is True
    assert b.memcached.cas("c", b"from b", cas_b) is False  # EXISTS: a changed it first
    assert b.memcached.get("c") == b"from a"
    with a.client() as mq_a, b.client() as mq_b:
        read = mq_a.store_get("c").cas
        assert mq_b.store_get("c").cas == read
        new = mq_b.store_set("c", "b wins", cas=read)
        with pytest.raises(ServerError) as error:
            mq_a.store_set("c", "a loses", cas=read)
        assert error.value.code == "store_cas_mismatch"
        assert mq_a.store_get("c").cas == new
        with pytest.raises(ServerError) as error:
            mq_a.store_set("missing", "x", cas=new)
        assert error.value.code == "store_not_found"
        with pytest.raises(ServerError) as error:
            mq_a.store_set("c", "x", mode="add")
        assert error.value.code == "store_exists"
        with pytest.raises(ServerError) as error:
            mq_a.store_set("big", "x" * 5000)
        assert error.value.code == "store_too_large"


def test_incr_from_both_nodes_at_once_loses_no_update(two_nodes):
    a, b, _ = two_nodes
    a.memcached.set("count", b"0")
    ports = [a.service.server.port, b.service.server.port]

    def bump(port: int) -> None:
        client = Client(("127.0.0.1", port), default_noreply=False, timeout=10)
        for _ in range(100):
            client.incr("count", 1)
        client.close()

    threads = [threading.Thread(target=bump, args=(port,)) for port in ports * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert b.memcached.get("count") == b"400"
    with a.client() as mq:
        assert mq.store_incr("count", -401) == 0
        mq.store_set("text", "abc")
        with pytest.raises(ServerError) as error:
            mq.store_incr("text")
        assert error.value.code == "store_not_numeric"
    assert b.memcached.decr("count", 5) == 0
    assert b.memcached.incr("missing", 1) is None


def test_expiry_is_a_redis_ttl(two_nodes):
    a, b, redis_server = two_nodes
    redis = redis_server.client()
    a.memcached.set("t", b"1", expire=100)
    assert 0 < redis.pttl(b"test:s:t:i") <= 100_000
    assert b.memcached.touch("t", 0) is True
    assert redis.pttl(b"test:s:t:i") == -1  # no expiry
    b.memcached.set("t", b"2", expire=-1)  # memcached: expired at once
    assert a.memcached.get("t") is None and redis.exists(b"test:s:t:i") == 0
    with a.client() as mq:
        mq.store_set("t", "3", ttl=1)
        assert mq.store_get("t").expires is not None
        assert b.memcached.get("t") == b"3"
        deadline = time.monotonic() + 10
        while b.memcached.get("t") is not None:  # Redis drops it after a second (no timing asserted)
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert mq.store_get("t") is None
        mq.store_set("u", "1")
        assert mq.store_touch("u", 50) is True
        assert 0 < redis.pttl(b"test:s:u:i") <= 50_000
    assert a.memcached.raw_command(b"gat 50 u", b"END\r\n") == b"VALUE u 0 1\r\n1\r\n"
    a.memcached.set("soon", b"1", expire=10)
    assert b.memcached.flush_all(delay=100) is True  # a delayed flush: each key expires then, or sooner
    assert 10_000 < redis.pttl(b"test:s:u:i") <= 100_000
    assert 0 < redis.pttl(b"test:s:soon:i") <= 10_000


def test_flush_all_and_watch_on_the_node_that_made_the_change(two_nodes):
    a, b, _ = two_nodes
    for key in ("f1", "f2"):
        a.memcached.set(key, b"x")
    with b.client(queues=["coremq.store.w"]) as watcher, b.client() as mq:
        mq.store_set("w", "1")
        change = watcher.get_message(timeout=5)[1]
        assert (change["event"], change["value"]) == ("set", "1")
        b.memcached.incr("w", 2)
        change = watcher.get_message(timeout=5)[1]
        assert (change["event"], change["value"]) == ("incr", "3")
    assert b.memcached.flush_all() is True
    assert a.memcached.get_many(["f1", "f2", "w"]) == {}


@pytest.mark.parametrize("name", sorted(CASES))
def test_differential_cases_with_the_keys_in_redis(name, memcached, redis_server):  # noqa: F811
    """The differential sequences answer as memcached does with the store in Redis too."""
    store = StoreServerThread(RedisStore(redis_server.url, "diff:"))
    try:
        expected = exchange(memcached.port, [CASES[name]])
        assert _normalise(exchange(store.port, [CASES[name]])) == _normalise(expected)
    finally:
        store.stop()
        store.store.close()


def test_redis_unreachable_answers_store_unavailable(redis_server):  # noqa: F811
    node = StoreNode(redis_server.url)
    try:
        node.memcached.set("k", b"v")
        redis_server.kill()
        with node.client() as mq:
            with pytest.raises(ServerError) as error:
                mq.store_get("k")
            assert error.value.code == "store_unavailable"
            assert mq.status()["response"] == "OK: Status"  # the broker goes on
        with pytest.raises((MemcacheServerError, ConnectionError, OSError)):
            node.memcached.get("k")
    finally:
        node.close()


def test_two_run_coremq_nodes_share_the_store(redis_server, tmp_path):  # noqa: F811
    def node(name: str) -> tuple[ServerProcess, int, int]:
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "cluster_settings",
               "COREMQ_DATABASE": str(tmp_path / f"{name}.sqlite3"), "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join([str(CLUSTER_TESTS), os.environ.get("PYTHONPATH", "")])}
        process = ServerProcess([sys.executable, "manage.py", "run_coremq", "--no-web", "--host", "127.0.0.1",
                                 "--port", "0", "--memcached-port", "0", "--redis", redis_server.url,
                                 "--node-name", name], env)
        memcached = int(re.search(r":(\d+)", process.wait_for("CoreMQ store (memcached protocol)")).group(1))
        broker = int(re.search(r":(\d+) \(TCP\)", process.wait_for("CoreMQ broker listening on")).group(1))
        return process, memcached, broker

    first, second = node("one"), node("two")
    try:
        one = Client(("127.0.0.1", first[1]), default_noreply=False, timeout=10)
        two = Client(("127.0.0.1", second[1]), default_noreply=False, timeout=10)
        assert one.set("shared", b"from one", flags=3) is True
        assert two.get("shared") == b"from one"
        with MessageQueue("127.0.0.1", second[2]) as mq:
            item = mq.store_get("shared")
            assert (item.text, item.flags) == ("from one", 3)
            mq.store_set("shared", "from two", cas=item.cas)
        _, cas = one.gets("shared")
        assert two.cas("shared", b"x", cas) is True
        assert one.cas("shared", b"y", cas) is False
        with MessageQueue("127.0.0.1", second[2], queues=["coremq.store.watched"]) as watcher:
            # Node one holds no such queue: the change made there reaches the subscriber on node two.
            deadline = time.monotonic() + 10
            while True:
                one.set("watched", b"1")
                delivered = watcher.get_message(timeout=0.5)
                if delivered[0] is not None:
                    break
                assert time.monotonic() < deadline, "no change message from the other node"
            assert (delivered[1]["event"], delivered[1]["value"]) == ("set", "1")
            one.incr("watched", 1)
            assert (watcher.get_message(timeout=5)[1]["value"]) == "2"
        one.close()
        two.close()
    finally:
        first[0].stop()
        second[0].stop()
