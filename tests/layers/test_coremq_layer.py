"""What the CoreMQ layer adds to the specification: groups as queues, drops visible, settings.COREMQ by default."""

from __future__ import annotations

import asyncio
import base64
import os

import msgpack
import pytest
from django.test import AsyncClient, override_settings

from coremq_broker.layers import DROPS_QUEUE, CoreMQChannelLayer, _address, layer_drops, reset_layer_drops
from coremq_client import AsyncMessageQueue, CoreMQError

pytestmark = pytest.mark.asyncio


@pytest.fixture
def layer(layer_broker):
    return CoreMQChannelLayer(hosts=[f"coremq://127.0.0.1:{layer_broker.port}"], prefix=f"x{os.urandom(3).hex()}",
                              capacity=2)


async def test_a_group_is_a_queue_any_client_can_watch(layer, layer_broker):
    """group_send publishes once to <prefix>.group.<group>: a plain CoreMQ client subscribed there sees it."""
    async with AsyncMessageQueue("127.0.0.1", layer_broker.port) as watcher:
        await watcher.subscribe(f"{layer.prefix}.group.lobby")
        await layer.group_send("lobby", {"type": "chat.message", "text": "hi", "raw": b"\x01"})
        delivery = await watcher.receive(timeout=10)
        assert delivery.queue == f"{layer.prefix}.group.lobby"
        assert msgpack.unpackb(base64.b64decode(delivery.message["m"]), raw=False) == {
            "type": "chat.message", "text": "hi", "raw": b"\x01"}
    await layer.flush()


async def test_drops_are_counted_per_group_and_channel(layer):
    """A member at capacity misses group messages: each miss is counted for its channel and its group."""
    reset_layer_drops()
    channel = await layer.new_channel()
    await layer.group_add("busy", channel)
    for n in range(5):
        await layer.group_send("busy", {"type": "n", "n": n})
    for _ in range(500):  # the group's messages arrive on the layer's connection
        if layer_drops()["total"] >= 3:
            break
        await asyncio.sleep(0.02)
    drops = layer_drops()
    assert drops["channels"] == {channel: 3}
    assert drops["groups"] == {"busy": 3}
    assert [(await layer.receive(channel))["n"] for _ in range(2)] == [0, 1]
    await layer.flush()


async def test_drop_counters_are_published_for_other_processes(layer, layer_broker):
    """After drops a process publishes its counters to coremq.layer.drops, where any client can read them."""
    reset_layer_drops()
    async with AsyncMessageQueue("127.0.0.1", layer_broker.port) as watcher:
        await watcher.subscribe(DROPS_QUEUE)
        channel = await layer.new_channel()
        await layer.group_add("watched", channel)
        for n in range(4):
            await layer.group_send("watched", {"type": "n", "n": n})
        delivery = await watcher.receive(timeout=10)
    assert delivery.queue == "coremq.layer.drops"
    assert delivery.message["groups"] == {"watched": 2} and delivery.message["channels"] == {channel: 2}
    assert delivery.message["process"].endswith(f":{os.getpid()}")
    await layer.flush()


async def test_status_json_and_metrics_show_drops(layer, layer_broker):
    """status.json's channel_layer and /metrics' coremq_layer_dropped_total carry the drop counters."""
    reset_layer_drops()
    channel = await layer.new_channel()
    await layer.group_add("full-room", channel)
    for n in range(4):
        await layer.group_send("full-room", {"type": "n", "n": n})
    for _ in range(500):
        if layer_drops()["total"] >= 2:
            break
        await asyncio.sleep(0.02)
    with override_settings(COREMQ={"HOST": "127.0.0.1", "PORT": layer_broker.port, "STATUS_TOKEN": "layer-test"}):
        client, token = AsyncClient(), {"Authorization": "Bearer layer-test"}
        status = (await client.get("/coremq/status.json", headers=token)).json()
        metrics = (await client.get("/metrics", headers=token)).content.decode()
    assert status["channel_layer"]["groups"] == {"full-room": 2}
    assert status["channel_layer"]["channels"] == {channel: 2}
    assert f'coremq_layer_dropped_total{{channel="{channel}"}} 2.0' in metrics
    assert 'coremq_layer_group_dropped_total{group="full-room"} 2.0' in metrics
    await layer.flush()


async def test_without_hosts_the_broker_of_settings_coremq(layer_broker):
    """Without hosts the layer reaches the broker that settings.COREMQ names."""
    with override_settings(COREMQ={"HOST": "127.0.0.1", "PORT": layer_broker.port}):
        layer = CoreMQChannelLayer(prefix=f"s{os.urandom(3).hex()}")
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "hello"})
        assert await asyncio.wait_for(layer.receive(channel), 10) == {"type": "hello"}
        assert layer._links[asyncio.get_running_loop()].mq.port == layer_broker.port
        await layer.flush()


async def test_channel_layers_setting_builds_it():
    """CHANNEL_LAYERS with the issue's CONFIG builds the layer with those values."""
    from channels.layers import get_channel_layer

    config = {"hosts": ["coremq://127.0.0.1:6747"], "capacity": 100, "expiry": 60, "group_expiry": 86400,
              "channel_capacity": {"http.request": 200}}
    with override_settings(CHANNEL_LAYERS={"default": {"BACKEND": "coremq_broker.layers.CoreMQChannelLayer",
                                                       "CONFIG": config}}):
        built = get_channel_layer()
    assert isinstance(built, CoreMQChannelLayer)
    assert (built.capacity, built.expiry, built.group_expiry) == (100, 60, 86400)
    assert built.get_capacity("http.request") == 200 and built.get_capacity("other") == 100


@pytest.mark.parametrize("given, expected", [
    ("coremq://10.0.0.1:7000", ("10.0.0.1", 7000)), ("coremq://broker", ("broker", 6747)),
    ("127.0.0.1:7001", ("127.0.0.1", 7001)), (("h", 7002), ("h", 7002)), ({"address": "coremq://h:1"}, ("h", 1)),
])
async def test_host_forms(given, expected):
    """hosts entries: coremq://host:port, host:port, (host, port) or {"address": ...}."""
    assert _address(given) == expected


async def test_bad_hosts():
    """A redis:// address or several addresses: ValueError; channels_redis-only options: TypeError naming them."""
    with pytest.raises(ValueError):
        _address("redis://127.0.0.1:6379")
    with pytest.raises(ValueError):
        CoreMQChannelLayer(hosts=["coremq://a:1", "coremq://b:2"])
    for option in ("symmetric_encryption_keys", "serializer_format", "random_prefix_length"):
        with pytest.raises(TypeError, match=option):
            CoreMQChannelLayer(**{option: None})


async def test_foreign_messages_on_layer_queues_are_skipped(layer_broker):
    """Frames another client publishes to a channel's or group's queue are skipped; the layer goes on."""
    layer = CoreMQChannelLayer(hosts=[f"coremq://127.0.0.1:{layer_broker.port}"], prefix=f"f{os.urandom(3).hex()}")
    channel = await layer.new_channel()
    await layer.group_add("open-room", channel)
    local_queue = f"{layer.prefix}.channel.{layer.non_local_name(channel)}"
    async with AsyncMessageQueue("127.0.0.1", layer_broker.port) as other:
        for queue in (local_queue, f"{layer.prefix}.group.open-room", f"{layer.prefix}.channel.plain"):
            for junk in ({"m": "not base64!", "t": 9e99, "c": channel}, {"m": "AAAA", "t": "x", "c": channel},
                         {"t": 9e99, "c": channel}, {"m": base64.b64encode(b"\xc1").decode(), "t": 9e99, "c": 1},
                         "a string", ["a", "list"]):
                await other.publish(queue, junk)
    await layer.group_send("open-room", {"type": "real"})
    await layer.send("plain", {"type": "real.plain"})
    assert await asyncio.wait_for(layer.receive(channel), 10) == {"type": "real"}
    assert await asyncio.wait_for(layer.receive("plain"), 10) == {"type": "real.plain"}
    await layer.flush()


async def test_connections_of_closed_loops_are_closed(layer, layer_broker):
    """async_to_sync's short-lived loops: the layer's connection of each is closed with the loop."""
    from asgiref.sync import async_to_sync

    channel = await layer.new_channel()
    for n in range(3):
        await asyncio.to_thread(lambda: async_to_sync(layer.send)(channel, {"type": "n", "n": n}))
        assert (await asyncio.wait_for(layer.receive(channel), 10))["n"] == n
    assert list(layer._links) == [asyncio.get_running_loop()]
    async with AsyncMessageQueue("127.0.0.1", layer_broker.port) as watcher:
        for _ in range(400):  # the broker sees the closed connections end
            connections = (await watcher.status())["connections"]
            if connections <= 2:
                break
            await asyncio.sleep(0.05)
    assert connections == 2  # the layer's on this loop, and the watcher
    await layer.flush()


async def test_expired_members_are_counted(layer_broker):
    """A member removed after group_expiry is counted per group (coremq_layer_expired_members_total)."""
    reset_layer_drops()
    layer = CoreMQChannelLayer(hosts=[f"coremq://127.0.0.1:{layer_broker.port}"], prefix=f"e{os.urandom(3).hex()}",
                               group_expiry=1)
    channel = await layer.new_channel()
    await layer.group_add("short-lived", channel)
    await asyncio.sleep(2.2)
    await layer.group_send("short-lived", {"type": "late"})
    for _ in range(500):
        if layer_drops()["expired_members"]:
            break
        await asyncio.sleep(0.02)
    assert layer_drops()["expired_members"] == {"short-lived": 1}
    from coremq_broker.status.metrics import render

    assert b'coremq_layer_expired_members_total{group="short-lived"} 1.0' in render(
        {"source": "local", "broker": {}, "connections": [], "queues": [], "channel_layer": layer_drops()})
    await layer.flush()


async def test_a_backlog_larger_than_history_is_reported(caplog):
    """A normal channel whose backlog left the queue's history is logged once, naming the queue to configure."""
    from brokers import BrokerThread
    from coremq_broker.core.config import BrokerConfig

    short = BrokerThread(BrokerConfig(host="127.0.0.1", port=0, shutdown_timeout=2.0, history_length=3))
    try:
        layer = CoreMQChannelLayer(hosts=[f"coremq://127.0.0.1:{short.port}"], prefix="h")
        for n in range(6):
            await layer.send("backlog", {"type": "n", "n": n})
        warnings = [r.getMessage() for r in caplog.records if "left the broker's history" in r.getMessage()]
        assert len(warnings) == 1 and "h.channel.backlog" in warnings[0]
        assert (await asyncio.wait_for(layer.receive("backlog"), 10))["n"] == 3  # 0-2 are gone
        await layer.flush()
    finally:
        short.stop()


async def test_permission_rules_apply_to_the_layer():
    """Under a deny policy the layer works on the queues a rule grants and gets PermissionDenied elsewhere."""
    from brokers import BrokerThread
    from coremq_broker.core.access import Rule, RulePolicy
    from coremq_broker.core.config import BrokerConfig
    from coremq_client import PermissionDenied

    rules = (Rule("granted.*", frozenset({"subscribe", "publish", "history"}), anonymous=True),)
    secured = BrokerThread(BrokerConfig(host="127.0.0.1", port=0, shutdown_timeout=2.0),
                           access=RulePolicy(rules, default="deny"))
    try:
        allowed = CoreMQChannelLayer(hosts=[f"127.0.0.1:{secured.port}"], prefix="granted")
        channel = await allowed.new_channel()
        await allowed.group_add("room", channel)
        await allowed.group_send("room", {"type": "ok"})
        assert await asyncio.wait_for(allowed.receive(channel), 10) == {"type": "ok"}
        await allowed.close()
        refused = CoreMQChannelLayer(hosts=[f"127.0.0.1:{secured.port}"], prefix="refused")
        with pytest.raises(PermissionDenied):
            await refused.group_send("room", {"type": "no"})
        with pytest.raises(PermissionDenied):
            await refused.group_add("room", "some-channel")
        await refused.close()
    finally:
        secured.stop()


async def test_broker_restart():
    """After the broker restarts, the layer's connection comes back: groups and channels work again."""
    from brokers import BrokerThread
    from coremq_broker.core.config import BrokerConfig

    running = BrokerThread(BrokerConfig(host="127.0.0.1", port=0, shutdown_timeout=2.0, history_length=100))
    try:
        layer = CoreMQChannelLayer(hosts=[f"127.0.0.1:{running.port}"], prefix="r")
        sender = CoreMQChannelLayer(hosts=[f"127.0.0.1:{running.port}"], prefix="r")
        channel = await layer.new_channel()
        await layer.group_add("survivors", channel)
        await sender.send("work", {"type": "before"})
        assert await asyncio.wait_for(layer.receive("work"), 10) == {"type": "before"}
        await asyncio.to_thread(running.restart)
        for attempt in range(100):  # until both layers' connections are back and subscribed
            try:
                await sender.group_send("survivors", {"type": "after", "n": attempt})
                got = await asyncio.wait_for(layer.receive(channel), 0.2)
                break
            except (TimeoutError, CoreMQError):
                await asyncio.sleep(0.05)
        assert got["type"] == "after"
        await sender.send("work", {"type": "after.restart"})
        assert await asyncio.wait_for(layer.receive("work"), 10) == {"type": "after.restart"}
        await layer.flush()
        await sender.flush()
    finally:
        running.stop()
