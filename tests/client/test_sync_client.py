"""The blocking MessageQueue against a real broker over real sockets."""

from __future__ import annotations

import datetime
import decimal
import json
import socket
import ssl as ssl_module
import threading
import time
import uuid
from typing import Any, Callable, Iterator

import pytest

from brokers import BrokerThread
from coremq_broker.core.config import BrokerConfig
from coremq_client import (
    ConnectionClosed,
    CoreMQError,
    InvalidQueueName,
    LocalUsageError,
    MessageQueue,
    PermissionDenied,
    ServerError,
    Timeout,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def connect(broker) -> Iterator[Callable[..., MessageQueue]]:
    """Make connected clients of the test broker; all are closed afterwards."""
    clients: list[MessageQueue] = []

    def make(**kwargs: Any) -> MessageQueue:
        kwargs.setdefault("timeout", 5.0)
        client = MessageQueue(broker.host, broker.port, **kwargs)
        clients.append(client)
        client.connect()
        return client

    yield make
    for client in clients:
        client.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def reconnected(client: MessageQueue, old_id: str | None) -> None:
    """Wait for a new connection, then for the broker to have applied its replay."""
    wait_for(lambda: client.connected and client.connection_id != old_id)
    client.status()  # sent after the replay on the same connection, so answered after it


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def body(message: dict) -> dict:
    return {k: v for k, v in message.items() if not k.startswith("coremq_")}


# -- connecting -------------------------------------------------------------

def test_connect_reads_welcome_and_connection_id(connect):
    """After connect() the welcome text and the UUID4 connection id of the welcome are exposed."""
    client = connect()
    assert client.welcome_message == "OK: Welcome from CoreMQ!"
    assert uuid.UUID(client.connection_id).version == 4
    assert client.connected and not client.closed


def test_requests_before_connect_raise(broker):
    """Using a client that was never connected raises ConnectionClosed, not a hang."""
    client = MessageQueue(broker.host, broker.port)
    with pytest.raises(ConnectionClosed, match="connect"):
        client.status()


def test_unreachable_broker_raises_connection_closed():
    """connect() to a port nobody listens on raises ConnectionClosed, with and without retries, in time."""
    port = free_port()
    with pytest.raises(ConnectionClosed):
        MessageQueue("127.0.0.1", port, reconnect=False).connect()
    started = time.monotonic()
    with pytest.raises(ConnectionClosed):
        MessageQueue("127.0.0.1", port, connect_timeout=0.5, backoff=0.05, max_backoff=0.1).connect()
    assert time.monotonic() - started < 2


def test_connect_times_out_without_welcome():
    """A server that accepts but never sends a welcome makes connect() raise Timeout after connect_timeout."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        started = time.monotonic()
        with pytest.raises(Timeout):
            MessageQueue("127.0.0.1", server.getsockname()[1], connect_timeout=0.3, reconnect=False).connect()
        assert time.monotonic() - started < 2


def test_connect_applies_queues_and_options_before_returning(connect):
    """Constructor queues and options are in force when connect() returns: an echo publish comes straight back."""
    client = connect(queues=("news",), options={"echo": True})
    client.send_message("news", {"n": 1})
    queue, message = client.get_message(timeout=5)
    assert queue == "news" and body(message) == {"n": 1}


# -- publishing and receiving ---------------------------------------------------

def test_publish_subscribe_roundtrip(connect):
    """A subscriber gets the published object with the broker's stamps; the publisher gets OK with the id."""
    sub = connect(queues=["news"])
    pub = connect()
    reply = pub.send_message(queue="news", message={"a": 1})
    assert reply["response"] == "OK: Message sent" and reply["id"] == 1
    queue, message = sub.get_message(timeout=5)
    assert queue == "news" and body(message) == {"a": 1}
    assert message["coremq_sender"] == pub.connection_id and message["coremq_id"] == 1
    assert pub.get_message(timeout=0.2) == (None, None)


@pytest.mark.parametrize("value", [
    {"nested": {"list": [1, 2.5, None, True], "text": "naïve ☃"}},
    ["a", 1, {"b": [2]}],
    "just a string",
    "",
    [],
])
def test_values_arrive_as_sent(connect, value):
    """Objects, lists and strings reach subscribers as they were published (objects plus stamps)."""
    sub = connect(queues=["values"])
    connect().publish("values", value)
    delivery = sub.receive(timeout=5)
    assert delivery is not None and delivery.queue == "values"
    got = body(delivery.message) if isinstance(value, dict) else delivery.message
    assert got == value
    assert isinstance(delivery.id, int) and delivery.sender is not None


def test_point_to_point_via_connection_id(connect):
    """A message sent to a client's connection id reaches that client as a delivery, not as a reply."""
    receiver = connect()
    connect().send_message(receiver.connection_id, {"direct": True})
    queue, message = receiver.get_message(timeout=5)
    assert queue == receiver.connection_id and body(message) == {"direct": True}


def test_unsubscribe_stops_deliveries(connect):
    """After unsubscribe() no more messages of that queue arrive, and the queue is no longer replayed."""
    sub = connect(queues=["a", "b"])
    assert sub.unsubscribe("a")["response"] == "OK: Unsubscribe successful"
    assert sub.queues == ("b",)
    pub = connect()
    pub.publish("a", {"n": 1})
    pub.publish("b", {"n": 2})
    assert body(sub.get_message(timeout=5)[1]) == {"n": 2}
    assert sub.get_message(timeout=0.2) == (None, None)


def test_last_ids_track_deliveries(connect):
    """last_ids holds the coremq_id of the last message received per queue."""
    sub = connect(queues=["x", "y"])
    pub = connect()
    for queue in ["x", "x", "y", "x"]:
        pub.publish(queue, {})
    for _ in range(4):
        assert sub.receive(timeout=5) is not None
    assert sub.last_ids == {"x": 3, "y": 1}


def test_local_errors_are_raised_before_sending(connect):
    """Bad queue names and unpublishable values raise locally; the connection stays usable."""
    client = connect()
    with pytest.raises(InvalidQueueName):
        client.publish("has space", {})
    with pytest.raises(InvalidQueueName):
        client.subscribe("")
    with pytest.raises(LocalUsageError):
        client.publish("q", 42)
    with pytest.raises(LocalUsageError):
        client.publish("q", {"thing": object()})
    assert client.send_message("q", {})["response"] == "OK: Message sent"


def test_subscribing_to_another_private_queue_is_denied_and_forgotten(connect):
    """The broker's refusal raises PermissionDenied and the queue is not kept for reconnects."""
    other = connect()
    client = connect(queues=["mine"])
    with pytest.raises(PermissionDenied, match="permission denied"):
        client.subscribe(other.connection_id)
    assert client.queues == ("mine",)


# -- history and options ---------------------------------------------------------

def test_history_and_since(connect):
    """get_history unwraps stored messages oldest first; since= returns only newer ones; history() has sequence."""
    client = connect()
    client.publish("h", {"n": 1})
    client.publish("h", "two")
    client.publish("h", [3])
    history = client.get_history("h", "empty")
    assert body(history["h"][0]) == {"n": 1}
    assert history["h"][1:] == ["two", [3]] and history["empty"] == []
    assert client.get_history("h", since=1) == {"h": ["two", [3]]}
    assert client.get_history("h", since={"h": 2}) == {"h": [[3]]}
    raw = client.history("h")
    assert raw["sequence"]["h"] == {"first": 1, "last": 3}
    assert [m["coremq_id"] for m in raw["history"]["h"]] == [1, 2, 3]


def test_options_echo(connect):
    """set_options(echo=True) returns the options in force and delivers own publishes; echo=None removes it."""
    client = connect(queues=["e"])
    reply = client.set_options(echo=True)
    assert reply["response"] == "OK: Options set" and reply["options"] == {"echo": True}
    client.publish("e", {"n": 1})
    assert body(client.get_message(timeout=5)[1]) == {"n": 1}
    assert client.set_options(echo=None)["options"] == {}
    assert client.options == {}
    client.publish("e", {"n": 2})
    assert client.get_message(timeout=0.2) == (None, None)


def test_refused_option_raises_and_is_not_kept(connect):
    """An option value the broker refuses raises ServerError and the previous value stays in force."""
    client = connect(options={"echo": True})
    with pytest.raises(ServerError, match="echo"):
        client.set_options(echo="yes")
    assert client.options == {"echo": True}


class TestRepliesOff:
    """With option reply=false publishes do not wait, and errors still come back."""

    @pytest.fixture
    def broker_config(self) -> BrokerConfig:
        return BrokerConfig(host="127.0.0.1", port=0, shutdown_timeout=2.0, max_queue_name_length=10)

    def test_errors_reach_on_error_with_replies_off(self, connect):
        """A publish the broker refuses while replies are off is reported to on_error and kept in errors."""
        seen: list[CoreMQError] = []
        got_one = threading.Event()
        client = connect(on_error=lambda error: (seen.append(error), got_one.set()))
        client.set_options(reply=False)
        assert client.send_message("short", {"n": 1}) is None
        assert client.publish("a_queue_name_over_ten", {"n": 2}) is None
        assert got_one.wait(5)
        assert isinstance(seen[0], ServerError) and "limit is 10" in seen[0].reason
        assert client.errors == seen
        assert [body(m) for m in client.get_history("short")["short"]] == [{"n": 1}]

    def test_fire_and_forget_publish_reports_errors(self, connect):
        """publish(reply=False) with replies on: the OK is dropped quietly, an error goes to on_error."""
        seen: list[CoreMQError] = []
        client = connect(on_error=seen.append)
        assert client.publish("fine", {}, reply=False) is None
        assert client.publish("a_queue_name_over_ten", {}, reply=False) is None
        assert client.status()["response"] == "OK: Status"  # its own reply, not a publish's OK
        assert len(seen) == 1 and "limit is 10" in str(seen[0])
        with pytest.raises(ServerError, match="limit is 10"):
            client.send_message("a_queue_name_over_ten", {})


# -- reconnecting ------------------------------------------------------------------

def test_reconnect_resubscribes_and_reapplies_options(broker, connect):
    """After broker.restart() the client reconnects by itself and its queues and options are in force again."""
    sub = connect(queues=["before"], backoff=0.02, max_backoff=0.2)
    sub.subscribe("later")
    sub.set_options(echo=True)
    old_id = sub.connection_id
    broker.restart()
    reconnected(sub, old_id)
    pub = connect()
    pub.publish("before", {"n": 1})
    pub.publish("later", {"n": 2})
    sub.publish("later", {"n": 3})  # echo must be on again
    got = sorted(body(sub.get_message(timeout=5)[1])["n"] for _ in range(3))
    assert got == [1, 2, 3]
    assert sub.options == {"echo": True} and sub.queues == ("before", "later")


def test_requests_wait_for_the_reconnect(broker, connect):
    """A request made while the broker restarts is answered on the new connection."""
    client = connect(backoff=0.05, max_backoff=0.2)
    broker.restart()
    assert client.status()["response"] == "OK: Status"
    assert client.send_message("q", {})["response"] == "OK: Message sent"


def test_without_reconnect_bye_ends_the_client(broker, connect):
    """With reconnect=False a BYE ends iteration cleanly and later requests raise ConnectionClosed."""
    client = connect(queues=["q"], reconnect=False)
    received: list[Any] = []
    reader = threading.Thread(target=lambda: received.extend(client))
    reader.start()
    connect().publish("q", {"n": 1})
    wait_for(lambda: len(received) == 1)
    broker.restart()
    reader.join(5)
    assert not reader.is_alive() and client.closed
    with pytest.raises(ConnectionClosed):
        client.status()
    with pytest.raises(ConnectionClosed):
        client.receive(timeout=1)


def test_give_up_reconnecting_within_timeout(broker, connect):
    """While the broker is down, a request raises ConnectionClosed after the client's timeout."""
    client = connect(timeout=0.5, backoff=0.05, max_backoff=0.1)
    broker.close()
    started = time.monotonic()
    with pytest.raises(ConnectionClosed):
        client.status()
    assert time.monotonic() - started < 2


# -- concurrency and timeouts -------------------------------------------------------------

def test_many_threads_get_their_own_replies(connect):
    """Sixteen threads sharing one client each get exactly the replies to their own requests."""
    client = connect()
    sub = connect(queues=[f"t{i}" for i in range(8)])
    failures: list[str] = []

    def publisher(i: int) -> None:
        ids = [client.publish(f"t{i}", {"n": n})["id"] for n in range(50)]
        if ids != list(range(1, 51)):
            failures.append(f"t{i}: {ids}")

    def asker(i: int) -> None:
        for _ in range(25):
            if client.status()["response"] != "OK: Status" or "history" not in client.history(f"t{i}"):
                failures.append(f"asker {i} got another thread's reply")

    threads = [threading.Thread(target=publisher, args=(i,)) for i in range(8)]
    threads += [threading.Thread(target=asker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert failures == []
    received = [sub.receive(timeout=5) for _ in range(400)]
    assert all(d is not None for d in received)
    assert sorted((d.queue, d.id) for d in received) == sorted((f"t{i}", n) for i in range(8) for n in range(1, 51))


def test_request_times_out_and_the_client_recovers(broker, connect):
    """A request the broker does not answer in time raises Timeout; the late reply is dropped quietly."""
    client = connect(timeout=0.3)
    frozen = threading.Thread(target=broker.call, args=(lambda: time.sleep(1.0),))
    frozen.start()
    time.sleep(0.05)
    started = time.monotonic()
    with pytest.raises(Timeout):
        client.status()
    assert time.monotonic() - started < 0.8
    frozen.join()
    assert client.status()["response"] == "OK: Status"
    assert client.errors == []


def test_get_message_times_out(connect):
    """get_message returns (None, None) and receive returns None after their timeout when nothing comes."""
    client = connect(queues=["silent"])
    started = time.monotonic()
    assert client.get_message(timeout=0.2) == (None, None)
    assert client.receive(timeout=0.1) is None
    assert 0.25 <= time.monotonic() - started < 2


# -- lifecycle ------------------------------------------------------------------------

def test_context_manager_and_iteration(broker):
    """`with` connects and closes; `for queue, message in client` yields deliveries and ends on close()."""
    with MessageQueue(broker.host, broker.port, queues=["it"]) as client, \
            MessageQueue(broker.host, broker.port) as pub:
        assert client.connected
        for n in range(3):
            pub.publish("it", {"n": n})
        seen = []
        for queue, message in client:
            seen.append((queue, message["n"]))
            if len(seen) == 3:
                break
        assert seen == [("it", 0), ("it", 1), ("it", 2)]
        threading.Timer(0.2, client.close).start()
        assert list(client) == []
    assert client.closed and not client.connected


def test_close_is_idempotent_and_final(connect):
    """close() twice is fine; afterwards requests, receive and connect raise ConnectionClosed."""
    client = connect()
    client.close()
    client.close()
    with pytest.raises(ConnectionClosed):
        client.send_message("q", {})
    with pytest.raises(ConnectionClosed):
        client.get_message(timeout=1)
    with pytest.raises(ConnectionClosed):
        client.connect()


def test_close_stops_a_waiting_reader(connect):
    """close() from another thread wakes a thread blocked in receive() with ConnectionClosed."""
    client = connect(queues=["q"])
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            client.receive()
        except ConnectionClosed as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.1)
    client.close()
    waiter.join(5)
    assert len(outcome) == 1


def test_tls_roundtrip_from_many_threads(broker_config, tmp_path):
    """Over TLS the welcome, concurrent publishes and deliveries work as over plain TCP."""
    from selfsigned import tls_contexts

    server_tls, client_tls = tls_contexts(tmp_path)
    tls_broker = BrokerThread(broker_config, ssl=server_tls)
    try:
        with MessageQueue("127.0.0.1", tls_broker.port, ssl=client_tls, queues=["secure"]) as sub, \
                MessageQueue("127.0.0.1", tls_broker.port, ssl=client_tls) as pub:
            assert sub.welcome_message == "OK: Welcome from CoreMQ!"
            threads = [threading.Thread(target=lambda: [pub.publish("secure", {"n": n}) for n in range(20)])
                       for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(10)
            ids = sorted(sub.receive(timeout=5).id for _ in range(80))
            assert ids == list(range(1, 81))
        with pytest.raises(ConnectionClosed):  # a client that does not trust the certificate
            MessageQueue("127.0.0.1", tls_broker.port, ssl=ssl_module.create_default_context(), reconnect=False).connect()
    finally:
        tls_broker.stop()


# -- encoding ---------------------------------------------------------------------------

def test_custom_encoder_and_decoder(connect):
    """A JSONEncoder subclass (DjangoJSONEncoder) encodes publishes; a callable decoder decodes receipts."""
    from django.core.serializers.json import DjangoJSONEncoder

    sub = connect(queues=["typed"], decoder=lambda data: json.loads(data, parse_float=decimal.Decimal))
    pub = connect(encoder=DjangoJSONEncoder)
    when = datetime.datetime(2015, 6, 1, 12, 30, tzinfo=datetime.timezone.utc)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    pub.send_message("typed", {"when": when, "price": decimal.Decimal("9.99"), "id": ident})
    message = sub.get_message(timeout=5)[1]
    assert body(message) == {"when": "2015-06-01T12:30:00Z", "price": "9.99", "id": str(ident)}
    assert isinstance(message["coremq_sent"], decimal.Decimal)


def test_frame_limit_announced_by_the_broker_is_kept_before_sending():
    """A publish over the broker's announced max_frame_size is refused locally and the connection goes on."""
    small = BrokerThread(BrokerConfig(port=0, shutdown_timeout=2.0, max_frame_size=1000))
    try:
        with MessageQueue(small.host, small.port) as client:
            with pytest.raises(LocalUsageError, match="the broker's frame limit of 1000"):
                client.publish("q", "x" * 2000)
            assert client.publish("q", "x" * 500)["id"] == 1
            assert client.errors == []
    finally:
        small.stop()


def test_tls_connections_shared_by_many_threads_stay_intact(broker_config, tmp_path):
    """Over TLS, threads publishing on a connection whose reader takes deliveries never break it.

    Each round opens fresh connections and publishes from four threads at
    once right away, while the TLS 1.3 session tickets are still being read:
    one SSL object used by two threads at once loses the connection.
    """
    from selfsigned import tls_contexts

    server_tls, client_tls = tls_contexts(tmp_path)
    tls_broker = BrokerThread(broker_config, ssl=server_tls)
    errors: list[CoreMQError] = []
    try:
        for round_number in range(30):
            queue = f"stress{round_number}"
            with MessageQueue("127.0.0.1", tls_broker.port, ssl=client_tls, queues=[queue], reconnect=False,
                              options={"echo": True}, on_error=errors.append) as client, \
                    MessageQueue("127.0.0.1", tls_broker.port, ssl=client_tls, queues=[queue], reconnect=False,
                                 options={"echo": True}, on_error=errors.append) as other:
                failures: list[BaseException] = []

                def publish(mq: MessageQueue, thread: int) -> None:
                    try:
                        for n in range(25):
                            mq.publish(queue, {"thread": thread, "n": n, "pad": "x" * (n * 97 % 3000)})
                    except BaseException as exc:  # reported below, not lost in the thread
                        failures.append(exc)

                threads = [threading.Thread(target=publish, args=(mq, t))
                           for t, mq in enumerate([client, other] * 3)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(30)
                assert failures == []
                for mq in (client, other):
                    ids = [mq.receive(timeout=10).id for _ in range(150)]
                    assert ids == list(range(1, 151))
                    assert mq.connected
        assert errors == []
    finally:
        tls_broker.stop()
