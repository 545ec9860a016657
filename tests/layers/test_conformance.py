"""The channel layer specification, run against CoreMQChannelLayer and channels_redis' RedisChannelLayer alike.

Every test runs twice (``backend``: coremq, redis), on a real broker and a real
redis-server; a behaviour in which the two layers differ fails one of them.
"Nothing arrives" is a receive that is still waiting after a short wait.
"""

from __future__ import annotations

import asyncio
import os
import random

import pytest
from channels.exceptions import ChannelFull

pytestmark = pytest.mark.asyncio

QUIET = 0.5  # seconds a receive waits when nothing must arrive


async def receive(layer, channel: str, timeout: float = 10) -> dict:
    return await asyncio.wait_for(layer.receive(channel), timeout)


async def nothing_arrives(layer, channel: str) -> bool:
    try:
        await asyncio.wait_for(layer.receive(channel), QUIET)
    except TimeoutError:
        return True
    return False


async def test_send_receive(make_layer):
    """A message sent to a normal channel is received as it was sent."""
    layer = make_layer()
    await layer.send("test-channel-1", {"type": "test.message", "text": "Ahoy-hoy!"})
    assert await receive(layer, "test-channel-1") == {"type": "test.message", "text": "Ahoy-hoy!"}


async def test_send_before_another_process_receives(make_layer):
    """A message waits on a normal channel until a process that never received before takes it."""
    sender, receiver = make_layer(), make_layer()
    await sender.send("waiting", {"type": "a"})
    assert await receive(receiver, "waiting") == {"type": "a"}
    assert await nothing_arrives(sender, "waiting")


@pytest.mark.parametrize("local", [False, True], ids=["normal", "process-local"])
async def test_fifo_per_channel(make_layer, local):
    """Messages of one channel arrive in the order they were sent."""
    layer = make_layer(capacity=200)
    channel = await layer.new_channel() if local else "fifo"
    for n in range(60):
        await layer.send(channel, {"type": "n", "n": n})
    assert [(await receive(layer, channel))["n"] for _ in range(60)] == list(range(60))


async def test_capacity_normal_channel(make_layer):
    """send raises ChannelFull once a channel holds its capacity; a receive makes room for one more."""
    layer = make_layer(capacity=5)
    for n in range(5):
        await layer.send("cap", {"type": "n", "n": n})
    with pytest.raises(ChannelFull):
        await layer.send("cap", {"type": "n", "n": 5})
    assert (await receive(layer, "cap"))["n"] == 0
    await layer.send("cap", {"type": "n", "n": 6})
    with pytest.raises(ChannelFull):
        await layer.send("cap", {"type": "n", "n": 7})


async def test_channel_capacity_globs(make_layer):
    """channel_capacity: the first matching glob (or regex) sets a channel's capacity, else capacity."""
    import re

    layer = make_layer(capacity=4, channel_capacity={"tiny.*": 2, re.compile(r"^huge$"): 8})
    for name, capacity in (("tiny.a", 2), ("huge", 8), ("other", 4)):
        for n in range(capacity):
            await layer.send(name, {"type": "n", "n": n})
        with pytest.raises(ChannelFull):
            await layer.send(name, {"type": "n"})


async def test_capacity_process_local_counts_before_bang(make_layer):
    """For name!suffix channels capacity counts what waits for the part before '!', all its channels together."""
    layer = make_layer(capacity=3)
    first, second = await layer.new_channel(), await layer.new_channel()
    await layer.send(first, {"type": "n", "n": 0})
    await layer.send(first, {"type": "n", "n": 1})
    await layer.send(second, {"type": "n", "n": 2})
    with pytest.raises(ChannelFull):
        await layer.send(second, {"type": "n", "n": 3})
    assert (await receive(layer, second))["n"] == 2
    assert [(await receive(layer, first))["n"] for _ in range(2)] == [0, 1]


async def test_group_send_drops_for_full_channels_without_raising(make_layer):
    """group_send never raises: a full member misses the message, the others get it."""
    layer = make_layer(capacity=3)
    other = make_layer(capacity=3)
    full, free = await layer.new_channel(), await other.new_channel()
    await layer.group_add("room", full)
    await other.group_add("room", free)
    for n in range(5):
        await layer.group_send("room", {"type": "n", "n": n})
    assert [(await receive(layer, full))["n"] for _ in range(3)] == [0, 1, 2]
    assert await nothing_arrives(layer, full)
    assert [(await receive(other, free))["n"] for _ in range(3)] == [0, 1, 2]


async def test_message_expiry(make_layer):
    """A message not received within expiry seconds is gone, on normal and process-local channels."""
    layer = make_layer(expiry=1)
    local = await layer.new_channel()
    await layer.send("expiring", {"type": "old"})
    await layer.send(local, {"type": "old"})
    await asyncio.sleep(2.5)
    assert await nothing_arrives(layer, "expiring")
    assert await nothing_arrives(layer, local)
    await layer.send("expiring", {"type": "new"})
    assert await receive(layer, "expiring") == {"type": "new"}


async def test_group_membership_expiry(make_layer):
    """A member added group_expiry seconds ago no longer gets the group's messages; adding again renews it."""
    layer = make_layer(group_expiry=1)
    channel = await layer.new_channel()
    await layer.group_add("brief", channel)
    await asyncio.sleep(2.5)
    await layer.group_send("brief", {"type": "late"})
    assert await nothing_arrives(layer, channel)
    await layer.group_add("brief", channel)
    await layer.group_send("brief", {"type": "again"})
    assert await receive(layer, channel) == {"type": "again"}


async def test_groups_basic(make_layer):
    """group_send reaches every member, across processes; a discarded channel gets nothing more."""
    one, two = make_layer(), make_layer()
    a, b, c = await one.new_channel(), await one.new_channel(), await two.new_channel()
    for channel in (a, b):
        await one.group_add("test-group", channel)
    await two.group_add("test-group", c)
    await one.group_discard("test-group", b)
    await two.group_send("test-group", {"type": "message.1"})
    assert await receive(one, a) == {"type": "message.1"}
    assert await receive(two, c) == {"type": "message.1"}
    assert await nothing_arrives(one, b)


async def test_group_discard_of_non_member(make_layer):
    """group_discard of a channel that is not in the group (or of an unknown group) does nothing."""
    layer = make_layer()
    channel = await layer.new_channel()
    await layer.group_discard("nobody-here", channel)
    await layer.group_add("g", channel)
    await layer.group_discard("g", "other-channel")
    await layer.group_send("g", {"type": "still"})
    assert await receive(layer, channel) == {"type": "still"}


async def test_group_add_twice_delivers_once(make_layer):
    """A channel added twice is one member: it gets each group message once."""
    layer = make_layer()
    channel = await layer.new_channel()
    await layer.group_add("twice", channel)
    await layer.group_add("twice", channel)
    await layer.group_send("twice", {"type": "once"})
    assert await receive(layer, channel) == {"type": "once"}
    assert await nothing_arrives(layer, channel)


INVALID = ["", "a" * 100, "has space", "café", "semi;colon", 42, None, b"bytes"]


@pytest.mark.parametrize("name", INVALID, ids=repr)
async def test_invalid_names_raise_type_error(make_layer, name):
    """Invalid channel and group names raise TypeError (not a str, not ASCII alphanumerics -_., length >= 100)."""
    layer = make_layer()
    with pytest.raises(TypeError):
        await layer.send(name, {"type": "x"})
    with pytest.raises(TypeError):
        await layer.group_add(name, "fine")
    with pytest.raises(TypeError):
        await layer.group_add("fine", name)
    with pytest.raises(TypeError):
        await layer.group_send(name, {"type": "x"})
    with pytest.raises(TypeError):
        await layer.group_discard(name, "fine")


async def test_name_length_limit(make_layer):
    """A 99-character name is valid; a group name may not hold '!'."""
    layer = make_layer()
    await layer.send("n" * 99, {"type": "long"})
    assert await receive(layer, "n" * 99) == {"type": "long"}
    with pytest.raises(TypeError):
        await layer.group_send("bang!", {"type": "x"})


async def test_receive_of_specific_channel_must_end_at_bang(make_layer):
    """Receiving another process's local channel is refused; names with '!' are checked like the rest."""
    one, two = make_layer(), make_layer()
    channel = await one.new_channel()
    with pytest.raises(AssertionError):
        await two.receive(channel)
    with pytest.raises(TypeError):
        await one.send("bad name!x", {"type": "x"})


async def test_message_must_be_a_dict_without_reserved_key(make_layer):
    """A message is a dict without __asgi_channel__."""
    layer = make_layer()
    with pytest.raises(AssertionError):
        await layer.send("c", ["not", "a", "dict"])
    with pytest.raises(AssertionError):
        await layer.send("c", {"type": "x", "__asgi_channel__": "c"})


async def test_process_local_channels(make_layer):
    """new_channel() names belong to one process: others send to them, only it receives them."""
    one, two = make_layer(), make_layer()
    channel = await one.new_channel()
    assert channel.startswith("specific.") and "!" in channel
    custom = await one.new_channel("custom")
    assert custom.startswith("custom.") and "!" in custom
    await two.send(channel, {"type": "to.one"})
    await two.send(custom, {"type": "to.custom"})
    assert await receive(one, channel) == {"type": "to.one"}
    assert await receive(one, custom) == {"type": "to.custom"}


async def test_concurrent_receivers_of_local_channels(make_layer):
    """Receives waiting on several local channels each get their own channel's messages."""
    layer = make_layer()
    channels = [await layer.new_channel() for _ in range(10)]
    tasks = [asyncio.ensure_future(receive(layer, channel)) for channel in channels]
    await asyncio.sleep(0.1)
    for n, channel in enumerate(channels):
        await layer.send(channel, {"type": "n", "n": n})
    assert [(await task)["n"] for task in tasks] == list(range(10))


@pytest.mark.parametrize("local", [False, True], ids=["normal", "process-local"])
async def test_cancelled_receive_loses_nothing(make_layer, local):
    """Receives cancelled while messages arrive lose none of them: each is received once, in order."""
    layer = make_layer(capacity=100)
    channel = await layer.new_channel() if local else "cancel-test"
    rng = random.Random(7)
    got: list[int] = []
    for n in range(30):
        task = asyncio.ensure_future(layer.receive(channel))
        await asyncio.sleep(rng.choice([0, 0.001, 0.01]))
        await layer.send(channel, {"type": "n", "n": n})
        await asyncio.sleep(rng.choice([0, 0, 0.005]))
        if task.done() or rng.random() < 0.5:
            try:
                got.append((await task)["n"])
            except asyncio.CancelledError:
                pass
        else:
            task.cancel()
            try:
                got.append((await task)["n"])
            except asyncio.CancelledError:
                pass
    while len(got) < 30:
        got.append((await receive(layer, channel))["n"])
    assert got == list(range(30))


async def test_receive_cancelled_before_any_message(make_layer):
    """A receive cancelled while nothing was sent takes nothing from the next receive."""
    layer = make_layer()
    channel = await layer.new_channel()
    for _ in range(3):
        assert await nothing_arrives(layer, channel)
    await layer.send(channel, {"type": "after"})
    assert await receive(layer, channel) == {"type": "after"}


@pytest.mark.parametrize("where", ["normal", "process-local", "group"])
async def test_messages_up_to_1_mb(make_layer, where):
    """A message of 1 MB of bytes (and another of 1 MB of text) arrives whole."""
    layer = make_layer()
    channel = "big" if where == "normal" else await layer.new_channel()
    blob, text = os.urandom(1_000_000), "é" * 500_000
    if where == "group":
        await layer.group_add("big-group", channel)
        await layer.group_send("big-group", {"type": "big", "bytes": blob})
        await layer.group_send("big-group", {"type": "big", "text": text})
    else:
        await layer.send(channel, {"type": "big", "bytes": blob})
        await layer.send(channel, {"type": "big", "text": text})
    assert await receive(layer, channel, 30) == {"type": "big", "bytes": blob}
    assert await receive(layer, channel, 30) == {"type": "big", "text": text}


async def test_msgpack_types(make_layer):
    """Any msgpack-able dict: str, bytes, ints (64-bit), floats, bools, None, lists, tuples (as lists), nesting."""
    layer = make_layer()
    channel = await layer.new_channel()
    message = {"type": "types", "s": "ünïcode ✓", "b": b"\x00\xff", "i": -(2**63), "u": 2**64 - 1, "f": 0.1,
               "t": True, "n": None, "l": [1, "two", [3]], "tuple": (1, 2), "d": {"nested": {"deep": [b"x"]}},
               "empty": {}, "headers": [[b"host", b"example.com"]]}
    await layer.send(channel, message)
    await layer.send("types", message)
    expected = {**message, "tuple": [1, 2]}
    assert await receive(layer, channel) == expected
    assert await receive(layer, "types") == expected


async def test_normal_channel_each_message_to_one_receiver(make_layer):
    """Several processes receiving on one normal channel get each message once between them."""
    layers = [make_layer(capacity=100) for _ in range(3)]
    got: list[int] = []

    async def work(layer) -> None:
        while True:
            got.append((await layer.receive("work"))["n"])

    workers = [asyncio.ensure_future(work(layer)) for layer in layers]
    sender = make_layer(capacity=100)
    for n in range(40):
        await sender.send("work", {"type": "job", "n": n})
    for _ in range(200):
        if len(got) >= 40:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(QUIET)
    for worker in workers:
        worker.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    assert sorted(got) == list(range(40))


async def test_flush(make_layer):
    """flush forgets waiting messages and group memberships."""
    layer = make_layer()
    channel = await layer.new_channel()
    await layer.send("flushed", {"type": "old"})
    await layer.group_add("fg", channel)
    await layer.flush()
    await layer.group_send("fg", {"type": "to.nobody"})
    assert await nothing_arrives(layer, "flushed")
    assert await nothing_arrives(layer, channel)


async def test_close_then_use_again(make_layer):
    """close() (RedisChannelLayer: close_pools()) ends the connections; the layer connects again when used."""
    layer = make_layer()
    await layer.send("reuse", {"type": "one"})
    await (layer.close() if hasattr(layer, "close") else layer.close_pools())
    assert await receive(layer, "reuse") == {"type": "one"}


async def test_extensions(make_layer):
    """The layer declares the groups and flush extensions."""
    layer = make_layer()
    assert "groups" in layer.extensions and "flush" in layer.extensions


async def test_group_add_of_another_process_channel(make_layer):
    """A process may add another process's channel (or a normal channel) to a group; group_send reaches it."""
    owner, adder, sender = make_layer(), make_layer(), make_layer()
    channel = await owner.new_channel()
    await adder.group_add("mixed", channel)
    await adder.group_add("mixed", "plain-member")
    await sender.group_send("mixed", {"type": "hello"})
    assert await receive(owner, channel) == {"type": "hello"}
    assert await receive(owner, "plain-member") == {"type": "hello"}
    await owner.group_discard("mixed", channel)
    await sender.group_send("mixed", {"type": "after.discard"})
    assert await receive(owner, "plain-member") == {"type": "after.discard"}
    assert await nothing_arrives(owner, channel)


async def test_sync_callers_in_other_threads(make_layer):
    """async_to_sync(group_add / group_send / send) from other threads reach a receive on the main loop."""
    from asgiref.sync import async_to_sync

    layer = make_layer()
    channel = await layer.new_channel()
    await asyncio.to_thread(lambda: async_to_sync(layer.group_add)("sync-room", channel))
    await asyncio.to_thread(lambda: async_to_sync(layer.group_send)("sync-room", {"type": "from.thread"}))
    await asyncio.to_thread(lambda: async_to_sync(layer.send)(channel, {"type": "direct"}))
    assert await receive(layer, channel) == {"type": "from.thread"}
    assert await receive(layer, channel) == {"type": "direct"}
