"""The broker over real sockets: the 2015 protocol, its extensions and the rules on queues."""

from __future__ import annotations

import json
import socket
import time
import uuid

import pytest

from coremq_broker.core.config import BrokerConfig
from coremq_client.codec import encode_frame
from brokers import BrokerThread
from wire import RawClient


@pytest.fixture
def broker_config() -> BrokerConfig:
    return BrokerConfig(host="127.0.0.1", port=0, history_length=3, max_frame_size=4096,
                        max_queue_name_length=50, max_subscriptions=5, shutdown_timeout=2.0)


@pytest.fixture
def connect(broker):
    clients: list[RawClient] = []

    def make(**kwargs) -> RawClient:
        client = RawClient(broker.host, broker.port, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def subscribed(connect, *queues: str) -> RawClient:
    client = connect()
    assert client.control({"coremq_subscribe": list(queues)})["response"] == "OK: Subscribe successful"
    return client


def test_welcome_names_the_connection(connect):
    """The first frame is on the new connection's UUID4 id queue with an OK: welcome and the server name."""
    client = connect()
    assert uuid.UUID(client.id).version == 4
    assert client.welcome["response"] == "OK: Welcome from CoreMQ!"
    assert client.welcome["server"] == "CoreMQ" and client.welcome["connection_id"] == client.id


def test_fan_out_to_every_subscriber_but_the_sender(connect):
    """A publish reaches every subscriber of the queue once, not the sender, and the sender gets OK."""
    subs = [subscribed(connect, "news") for _ in range(3)]
    publisher = subscribed(connect, "news")
    publisher.send("news", {"n": 1})
    assert publisher.read() == (publisher.id, {"response": "OK: Message sent", "id": 1, "request": 2})
    for sub in subs:
        queue, message = sub.read()
        assert queue == "news" and message["n"] == 1
    publisher.send("news", {"n": 2})
    publisher.read()
    assert [sub.read()[1]["n"] for sub in subs] == [2, 2, 2]


def test_stamps_are_added_and_cannot_be_forged(connect, broker):
    """Published objects carry sender, sent time, server and id; a publisher's own stamp values are overwritten."""
    sub = subscribed(connect, "q")
    pub = connect()
    before = time.time()
    pub.send("q", {"a": 1, "coremq_sender": "someone-else", "coremq_id": 99})
    _, message = sub.read()
    assert message["a"] == 1
    assert message["coremq_sender"] == pub.id
    assert before <= message["coremq_sent"] <= time.time()
    assert message["coremq_server"] == f"{broker.host}:{broker.port}"
    assert message["coremq_id"] == 1


def test_echo_option_delivers_own_publishes(connect):
    """With echo set the sender receives its own publishes; null removes the option again."""
    client = subscribed(connect, "q")
    assert client.control({"coremq_options": {"echo": True}})["response"] == "OK: Options set"
    client.send("q", {"x": 1})
    assert client.read()[1]["response"] == "OK: Message sent"  # the reply comes before the echo
    queue, message = client.read()
    assert queue == "q" and message["x"] == 1
    client.control({"coremq_options": {"echo": None}})
    client.send("q", {"x": 2})
    assert client.read()[1]["response"] == "OK: Message sent"
    client.send(client.id, {"coremq_status": True})
    assert client.read()[1]["response"] == "OK: Status"  # nothing else was queued in between


def test_strings_and_arrays_travel_wrapped(connect):
    """Strings and arrays may be published; they arrive wrapped as coremq_string / coremq_array."""
    sub = subscribed(connect, "q")
    pub = connect()
    pub.send("q", "hello")
    pub.send("q", [1, "two", None])
    pub.send("q", {"coremq_string": "2015 style"})
    assert sub.read()[1]["coremq_string"] == "hello"
    assert sub.read()[1]["coremq_array"] == [1, "two", None]
    assert sub.read()[1]["coremq_string"] == "2015 style"


@pytest.mark.parametrize("value", [5, 1.5, True, None])
def test_scalar_message_is_refused(connect, value):
    """A number, boolean or null where a message is needed gets an ERROR naming the type; nothing is stored."""
    client = connect()
    client.send("q", value)
    reply = client.read()[1]
    assert reply["response"].startswith("ERROR: a message must be a JSON object, array or string")
    assert client.control({"coremq_gethistory": ["q"]})["history"] == {"q": []}


def test_history_is_a_bounded_ring_with_increasing_ids(connect):
    """History keeps the last history_length messages, each with a per-queue id that only increases."""
    pub = connect()
    for n in range(5):
        pub.send("ring", {"n": n})
        pub.read()
    reply = pub.control({"coremq_gethistory": ["ring", "empty"]})
    assert [m["n"] for m in reply["history"]["ring"]] == [2, 3, 4]
    assert [m["coremq_id"] for m in reply["history"]["ring"]] == [3, 4, 5]
    assert reply["history"]["empty"] == []
    assert reply["sequence"] == {"ring": {"first": 3, "last": 5}, "empty": {"first": None, "last": 0}}


def test_history_since(connect):
    """History since N returns only messages numbered above N."""
    pub = connect()
    for n in range(3):
        pub.send("s", {"n": n})
        pub.read()
    reply = pub.control({"coremq_gethistory": {"s": 2}})
    assert [m["coremq_id"] for m in reply["history"]["s"]] == [3]
    reply = pub.control({"coremq_gethistory": {"s": None}})
    assert len(reply["history"]["s"]) == 3
    reply = pub.control({"coremq_gethistory": {"s": "two"}})
    assert reply["response"].startswith("ERROR: history since must be an integer")


def test_point_to_point_to_a_connection_id(connect):
    """A message sent to a connection's id queue reaches that connection only."""
    target = connect()
    bystander = subscribed(connect, "other")
    sender = connect()
    sender.send(target.id, {"private": True})
    assert sender.read()[1]["response"] == "OK: Message sent"
    queue, message = target.read()
    assert queue == target.id and message["private"] is True and message["coremq_sender"] == sender.id
    bystander.send("other", {"still": "quiet"})
    assert bystander.read()[1]["response"] == "OK: Message sent"


def test_id_queue_is_private(connect):
    """No connection may subscribe to, or read the history of, another connection's id queue."""
    victim = connect()
    spy = connect()
    reply = spy.control({"coremq_subscribe": [victim.id]})
    assert reply["response"].startswith("ERROR: permission denied: subscribe")
    reply = spy.control({"coremq_gethistory": [victim.id]})
    assert reply["response"].startswith("ERROR: permission denied: history")
    spy.send(victim.id, {"secret": 1})
    spy.read()
    assert victim.read()[1]["secret"] == 1


@pytest.mark.parametrize("request_", [
    {"coremq_subscribe": [""]},
    {"coremq_subscribe": ["two words"]},
    {"coremq_subscribe": ["x" * 51]},
    {"coremq_subscribe": "a\tb"},
    {"coremq_subscribe": 5},
    {"coremq_subscribe": [1, 2]},
    {"coremq_unsubscribe": {"a": 1}},
    {"coremq_options": ["echo"]},
    {"coremq_options": {"echo": "yes"}},
    {"coremq_gethistory": 3},
])
def test_bad_control_values_get_errors(connect, request_):
    """Queue names are checked and control values must have the right type; each mistake gets an ERROR."""
    client = connect()
    assert client.control(request_)["response"].startswith("ERROR: ")
    assert client.control({"coremq_subscribe": ["fine"]})["response"] == "OK: Subscribe successful"


def test_unknown_control_key(connect):
    """An unknown coremq_ key sent to the own id queue is an ERROR naming it."""
    client = connect()
    reply = client.control({"coremq_subscrbe": ["typo"]})
    assert reply["response"] == "ERROR: unknown control key 'coremq_subscrbe'"


def test_subscription_limit(connect):
    """A connection cannot hold more than max_subscriptions queues."""
    client = connect()
    assert client.control({"coremq_subscribe": [f"q{i}" for i in range(5)]})["response"].startswith("OK")
    reply = client.control({"coremq_subscribe": ["q-too-many"]})
    assert reply["response"] == "ERROR: too many subscriptions: limit is 5 per connection"


def test_unsubscribe(connect):
    """After unsubscribing, publishes to the queue no longer arrive."""
    sub = subscribed(connect, "a", "b")
    assert sub.control({"coremq_unsubscribe": ["a"]})["response"] == "OK: Unsubscribe successful"
    pub = connect()
    pub.send("a", {"n": 1})
    pub.send("b", {"n": 2})
    assert sub.read()[0] == "b"


def test_replies_off_still_reports_errors(connect):
    """With reply false no OK comes per publish, but an error still comes, numbered by its request."""
    client = connect()
    client.control({"coremq_options": {"reply": False}})  # request 1
    client.send("q", {"ok": 1})  # 2
    client.send("q", 42)  # 3: refused
    client.send("q", {"ok": 2})  # 4
    client.send(client.id, {"coremq_status": 1})  # 5
    first = client.read()[1]
    assert first["request"] == 3 and first["response"].startswith("ERROR:")
    assert client.read()[1]["request"] == 5


def test_status(connect):
    """A status request describes the server: name, version, role and counts."""
    client = connect()
    connect()
    status = client.control({"coremq_status": True})
    assert status["response"] == "OK: Status"
    assert status["server"] == "CoreMQ" and status["role"] == "master" and status["connections"] == 2


def test_delivered_frame_is_encoded_at_most_once_per_publish():
    """A plain publish is not re-encoded (its stamps are spliced in); one the splice cannot take is encoded once.

    Either way every subscriber gets the same bytes, never encoded per subscriber.
    """
    import orjson

    from coremq_client.codec import JSONCodec

    calls = []

    def counting(value):
        calls.append(value)
        return orjson.dumps(value)

    running = BrokerThread(BrokerConfig(port=0, codec=JSONCodec(encoder=counting)))
    try:
        subs = []
        for _ in range(20):
            sub = RawClient(running.host, running.port)
            sub.control({"coremq_subscribe": ["wide"]})
            subs.append(sub)
        pub = RawClient(running.host, running.port)
        for message, encoded in (({"n": 1}, 0), ({}, 1), ({"n": 3, "coremq_id": 99}, 1)):
            calls.clear()
            pub.send("wide", message)
            assert pub.read()[1]["response"] == "OK: Message sent"
            frames = [sub.read_frame() for sub in subs]
            assert len({frame.body for frame in frames}) == 1
            delivered = json.loads(frames[0].body)
            assert {k: v for k, v in delivered.items() if not k.startswith("coremq_")} == {
                k: v for k, v in message.items() if not k.startswith("coremq_")}
            assert delivered["coremq_sender"] == pub.id and isinstance(delivered["coremq_sent"], float)
            assert delivered["coremq_server"] == running.broker.address and delivered["coremq_id"] != 99
            objects = [call for call in calls if isinstance(call, dict)]  # not the time the stamps carry
            assert len(objects) == encoded  # the message (without stamps: they are formatted), once
            if not encoded:  # the plain publish's reply is formatted too
                assert objects == []
    finally:
        running.stop()


def test_oversized_frame_is_refused_and_the_connection_goes_on(connect):
    """A frame over max_frame_size gets ERROR: frame too large and the next frame works."""
    client = connect()
    client.send("q", {"blob": "x" * 5000})
    reply = client.read()[1]
    assert reply["response"] == "ERROR: frame too large: 5014 bytes, limit is 4096"
    client.send("q", {"small": 1})
    assert client.read()[1]["response"] == "OK: Message sent"


def assert_bystander_unaffected(connect) -> None:
    sub = subscribed(connect, "calm")
    pub = connect()
    pub.send("calm", {"ok": True})
    assert pub.read()[1]["response"] == "OK: Message sent"
    assert sub.read()[1]["ok"] is True


@pytest.mark.parametrize("raw", [b"garbage here", b"+abc q {}", b"-12 q {}", b"+" + b"9" * 30 + b" q"])
def test_malformed_header_gets_error_and_close(connect, raw, caplog):
    """A malformed header gets an ERROR and a clean close, is logged, and other clients go on."""
    client = connect()
    client.send_raw(raw)
    frames = client.read_until_closed()
    assert len(frames) == 1 and frames[0][1]["response"].startswith("ERROR: frame")
    assert any("frame" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert_bystander_unaffected(connect)


@pytest.mark.parametrize("raw,error", [
    (b'+9 q {"a": 1}' + encode_frame("q", b"{}"), "ERROR: invalid JSON"),
    (b"+7 q {nope" + encode_frame("q", b"{}"), "ERROR: invalid JSON"),
    (b"+2 {}" + encode_frame("q", b"{}"), "ERROR: frame payload must be"),
])
def test_bad_frame_bodies_get_errors(connect, raw, error):
    """A length that lies, text that is not JSON and a payload with no queue each get an ERROR."""
    client = connect()
    client.send_raw(raw)
    replies = client.read_until_closed() if raw.startswith(b"+9") else [client.read(), client.read()]
    assert replies[0][1]["response"].startswith(error)
    assert_bystander_unaffected(connect)


def test_connection_dropped_mid_frame(broker, connect, caplog):
    """A client that vanishes in the middle of a frame is logged and cleaned up; nothing else notices."""
    client = connect()
    client.send_raw(b"+100 q {\"partial")
    client.sock.shutdown(socket.SHUT_WR)
    assert client.read_until_closed() == []
    deadline = time.time() + 5
    while broker.call(lambda: client.id in broker.broker.registry.connections) and time.time() < deadline:
        time.sleep(0.01)
    assert client.id not in broker.broker.registry.connections
    assert any("middle of a frame" in r.getMessage() for r in caplog.records)
    assert_bystander_unaffected(connect)


def test_close_says_bye(broker, connect):
    """Closing the broker sends BYE to every client and closes their connections."""
    clients = [connect() for _ in range(3)]
    broker.close()
    for client in clients:
        assert client.read_until_closed() == [(client.id, {"response": "BYE"})]
    broker.restart()  # leave a broker for the fixture to stop


def test_slow_consumer_is_cut_off_and_others_get_everything(broker_config, connect, broker):
    """A subscriber that never reads is disconnected with its buffer bounded; a reading one gets every message."""
    broker.close()
    broker.config = broker_config.with_options(max_write_buffer=256 * 1024)
    broker.broker = broker._open(broker.config)
    sleeper = subscribed(connect, "firehose")
    sleeper.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader = subscribed(connect, "firehose")
    pub = connect()
    pub.control({"coremq_options": {"reply": False}})
    payload = "x" * 3000
    count = 3000  # about 9 MB
    received = 0
    for n in range(count):
        pub.send("firehose", {"n": n, "p": payload})
        if n % 10 == 9:
            while received <= n - 20:
                assert reader.read()[1]["n"] == received
                received += 1
    while received < count:
        assert reader.read()[1]["n"] == received
        received += 1
    assert broker.broker.registry.slow_consumers == 1
    deadline = time.time() + 5  # it gets a second's grace to read its ERROR
    while sleeper.id in broker.call(lambda: list(broker.broker.registry.connections)) and time.time() < deadline:
        time.sleep(0.05)
    assert sleeper.id not in broker.call(lambda: list(broker.broker.registry.connections))


def test_drop_policy_keeps_the_slow_consumer_and_names_the_gap(broker_config, connect, broker):
    """Under the drop policy a slow subscriber stays connected with a bounded buffer and is told exactly which ids it lost."""
    broker.close()
    broker.config = broker_config.with_options(max_write_buffer=256 * 1024, slow_consumer_policy="drop")
    broker.broker = broker._open(broker.config)
    sleeper = subscribed(connect, "firehose")  # reads nothing until the end
    pub = connect()
    pub.control({"coremq_options": {"reply": False}})
    count = 6000  # 18 MB: more than the kernel's socket buffers hold
    for n in range(count):
        pub.send("firehose", {"n": n, "p": "x" * 3000})
    pub.control({"coremq_status": True})  # every publish has been handled
    connection = broker.broker.registry.connections[sleeper.id]
    # Bound: our buffer (max) plus the socket's (high water plus at most one flush of max).
    assert broker.call(lambda: connection.buffered) <= 2 * 256 * 1024 + 64 * 1024
    seen: list[int] = []
    dropped = 0
    while not seen or seen[-1] < count:
        queue, message = sleeper.read()
        if queue == sleeper.id:
            assert message["response"] == "ERROR: slow consumer: messages dropped"
            span = message["dropped"]["firehose"]
            assert span["first"] == (seen[-1] + 1 if seen else 1)
            dropped += span["last"] - span["first"] + 1
            seen.extend(range(span["first"], span["last"] + 1))
        else:
            assert message["coremq_id"] == (seen[-1] + 1 if seen else 1)
            seen.append(message["coremq_id"])
    assert seen == list(range(1, count + 1)) and dropped > 0
    assert broker.call(lambda: connection.dropped) == dropped
    assert sleeper.id in broker.call(lambda: list(broker.broker.registry.connections))


def test_sub_addresses_are_private_to_their_connection(connect, broker):
    """'<id>/<name>' reaches connection <id> alone; nobody else may subscribe to it; it goes when the connection goes."""
    owner = connect()
    other = connect()
    spy = connect()
    assert spy.control({"coremq_subscribe": [f"{owner.id}/browser-1"]})["response"].startswith(
        "ERROR: permission denied: subscribe")
    other.send(f"{owner.id}/browser-1", {"hello": 1})
    assert other.read()[1]["response"] == "OK: Message sent"
    queue, message = owner.read()
    assert queue == f"{owner.id}/browser-1" and message["hello"] == 1
    owner.close()
    deadline = time.time() + 5
    while broker.call(lambda: f"{owner.id}/browser-1" in broker.broker.registry.queues) and time.time() < deadline:
        time.sleep(0.01)
    assert f"{owner.id}/browser-1" not in broker.broker.registry.queues


def test_status_with_detail_lists_connections_and_queues(connect):
    """A detailed status lists every connection with its counters and every public queue."""
    sub = subscribed(connect, "listed")
    status = sub.control({"coremq_status": {"connections": True, "queues": True}})
    ids = {c["id"]: c for c in status["connection_list"]}
    assert sub.id in ids and ids[sub.id]["transport"] == "tcp" and "listed" in ids[sub.id]["subscriptions"]
    assert [q["name"] for q in status["queue_list"]] == ["listed"]
    assert status["queue_list"][0]["subscribers"] == 1


def test_admin_disconnect_and_purge(connect):
    """The admin request disconnects a connection (with an ERROR first) and purges a queue's history."""
    admin = connect()
    victim = connect()
    admin.send("q", {"n": 1})
    admin.read()
    assert admin.control({"coremq_admin": {"action": "purge", "queue": "q"}}) == {
        "response": "OK: Purged", "purged": 1, "request": 2}
    assert admin.control({"coremq_gethistory": ["q"]})["history"]["q"] == []
    assert admin.control({"coremq_admin": {"action": "disconnect", "connection": victim.id}})["response"] == \
        "OK: Disconnected"
    frames = victim.read_until_closed()
    assert frames == [(victim.id, {"response": "ERROR: disconnected by an administrator", "code": "disconnected"})]
    reply = admin.control({"coremq_admin": {"action": "explode"}})
    assert reply["response"] == "ERROR: unknown admin action 'explode'"


def test_sender_may_be_own_sub_address_only(connect):
    """A publisher may stamp one of its own sub-addresses as sender; any other claimed sender is replaced."""
    sub = subscribed(connect, "q")
    pub = connect()
    pub.send("q", {"coremq_sender": f"{pub.id}/browser-7"})
    pub.send("q", {"coremq_sender": f"{sub.id}/browser-7"})
    assert sub.read()[1]["coremq_sender"] == f"{pub.id}/browser-7"
    assert sub.read()[1]["coremq_sender"] == pub.id


def test_running_broker_is_reachable_in_process(broker):
    """Broker.running() is the live broker until it closes."""
    from coremq_broker.core.broker import Broker

    assert Broker.running() is broker.broker
    broker.close()
    assert Broker.running() is None
    broker.restart()


def test_history_limit_pages_with_more(connect):
    """A history request with a limit returns at most that many per queue, oldest first, and says there is more."""
    pub = connect()
    for n in range(3):
        pub.send("paged", {"n": n})
        pub.read()
    pub.send(pub.id, {"coremq_gethistory": {"paged": None}, "limit": 2})
    reply = pub.read()[1]
    assert [m["n"] for m in reply["history"]["paged"]] == [0, 1] and reply["more"] == {"paged": True}
    pub.send(pub.id, {"coremq_gethistory": {"paged": 2}, "limit": 2})
    reply = pub.read()[1]
    assert [m["n"] for m in reply["history"]["paged"]] == [2] and "more" not in reply
    pub.send(pub.id, {"coremq_gethistory": ["paged"], "limit": 0})
    assert pub.read()[1]["response"] == "ERROR: history limit must be a positive integer, got 0"
