"""A client written the way 2015 clients were works against our broker unchanged."""

from __future__ import annotations

import json
import socket
import time

from brokers import BrokerThread
from coremq_broker.core.config import BrokerConfig


class Client2015:
    """A blocking client that reads frames as the 2015 readers did: 10 bytes first, then the rest.

    It knows nothing of our extensions: no request numbers, no sequence ids, JSON
    with the stdlib's default separators.
    """

    def __init__(self, host: str, port: int = 6747) -> None:
        self.host, self.port = host, port
        self.sock: socket.socket | None = None
        self.welcome_message = None
        self.connection_id = None

    def connect(self) -> None:
        self.sock = socket.create_connection((self.host, self.port), timeout=5)
        queue, message = self._read_frame()
        self.connection_id = queue
        self.welcome_message = message["response"]

    def _recv_exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def _read_frame(self):
        head = self._recv_exactly(10)
        assert head[:1] == b"+"
        length_text, _, rest = head[1:].partition(b" ")
        length = int(length_text)
        payload = rest + self._recv_exactly(length - len(rest))
        queue, _, body = payload.decode("utf-8").partition(" ")
        return queue, json.loads(body)

    def _send(self, queue: str, message: dict) -> None:
        payload = ("%s %s" % (queue, json.dumps(message))).encode("utf-8")
        self.sock.sendall(b"+%d %s" % (len(payload), payload))

    def _command(self, message: dict) -> dict:
        self._send(self.connection_id, message)
        return self._read_frame()[1]

    def subscribe(self, *queues: str) -> dict:
        return self._command({"coremq_subscribe": list(queues)})

    def unsubscribe(self, *queues: str) -> dict:
        return self._command({"coremq_unsubscribe": list(queues)})

    def set_options(self, **options) -> dict:
        return self._command({"coremq_options": options})

    def get_history(self, *queues: str) -> dict:
        return self._command({"coremq_gethistory": list(queues)})

    def send_message(self, queue: str, message: dict) -> dict:
        self._send(queue, message)
        return self._read_frame()[1]

    def get_message(self, timeout: float = 1):
        self.sock.settimeout(timeout)
        try:
            return self._read_frame()
        except socket.timeout:
            return None, None
        finally:
            self.sock.settimeout(5)

    def close(self) -> None:
        self.sock.close()


def test_2015_client_session(broker):
    """The 2015 README's session works: welcome, subscribe, publish, receive, history, options, unsubscribe."""
    m = Client2015(broker.host, broker.port)
    m.connect()
    assert m.welcome_message == "OK: Welcome from CoreMQ!"
    other = Client2015(broker.host, broker.port)
    other.connect()
    assert m.subscribe("test")["response"] == "OK: Subscribe successful"
    assert other.send_message(queue="test", message=dict(a=1))["response"] == "OK: Message sent"
    queue, message = m.get_message()
    assert queue == "test" and message["a"] == 1
    assert message["coremq_sender"] == other.connection_id and isinstance(message["coremq_sent"], float)
    assert [h["a"] for h in m.get_history("test")["history"]["test"]] == [1]
    assert m.set_options(echo=True)["response"] == "OK: Options set"
    assert m.send_message("test", {"b": 2})["response"] == "OK: Message sent"
    queue, echoed = m.get_message()
    assert queue == "test" and echoed["b"] == 2
    assert m.unsubscribe("test")["response"] == "OK: Unsubscribe successful"
    other.send_message("test", {"c": 3})
    assert m.get_message(timeout=0.2) == (None, None)
    m.close()
    other.close()


def test_2015_point_to_point_and_strings(broker):
    """A 2015 client can message another by its id and send a wrapped string."""
    a = Client2015(broker.host, broker.port)
    b = Client2015(broker.host, broker.port)
    a.connect()
    b.connect()
    assert a.send_message(b.connection_id, {"coremq_string": "hi"})["response"] == "OK: Message sent"
    queue, message = b.get_message()
    assert queue == b.connection_id and message["coremq_string"] == "hi"
    assert b.get_message(timeout=0.2) == (None, None)
    a.close()
    b.close()


def test_2015_client_reads_bye(broker):
    """On shutdown a 2015 client reads BYE on its id queue."""
    a = Client2015(broker.host, broker.port)
    a.connect()
    broker.close()
    assert a.get_message() == (a.connection_id, {"response": "BYE"})
    broker.restart()


def test_2015_client_that_speaks_first_outlives_the_deadlines():
    """A 2015 client that subscribes (or publishes) at once stays connected, idle, well past FIRST_FRAME_TIMEOUT and FRAME_TIMEOUT."""
    broker = BrokerThread(BrokerConfig(host="127.0.0.1", port=0, first_frame_timeout=0.3, frame_timeout=0.3,
                                       shutdown_timeout=1.0))
    try:
        listener, publisher = Client2015(broker.host, broker.port), Client2015(broker.host, broker.port)
        listener.connect()
        publisher.connect()
        assert listener.subscribe("test")["response"] == "OK: Subscribe successful"
        assert publisher.send_message("test", {"n": 1})["response"] == "OK: Message sent"
        assert listener.get_message()[1]["n"] == 1
        time.sleep(1.0)  # idle for more than three times each deadline
        assert publisher.send_message("test", {"n": 2})["response"] == "OK: Message sent"
        assert listener.get_message()[1]["n"] == 2
        assert publisher.send_message(listener.connection_id, {"coremq_string": "direct"})["response"] == "OK: Message sent"
        queue, message = listener.get_message()
        assert queue == listener.connection_id and message["coremq_string"] == "direct"
        listener.close()
        publisher.close()
    finally:
        broker.stop()
