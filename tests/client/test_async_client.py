"""The asyncio AsyncMessageQueue against a real broker over real sockets."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import socket
import threading
import time
import uuid
from typing import Any, AsyncIterator, Callable

import pytest
import pytest_asyncio

from brokers import BrokerThread
from clients import Connect, async_clients
from coremq_broker.core.config import BrokerConfig
from coremq_client import AsyncMessageQueue, ConnectionClosed, CoreMQError, PermissionDenied, ServerError, Timeout

pytestmark = pytest.mark.timeout(60)



@pytest_asyncio.fixture
async def connect(broker) -> AsyncIterator[Connect]:
    """Make connected clients of the test broker; all are closed afterwards."""
    async with async_clients(broker.host, broker.port) as make:
        yield make


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def body(message: dict) -> dict:
    return {k: v for k, v in message.items() if not k.startswith("coremq_")}


@pytest.mark.asyncio
async def test_connect_reads_welcome_and_connection_id(connect):
    """After connect() the welcome text and the UUID4 connection id are exposed."""
    client = await connect()
    assert client.welcome_message == "OK: Welcome from CoreMQ!"
    assert uuid.UUID(client.connection_id).version == 4
    assert client.connected


@pytest.mark.asyncio
async def test_unreachable_broker_raises_connection_closed():
    """connect() to a closed port raises ConnectionClosed, also after bounded retries."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectionClosed):
        await AsyncMessageQueue("127.0.0.1", port, reconnect=False).connect()
    started = time.monotonic()
    with pytest.raises(ConnectionClosed):
        await AsyncMessageQueue("127.0.0.1", port, connect_timeout=0.5, backoff=0.05, max_backoff=0.1).connect()
    assert time.monotonic() - started < 2


@pytest.mark.asyncio
async def test_publish_subscribe_roundtrip_of_every_kind(connect):
    """Objects, lists and strings reach the subscriber as sent; the publisher gets OK with the id."""
    sub = await connect(queues=["news"])
    pub = await connect()
    values = [{"a": [1, {"b": None}], "t": "ünï"}, ["x", 2], "text"]
    for n, value in enumerate(values, 1):
        reply = await pub.send_message("news", value)
        assert reply["response"] == "OK: Message sent" and reply["id"] == n
    got = [await sub.get_message(timeout=5) for _ in values]
    assert got[0][0] == "news" and body(got[0][1]) == values[0]
    assert [message for _, message in got[1:]] == values[1:]
    assert sub.last_ids == {"news": 3}


@pytest.mark.asyncio
async def test_history_and_since(connect):
    """get_history unwraps stored messages; since= returns newer ones only; history() has sequence."""
    client = await connect()
    for value in [{"n": 1}, "two", [3]]:
        await client.publish("h", value)
    history = await client.get_history("h")
    assert body(history["h"][0]) == {"n": 1} and history["h"][1:] == ["two", [3]]
    assert await client.get_history("h", since=2) == {"h": [[3]]}
    assert (await client.history("h"))["sequence"]["h"] == {"first": 1, "last": 3}


@pytest.mark.asyncio
async def test_options_echo_and_denied_subscribe(connect):
    """echo delivers own publishes; a subscription to another private queue raises PermissionDenied and is forgotten."""
    other = await connect()
    client = await connect(queues=["e"])
    assert (await client.set_options(echo=True))["options"] == {"echo": True}
    await client.publish("e", {"n": 1})
    assert body((await client.get_message(timeout=5))[1]) == {"n": 1}
    with pytest.raises(PermissionDenied):
        await client.subscribe(other.connection_id)
    assert client.queues == ("e",)


class TestRepliesOff:
    """With option reply=false publishes do not wait, and errors still come back."""

    @pytest.fixture
    def broker_config(self) -> BrokerConfig:
        return BrokerConfig(host="127.0.0.1", port=0, shutdown_timeout=2.0, max_queue_name_length=10)

    @pytest.mark.asyncio
    async def test_errors_reach_a_coroutine_on_error(self, connect):
        """A refused publish sent with replies off reaches an async on_error callback and client.errors."""
        seen: list[CoreMQError] = []
        got_one = asyncio.Event()

        async def on_error(error: CoreMQError) -> None:
            seen.append(error)
            got_one.set()

        client = await connect(on_error=on_error)
        await client.set_options(reply=False)
        assert await client.publish("a_queue_name_over_ten", {}) is None
        await asyncio.wait_for(got_one.wait(), 5)
        assert isinstance(seen[0], ServerError) and "limit is 10" in seen[0].reason
        assert client.errors == seen


@pytest.mark.asyncio
async def test_reconnect_resubscribes_and_reapplies_options(broker, connect):
    """After broker.restart() the client reconnects and its queues and options are in force again."""
    sub = await connect(queues=["before"], backoff=0.02, max_backoff=0.2)
    await sub.subscribe("later")
    await sub.set_options(echo=True)
    old_id = sub.connection_id
    await asyncio.to_thread(broker.restart)
    await wait_for(lambda: sub.connected and sub.connection_id != old_id)
    await sub.status()  # answered after the replay, which went first on this connection
    pub = await connect()
    await pub.publish("before", {"n": 1})
    await pub.publish("later", {"n": 2})
    await sub.publish("later", {"n": 3})
    got = sorted([body((await sub.get_message(timeout=5))[1])["n"] for _ in range(3)])
    assert got == [1, 2, 3]


@pytest.mark.asyncio
async def test_without_reconnect_bye_ends_iteration(broker, connect):
    """With reconnect=False a BYE ends `async for` cleanly and later requests raise ConnectionClosed."""
    client = await connect(queues=["q"], reconnect=False)

    async def drain() -> list[Any]:
        return [message async for _, message in client]

    reader = asyncio.create_task(drain())
    await (await connect()).publish("q", {"n": 1})
    await wait_for(lambda: client.last_ids == {"q": 1})
    await asyncio.to_thread(broker.restart)
    received = await asyncio.wait_for(reader, 5)
    assert [body(m) for m in received] == [{"n": 1}]
    with pytest.raises(ConnectionClosed):
        await client.status()


@pytest.mark.asyncio
async def test_concurrent_requests_get_their_own_replies(connect):
    """Many concurrent coroutines on one client each get the replies to their own requests."""
    client = await connect()

    async def publisher(i: int) -> list[int]:
        return [(await client.publish(f"t{i}", {"n": n}))["id"] for n in range(30)]

    async def asker() -> bool:
        return all([(await client.status())["response"] == "OK: Status" for _ in range(15)])

    results = await asyncio.gather(*[publisher(i) for i in range(8)], *[asker() for _ in range(4)])
    assert results[:8] == [list(range(1, 31))] * 8 and all(results[8:])


@pytest.mark.asyncio
async def test_request_times_out(broker, connect):
    """A request the broker does not answer in time raises Timeout; the client keeps working."""
    client = await connect(timeout=0.3)
    frozen = threading.Thread(target=broker.call, args=(lambda: time.sleep(1.0),))
    frozen.start()
    await asyncio.sleep(0.05)
    with pytest.raises(Timeout):
        await client.status()
    await asyncio.to_thread(frozen.join)
    assert (await client.status())["response"] == "OK: Status"
    assert await client.get_message(timeout=0.1) == (None, None)


@pytest.mark.asyncio
async def test_context_manager_iteration_and_close(broker):
    """`async with` connects and closes; `async for` yields deliveries and ends on close(); close is idempotent."""
    async with AsyncMessageQueue(broker.host, broker.port, queues=["it"]) as client, \
            AsyncMessageQueue(broker.host, broker.port) as pub:
        for n in range(3):
            await pub.publish("it", {"n": n})
        seen = []
        async for queue, message in client:
            seen.append((queue, message["n"]))
            if len(seen) == 3:
                break
        assert seen == [("it", 0), ("it", 1), ("it", 2)]
        asyncio.get_running_loop().call_later(0.1, lambda: asyncio.ensure_future(client.close()))
        assert [m async for m in client] == []
    assert client.closed
    await client.close()
    with pytest.raises(ConnectionClosed):
        await client.send_message("q", {})


@pytest.mark.asyncio
async def test_custom_encoder(connect):
    """DjangoJSONEncoder as encoder sends datetimes, Decimals and UUIDs as their JSON strings."""
    from django.core.serializers.json import DjangoJSONEncoder

    sub = await connect(queues=["typed"])
    pub = await connect(encoder=DjangoJSONEncoder)
    when = datetime.datetime(2015, 6, 1, 12, 30, tzinfo=datetime.timezone.utc)
    await pub.send_message("typed", {"when": when, "price": decimal.Decimal("9.99"), "id": uuid.UUID(int=7)})
    message = (await sub.get_message(timeout=5))[1]
    assert body(message) == {"when": "2015-06-01T12:30:00Z", "price": "9.99", "id": str(uuid.UUID(int=7))}


@pytest.mark.asyncio
async def test_tls_roundtrip(broker_config, tmp_path):
    """Over TLS the welcome, a publish and its delivery work as over plain TCP."""
    from selfsigned import tls_contexts

    server_tls, client_tls = tls_contexts(tmp_path)
    tls_broker = await asyncio.to_thread(BrokerThread, broker_config, ssl=server_tls)
    try:
        async with AsyncMessageQueue("127.0.0.1", tls_broker.port, ssl=client_tls, queues=["secure"]) as sub, \
                AsyncMessageQueue("127.0.0.1", tls_broker.port, ssl=client_tls) as pub:
            assert sub.welcome_message == "OK: Welcome from CoreMQ!"
            assert (await pub.send_message("secure", "hush"))["id"] == 1
            assert await sub.get_message(timeout=5) == ("secure", "hush")
    finally:
        await asyncio.to_thread(tls_broker.stop)


@pytest.mark.asyncio
async def test_frame_limit_announced_by_the_broker_is_kept_before_sending():
    """A publish over the broker's announced max_frame_size is refused locally and the connection goes on."""
    from coremq_client import LocalUsageError

    small = await asyncio.to_thread(BrokerThread, BrokerConfig(port=0, shutdown_timeout=2.0, max_frame_size=1000))
    try:
        async with AsyncMessageQueue(small.host, small.port) as client:
            with pytest.raises(LocalUsageError, match="the broker's frame limit of 1000"):
                await client.publish("q", "x" * 2000)
            assert (await client.publish("q", "x" * 500))["id"] == 1
            assert client.errors == []
    finally:
        await asyncio.to_thread(small.stop)
