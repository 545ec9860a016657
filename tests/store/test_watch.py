"""Watch: key changes made over the memcached protocol reach CoreMQ subscribers of coremq.store.<key>,
under the broker's access rules."""

from __future__ import annotations

import pytest
from pymemcache.client.base import Client

from brokers import BrokerThread
from coremq_broker.core.access import Rule, RulePolicy
from coremq_broker.core.config import BrokerConfig
from coremq_broker.store.config import StoreConfig
from coremq_broker.transports.memcached import MemcachedService
from coremq_client.errors import ServerError
from coremq_client.sync_client import MessageQueue

RULES = (Rule("coremq.store.public.*", frozenset({"subscribe", "history"}), anonymous=True),)
FIELDS = ("event", "key", "value", "value_base64", "size", "flags", "cas", "expires")


@pytest.fixture
def watched():
    broker = BrokerThread(BrokerConfig(host="127.0.0.1", port=0, shutdown_timeout=1.0),
                          access=RulePolicy(RULES, default="deny"))
    service = MemcachedService(StoreConfig(memcached_port=0, memcached_memory=20_000))
    stop = broker.call(lambda: service.attach(broker.broker))
    client = Client(("127.0.0.1", service.server.port), default_noreply=False)
    try:
        yield broker, service, client
    finally:
        client.close()
        broker.call(stop)
        broker.stop()


def _change(mq: MessageQueue) -> dict:
    queue, message = mq.get_message(timeout=5)
    assert queue is not None, "no change message within 5 s"
    return {key: value for key, value in message.items() if key in FIELDS}


def test_subscribers_see_each_change(watched):
    """set, incr, delete, expiry and eviction of a key each arrive, in order, as a message on its queue."""
    broker, service, client = watched
    with MessageQueue("127.0.0.1", broker.port, queues=["coremq.store.public.count"]) as mq:
        client.set("public.count", b"1", flags=3)
        assert _change(mq) == {"event": "set", "key": "public.count", "value": "1", "size": 1, "flags": 3,
                               "cas": 1, "expires": None}
        assert client.incr("public.count", 4) == 5
        assert _change(mq) | {"cas": 0} == {"event": "incr", "key": "public.count", "value": "5", "size": 1,
                                            "flags": 3, "cas": 0, "expires": None}
        client.delete("public.count")
        assert _change(mq) == {"event": "delete", "key": "public.count"}
        client.set("public.count", b"\xff\x00", expire=1)
        assert _change(mq)["value_base64"] == "/wA="
        assert _change(mq) == {"event": "expire", "key": "public.count"}  # the sweep, within about 2 s
        client.set("public.count", b"2")
        assert _change(mq)["event"] == "set"
        for i in range(40):  # 20 kB cap: the oldest key goes
            client.set(f"other{i}", b"x" * 500)
        assert _change(mq) == {"event": "evict", "key": "public.count"}
        assert service.store.bytes <= 20_000


def test_access_rules_apply_and_unwatched_keys_make_no_queue(watched):
    """A queue the rules deny cannot be subscribed; keys nobody watches create no queue."""
    broker, service, client = watched
    with MessageQueue("127.0.0.1", broker.port) as mq:
        with pytest.raises(ServerError, match="permission denied"):
            mq.subscribe("coremq.store.secret")
    client.set("secret", b"1")
    client.set("unwatched", b"1")
    names = broker.call(lambda: set(broker.broker.registry.queues))
    assert "coremq.store.unwatched" not in names
