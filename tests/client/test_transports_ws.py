"""The browser protocol as the clients speak it (WebSocketProtocol), sans-I/O: lines of JSON in, events out."""

from __future__ import annotations

import json

import pytest

from coremq_client.errors import LocalUsageError, MessageError
from coremq_client.protocol import Bye, Delivery, Reply, Welcome
from coremq_client.transports_ws import WebSocketProtocol, is_websocket_url

WELCOME = {"type": "welcome", "connection_id": "abc/1", "epoch": "e", "server": "CoreMQ", "max_message_size": 200}


def line(frame: dict) -> bytes:
    return json.dumps(frame).encode() + b"\n"


def welcomed() -> WebSocketProtocol:
    protocol = WebSocketProtocol()
    assert isinstance(protocol.receive_data(line(WELCOME))[0], Welcome)
    return protocol


def test_frames_become_the_events_of_the_tcp_protocol():
    """Welcome, messages, answers, errors, drop notices and history read as over TCP, fed whole or byte by byte."""
    data = line(WELCOME) + b"".join(line(frame) for frame in [
        {"type": "message", "queue": "q", "id": 7, "message": "hi", "sender": "s", "sent": 1.5},
        {"type": "message", "queue": "q", "id": 8, "message": {"a": 1}, "sender": "s", "sent": 2.5},
        {"type": "published", "queue": "q", "id": 9, "ref": 3},
        {"type": "error", "error": "permission denied: publish on queue 'x'", "ref": 4, "action": "publish"},
        {"type": "error", "error": "invalid JSON"},
        {"type": "dropped", "queue": "q", "first": 3, "last": 5},
        {"type": "history", "history": {"q": [{"id": 1, "message": [1], "sender": "s", "sent": 0.5}]},
         "sequence": {"q": {"first": 1, "last": 9}}, "ref": 5},
        WELCOME,
    ])
    whole = WebSocketProtocol().receive_data(data)
    one_by_one = WebSocketProtocol()
    events = [event for i in range(len(data)) for event in one_by_one.receive_data(data[i:i + 1])]
    assert events == whole
    welcome, text, obj, published, refused, notice, dropped, history, again = whole
    assert welcome == Welcome("abc/1", {**WELCOME, "response": "OK: Welcome from CoreMQ!"})
    assert (text.message, text.id, text.sender, text.sent) == ("hi", 7, "s", 1.5)
    assert obj.message == {"a": 1, "coremq_id": 8, "coremq_sender": "s", "coremq_sent": 2.5}
    assert published == Reply(3, {"response": "OK: Message sent", "queue": "q", "id": 9, "request": 3})
    assert refused.request == 4 and refused.error == "permission denied: publish on queue 'x'"
    assert notice.request is None and notice.error == "invalid JSON"
    assert dropped == Reply(None, {"dropped": {"q": {"first": 3, "last": 5}}})
    assert history.message["history"] == {"q": [{"coremq_array": [1], "coremq_id": 1, "coremq_sender": "s",
                                                 "coremq_sent": 0.5}]}
    assert isinstance(again, Bye)  # a new connection id ends the connection
    assert isinstance(text, Delivery)


def test_bad_lines_are_errors_not_exceptions():
    """A line that is not JSON, or not an object, is a MessageError event; the next line still parses."""
    events = welcomed().receive_data(b"{nope\n[1]\n" + line({"type": "published", "id": 1, "ref": 1}))
    assert [type(event) for event in events] == [MessageError, MessageError, Reply]


def test_requests_carry_their_number_as_ref_and_what_the_protocol_lacks_is_refused():
    """Requests are numbered lines; options, status, admin, password logins and oversized frames raise locally."""
    protocol = welcomed()
    number, data = protocol.subscribe(["a", "b"])
    assert number == 1 and json.loads(data) == {"action": "subscribe", "queues": ["a", "b"], "ref": 1}
    number, data = protocol.get_history(["a"], {"a": 4}, limit=100)
    assert json.loads(data) == {"action": "history", "queues": ["a"], "since": {"a": 4}, "limit": 100, "ref": 2}
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert json.loads(protocol.authenticate({"token": "t"})[1]) == {"action": "auth", "token": "t", "ref": 3}
    for refused in (lambda: protocol.set_options({"echo": True}), lambda: protocol.status(),
                    lambda: protocol.admin("purge", queue="a"),
                    lambda: protocol.authenticate({"username": "u", "password": "p"}),
                    lambda: protocol.publish("a", "x" * 300)):  # over the welcome's max_message_size (200)
        with pytest.raises(LocalUsageError):
            refused()
    assert protocol.publish("a", "fits")[0] == 4  # refused requests took no number
    assert is_websocket_url("wss://h/ws/coremq/") and not is_websocket_url("127.0.0.1")
