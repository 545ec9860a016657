"""The publish fast path: many frames in one read, stamped without re-encoding, answered in order.

``Broker.handle_frames`` gathers consecutive plain publishes to one queue into
a run whose deliveries (and whose replies) are formatted in one call, with
the stamps spliced into the JSON as sent. These tests send everything in one
``sendall`` so that the broker sees the frames together, mix in what must
leave the run (control requests, bad JSON, objects the splice cannot take),
and read every frame through the client's parser, so a wrong size breaks the
stream: ids, request numbers and order are checked frame by frame.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from coremq_client.codec import encode_frame
from wire import RawClient


@pytest.fixture
def clients(broker):
    opened: list[RawClient] = []

    def make() -> RawClient:
        client = RawClient(broker.host, broker.port)
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()


def frame(queue: str, message: Any) -> bytes:
    return encode_frame(queue, json.dumps(message).encode())


def subscribe(client: RawClient, *queues: str) -> None:
    assert client.control({"coremq_subscribe": list(queues)})["response"] == "OK: Subscribe successful"


def read(client: RawClient, count: int) -> list[tuple[str, Any]]:
    return [client.read() for _ in range(count)]


def plain(message: dict) -> dict:
    return {k: v for k, v in message.items() if not k.startswith("coremq_")}


def test_a_mixed_read_is_answered_in_order_and_delivered_exactly(broker, clients):
    """Runs end at another queue, a control request, bad JSON and objects the splice does not take."""
    a, b, pub = clients(), clients(), clients()
    subscribe(a, "runs.a", "runs.%d%%s")
    subscribe(b, "runs.b")
    sent = [  # (queue, raw JSON, what subscribers see without the stamps, or None: an error)
        ("runs.a", b'{"n":1}', {"n": 1}),
        ("runs.a", b'{"n": 2, "text": "100% sure, %s %d"}', {"n": 2, "text": "100% sure, %s %d"}),
        ("runs.b", b'{"n":3}', {"n": 3}),
        (pub.id, b'{"coremq_options": {"reply": true}}', None),  # a control request between runs
        ("runs.a", b'{"n":4}', {"n": 4}),
        ("runs.a", b'"a string"', {}),  # wrapped: the slow path
        ("runs.a", b"{}", {}),  # empty: encoded, not spliced
        ("runs.a", b'{"n":5,"coremq\\u005fid":77}', {"n": 5}),  # an escaped stamp key: overwritten
        ("runs.%d%%s", b'{"n":6}', {"n": 6}),  # format characters in the queue's name
        ("runs.b", b'{"n":7}', {"n": 7}),
        ("runs.a", b"{broken", None),
        ("runs.a", b'{"n":8}', {"n": 8}),
        ("runs.a", b'{"n": 9}  ', {"n": 9}),  # blanks after the brace: encoded, not spliced
    ]
    pub.send_raw(b"".join(encode_frame(queue, body) for queue, body, _ in sent))

    replies = read(pub, len(sent))
    assert all(queue == pub.id for queue, _ in replies)
    assert [reply["request"] for _, reply in replies] == list(range(1, len(sent) + 1))
    assert replies[3][1]["response"] == "OK: Options set"
    assert replies[10][1]["response"].startswith("ERROR: invalid JSON")
    published = [(queue, expect, reply) for (queue, _, expect), (_, reply) in zip(sent, replies)
                 if queue.startswith("runs.") and expect is not None]
    assert all(reply["response"] == "OK: Message sent" for _, _, reply in published)

    got = read(a, 9) + read(b, 2)
    for name in ("runs.a", "runs.b", "runs.%d%%s"):
        delivered = [message for queue, message in got if queue == name]
        expected = [(expect, reply["id"]) for queue, expect, reply in published if queue == name]
        assert [plain(message) for message in delivered] == [expect for expect, _ in expected]
        assert [message["coremq_id"] for message in delivered] == [i for _, i in expected]
        assert [message["coremq_id"] for message in delivered] == list(range(1, len(expected) + 1))
        assert all(message["coremq_sender"] == pub.id and message["coremq_server"] == broker.broker.address
                   and isinstance(message["coremq_sent"], float) for message in delivered)
    string = [message for queue, message in got if queue == "runs.a"][3]
    assert string["coremq_string"] == "a string"

    # History gives what was delivered, stamps and all.
    history = a.control({"coremq_gethistory": {"runs.a": 0}})["history"]["runs.a"]
    assert history == [message for queue, message in got if queue == "runs.a"][-len(history):]


def test_sizes_stay_right_where_ids_and_request_numbers_gain_a_digit(broker, clients):
    """120 publishes in one read: ids and request numbers cross 9/10 and 99/100 inside the run."""
    sub, pub = clients(), clients()
    subscribe(sub, "digits")
    for _ in range(5):  # request numbers run ahead of ids: they gain digits at other frames
        assert pub.control({"coremq_options": {}})["response"] == "OK: Options set"
    pub.send_raw(b"".join(frame("digits", {"i": i, "pad": "x" * (i % 7)}) for i in range(120)))
    replies = read(pub, 120)
    assert [reply["request"] for _, reply in replies] == list(range(6, 126))
    assert [reply["id"] for _, reply in replies] == list(range(1, 121))
    delivered = read(sub, 120)
    assert [message["i"] for _, message in delivered] == list(range(120))
    assert [message["coremq_id"] for _, message in delivered] == list(range(1, 121))
    assert [message["pad"] for _, message in delivered] == ["x" * (i % 7) for i in range(120)]


def test_a_publisher_on_its_own_queue_gets_its_runs_only_with_echo(broker, clients):
    """Without echo a subscribed publisher skips its own runs; another subscriber gets all; echo brings them."""
    pub, other = clients(), clients()
    subscribe(pub, "own")
    subscribe(other, "own")
    pub.send_raw(b"".join(frame("own", {"n": n}) for n in range(3)))
    assert [reply["response"] for _, reply in read(pub, 3)] == ["OK: Message sent"] * 3
    assert [message["n"] for _, message in read(other, 3)] == [0, 1, 2]
    assert other.control({"coremq_options": {"reply": False}})["response"] == "OK: Options set"
    other.send_raw(frame("own", {"n": "other"}))
    assert read(pub, 1)[0][1]["n"] == "other"  # not its own three
    assert pub.control({"coremq_options": {"echo": True}})["response"] == "OK: Options set"
    pub.send_raw(frame("own", {"n": 3}) + frame("own", {"n": 4}))
    got = read(pub, 4)
    assert [m["response"] for _, m in got[:2]] == ["OK: Message sent"] * 2
    assert [m["n"] for _, m in got[2:]] == [3, 4]
    assert [message["n"] for _, message in read(other, 2)] == [3, 4]  # not its own either


def test_the_json_as_sent_is_kept_with_the_default_decoder_only(broker, clients):
    """With the default (strict UTF-8) decoder a plain publish reaches subscribers byte for byte, stamps added;
    a custom decoder may take more than strict JSON, so then every publish is re-encoded."""
    from brokers import BrokerThread
    from coremq_broker.core.config import BrokerConfig
    from coremq_client.codec import JSONCodec

    sent = b'{ "n" : 1.50, "t": "caf\xc3\xa9" }'
    sub, pub = clients(), clients()
    subscribe(sub, "as-sent")
    pub.send_raw(encode_frame("as-sent", sent))
    delivered = sub.read_frame().body
    assert delivered.startswith(sent[:-1] + b',"coremq_sender":"%s"' % pub.id.encode())
    assert json.loads(delivered)["coremq_id"] == 1

    custom = BrokerThread(BrokerConfig(port=0, codec=JSONCodec(decoder=json.JSONDecoder)))
    try:
        sub, pub = RawClient(custom.host, custom.port), RawClient(custom.host, custom.port)
        subscribe(sub, "as-sent")
        pub.send_raw(encode_frame("as-sent", sent))
        delivered = sub.read_frame().body
        assert delivered.startswith(b'{"n":1.5,"t":"caf\xc3\xa9","coremq_sender":')
        sub.close()
        pub.close()
    finally:
        custom.stop()


def test_json_in_another_encoding_is_refused_not_spliced(broker, clients):
    """UTF-16 JSON (which the stdlib alone would take) is answered ERROR: invalid JSON in either codec mode."""
    sub, pub = clients(), clients()
    subscribe(sub, "utf16")
    pub.send_raw(encode_frame("utf16", '{"n": 1}'.encode("utf-16-be")) + frame("utf16", {"n": 2}))
    assert pub.read()[1]["response"].startswith("ERROR: invalid JSON")
    assert pub.read()[1]["response"] == "OK: Message sent"
    assert plain(sub.read()[1]) == {"n": 2}
