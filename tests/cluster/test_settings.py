"""Cluster settings: URLs, prefix, node name, and the system check against a real redis-server."""

from __future__ import annotations

import socket

import pytest
from django.core.checks import Error

from coremq_broker.cluster import ClusterSettingError, parse_settings, redis_problems
from coremq_broker.cluster_checks import check_cluster

from redis_nodes import Node, RedisServer


def test_urls_prefix_and_node_name() -> None:
    """redis:// and rediss:// URLs are taken; the node name defaults to <host>:<port> of the listener."""
    settings = parse_settings("redis://127.0.0.1:6380/2", key_prefix="shop:", host="10.0.0.5", port=7000)
    assert (settings.redis_url, settings.key_prefix, settings.node_name) == ("redis://127.0.0.1:6380/2", "shop:",
                                                                           "10.0.0.5:7000")
    assert parse_settings("rediss://user:secret@redis.example:6390/0").node_name == "127.0.0.1:6747"
    assert parse_settings(None, node_name="west-1").redis_url == "redis://127.0.0.1:6379/0"
    assert parse_settings(host="0.0.0.0", port=7001).node_name == f"{socket.gethostname()}:7001"
    assert parse_settings(probe_interval=0.5).probe_interval == 0.5


@pytest.mark.parametrize("url, fragment", [
    ("http://127.0.0.1:6379/0", "scheme"),
    ("redis://:6379/0", "names no host"),
    ("redis://127.0.0.1:99999/0", "out of range"),
    ("redis://127.0.0.1:6379/zero", "database must be a number"),
    ("", "non-empty"),
    ("unix:///tmp/redis.sock", "scheme"),
])
def test_bad_urls_have_id_and_hint(url: str, fragment: str) -> None:
    """A URL the engine cannot use raises coremq.E101 with a hint; a password is never shown."""
    with pytest.raises(ClusterSettingError, match=fragment) as caught:
        parse_settings(url)
    assert caught.value.id == "coremq.E101" and caught.value.hint


def test_password_redacted_and_prefix_and_name_checked() -> None:
    """Messages hide the URL's password; prefix and node name have their own ids."""
    with pytest.raises(ClusterSettingError) as caught:
        parse_settings("redis://bob:hunter2@127.0.0.1:6379/x")
    assert "hunter2" not in str(caught.value) and "bob:***@" in str(caught.value)
    for prefix in ("", "a b", "{tag}", "x" * 65):
        with pytest.raises(ClusterSettingError) as caught:
            parse_settings(key_prefix=prefix)
        assert caught.value.id == "coremq.E102"
    with pytest.raises(ClusterSettingError) as caught:
        parse_settings(node_name="two words")
    assert caught.value.id == "coremq.E103"
    with pytest.raises(ClusterSettingError) as caught:
        parse_settings(no_such_option=1)
    assert caught.value.id == "coremq.E104"


def test_redis_problems_against_a_real_server() -> None:
    """Reachable: no problem; wrong password: E107; stopped: E105 naming the URL."""
    server = RedisServer(password="right")
    try:
        assert redis_problems(parse_settings(f"redis://:right@127.0.0.1:{server.port}/0")) == []
        wrong = redis_problems(parse_settings(f"redis://:wrong@127.0.0.1:{server.port}/0"))
        assert [problem.id for problem in wrong] == ["coremq.E107"] and "wrong" not in wrong[0].message
        server.kill()
        down = redis_problems(parse_settings(f"redis://127.0.0.1:{server.port}/0"), timeout=0.5)
        assert [problem.id for problem in down] == ["coremq.E105"]
        assert f"127.0.0.1:{server.port}" in down[0].message and down[0].hint
    finally:
        server.close()


def test_django_check(settings, redis_server: RedisServer) -> None:
    """manage.py check: nothing without ENGINE; with ENGINE 'redis' errors for a bad value, URL or a dead Redis."""
    settings.COREMQ = {}
    assert check_cluster() == []
    settings.COREMQ = {"ENGINE": "redis", "REDIS_URL": redis_server.url, "REDIS_PREFIX": "t:"}
    assert check_cluster() == []
    settings.COREMQ = {"ENGINE": "mongo"}
    assert [error.id for error in check_cluster()] == ["coremq.E100"]
    settings.COREMQ = {"ENGINE": "redis", "REDIS_URL": "http://x"}
    errors = check_cluster()
    assert [error.id for error in errors] == ["coremq.E101"] and isinstance(errors[0], Error) and errors[0].hint
    redis_server.kill()
    settings.COREMQ = {"ENGINE": "redis", "REDIS_URL": redis_server.url}
    errors = check_cluster()
    assert [error.id for error in errors] == ["coremq.E105"] and "unreachable" in errors[0].msg


@pytest.mark.asyncio
async def test_rediss_url_over_tls() -> None:
    """rediss:// works end to end: the check passes, a node publishes and another receives over TLS."""
    server = RedisServer(tls=True)
    try:
        options = {"redis_options": {"ssl_ca_certs": server.ca_file}}
        assert server.url.startswith("rediss://")
        assert redis_problems(parse_settings(server.url, **options)) == []
        assert [problem.id for problem in redis_problems(parse_settings(server.url.replace("rediss", "redis")),
                                                         timeout=0.5)] == ["coremq.E105"]
        a, b = Node(server, "a", **options), Node(server, "b", **options)
        await a.engine.start()
        await b.engine.start()
        try:
            b.engine.subscribe("secure")
            await b.engine.sync()
            await a.engine.publish("secure", [b'{"n":1}'], b',"coremq_id":', history_length=5)
            await b.wait_for(lambda: b.ids("secure") == [1])
        finally:
            await a.engine.close()
            await b.engine.close()
    finally:
        server.close()


def test_manage_py_check_knows_the_cluster_keys(settings, redis_server: RedisServer) -> None:
    """Every registered check: the cluster keys are known settings (no coremq.E002); a dead Redis is coremq.E105."""
    from django.core import checks

    from coremq_broker import conf

    settings.COREMQ = {"ENGINE": "redis", "REDIS_URL": redis_server.url, "REDIS_PREFIX": "t:", "NODE_NAME": "n1"}
    assert [message.id for message in checks.run_checks() if message.is_serious()] == []
    cluster = conf.get_cluster_settings(host="127.0.0.1", port=7000)
    assert (cluster.redis_url, cluster.key_prefix, cluster.node_name) == (redis_server.url, "t:", "n1")
    settings.COREMQ = {"ENGINE": "redis", "REDIS_URL": redis_server.url}
    assert conf.get_cluster_settings(host="127.0.0.1", port=7000).node_name == "127.0.0.1:7000"
    settings.COREMQ = {}
    assert conf.get_cluster_settings() is None  # the embedded default
    settings.COREMQ = {"ENGINE": "redis", "REDIS_URL": redis_server.url, "NODE_NAME": 5}
    assert "coremq.E003" in [message.id for message in checks.run_checks()]
    redis_server.kill()
    settings.COREMQ = {"ENGINE": "redis", "REDIS_URL": redis_server.url}
    assert [message.id for message in checks.run_checks() if message.is_serious()] == ["coremq.E105"]
