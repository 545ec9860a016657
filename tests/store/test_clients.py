"""Real memcached clients against the store: Django's PyMemcacheCache, pymemcache's Client and HashClient."""

from __future__ import annotations

import time

import pytest
from django.core.cache.backends.memcached import PyMemcacheCache
from pymemcache.client.base import Client
from pymemcache.client.hash import HashClient
from pymemcache.exceptions import MemcacheServerError

from memcached_peers import StoreServerThread


@pytest.fixture
def cache(store_server):
    backend = PyMemcacheCache(f"127.0.0.1:{store_server.port}", {"TIMEOUT": 300})
    try:
        yield backend
    finally:
        backend.close()


def test_django_cache_api(cache, store_server):
    """get/set/add/delete/incr/decr/touch/get_many/set_many/delete_many/clear behave as Django documents."""
    assert cache.get("missing", "default") == "default"
    cache.set("a", {"x": [1, 2]})
    assert cache.get("a") == {"x": [1, 2]}
    assert cache.add("a", 1) is False and cache.add("b", 2) is True and cache.get("b") == 2
    assert cache.delete("b") is True and cache.delete("b") is False
    cache.set("n", 10)
    assert cache.incr("n") == 11 and cache.incr("n", 5) == 16 and cache.decr("n", 20) == 0
    with pytest.raises(ValueError):
        cache.incr("nothing")
    assert cache.touch("n", 100) is True and cache.touch("nothing", 100) is False
    assert cache.set_many({"k1": "v1", "k2": b"v2", "k3": 3}) == []
    assert cache.get_many(["k1", "k2", "k3", "k4"]) == {"k1": "v1", "k2": b"v2", "k3": 3}
    cache.delete_many(["k1", "k2"])
    assert cache.get_many(["k1", "k2", "k3"]) == {"k3": 3}
    cache.clear()
    assert cache.get("a") is None and cache.get("k3") is None


def test_django_cache_timeouts(cache, store_server):
    """Timeout 0 expires at once, None never, over 30 days becomes an absolute time that keeps the key."""
    cache.set("zero", 1, timeout=0)
    assert cache.get("zero") is None
    cache.set("never", 1, timeout=None)
    cache.set("long", 1, timeout=60 * 60 * 24 * 45)
    assert cache.get("never") == 1 and cache.get("long") == 1
    expires = store_server.call(lambda: (store_server.store.items[b":1:never"].expires,
                                         store_server.store.items[b":1:long"].expires))
    assert expires[0] == 0 and expires[1] > time.time() + 60 * 60 * 24 * 44
    cache.touch("never", 0)  # Django's touch with 0 deletes
    assert cache.get("never") is None


def test_django_cache_large_value(cache):
    """A value over 1 MiB is refused as memcached refuses it (pymemcache raises), and a failed set deletes the key."""
    with pytest.raises(MemcacheServerError, match="object too large for cache"):
        cache.set("big", b"x" * (2**20 + 1))
    assert cache.get("big") is None
    cache.set("fits", b"y" * 900_000)
    assert cache.get("fits") == b"y" * 900_000
    with pytest.raises(MemcacheServerError):
        cache.set("fits", b"z" * (2**20 + 10))
    assert cache.get("fits") is None


def test_pymemcache_client(store_server):
    """pymemcache's Client: set/get/gets/cas/append/incr/decr/touch/delete/stats/version, noreply and not."""
    client = Client(("127.0.0.1", store_server.port), default_noreply=False)
    try:
        assert client.set("k", b"v", expire=100, flags=7) is True
        assert client.get("k") == b"v"
        value, cas = client.gets("k")
        assert value == b"v" and client.cas("k", b"w", cas) is True and client.cas("k", b"x", cas) is False
        assert client.append("k", b"!") is True and client.prepend("k", b"<") is True and client.get("k") == b"<w!"
        client.set("n", b"1")
        assert client.incr("n", 2**64 - 1) == 0 and client.decr("n", 5) == 0
        assert client.touch("k", 10) is True and client.touch("nope", 10) is False
        assert client.get_many(["k", "n", "x"]) == {"k": b"<w!", "n": b"0"}
        assert client.delete("k") is True and client.get("k") is None
        assert client.set("q", b"1", noreply=True) is True and client.get("q") == b"1"
        assert client.stats()[b"curr_items"] == 2
        assert client.version() == b"1.6.18"
        client.flush_all()
        assert client.get("n") is None
    finally:
        client.close()


def test_pymemcache_hash_client():
    """pymemcache's HashClient spreads keys over two stores and finds each again."""
    servers = [StoreServerThread(), StoreServerThread()]
    try:
        client = HashClient([("127.0.0.1", s.port) for s in servers])
        client.set_many({f"key{i}": str(i).encode() for i in range(200)})
        assert client.get_many([f"key{i}" for i in range(200)]) == {f"key{i}": str(i).encode() for i in range(200)}
        counts = [s.call(lambda s=s: len(s.store.items)) for s in servers]
        assert sum(counts) == 200 and min(counts) > 0
        client.close()
    finally:
        for server in servers:
            server.stop()
