"""The four wire protocols, as little of each as the benchmark needs, with no I/O.

Each :class:`Wire` knows how to set up a subscriber, a publisher and an idle
connection (as :mod:`bench.handshake` objects), how one publish of a payload
looks on the wire, and how to check what subscribers and publishers receive.
No client library is involved, so the load generator does the same work for
every target: it writes pre-encoded frames and compares received bytes.

Redis, MQTT and NATS deliver a payload in a frame whose bytes are known in
advance, so their subscribers are checked byte for byte against a
:class:`~bench.streams.SeqStream`. CoreMQ stamps each delivery with the
sender, a time and a number, so its subscribers are checked by
:class:`CoreMQDeliveryVerifier`, which finds the sequence numbers with one
regular-expression scan per chunk.
"""

from __future__ import annotations

import json
import os
import re
from typing import Callable, Protocol

from coremq_client.codec import encode_frame

from .handshake import ExpectExact, ExpectUntil, Handshake, HandshakeError, Steps
from .streams import PAYLOAD_SIZE, RepeatStream, SeqStream, StreamMismatch, StreamVerifier

__all__ = [
    "Verifier",
    "Wire",
    "CoreMQWire",
    "RedisWire",
    "MQTTWire",
    "NATSWire",
    "WIRES",
    "CoreMQDeliveryVerifier",
    "CoreMQAckCounter",
]


class Verifier(Protocol):
    """Checks one connection's received bytes: ``feed`` returns the frames it completed."""

    count: int
    error: AssertionError | None

    def feed(self, data: bytes) -> int: ...


class Wire:
    """One protocol. Subclasses fill in the frames; ``topic`` is the queue, channel or subject."""

    name = ""
    label = ""
    port = 0
    #: True when the server answers every publish (CoreMQ with replies on, Redis).
    acks = False

    def subscriber(self, topic: str, index: int) -> Handshake:
        raise NotImplementedError

    def publisher(self, index: int) -> Handshake:
        raise NotImplementedError

    def idle(self, index: int) -> Handshake:
        """A connection that is set up and then sends nothing more."""
        return self.publisher(index)

    def publish_frame(self, topic: str) -> Callable[[bytes], bytes]:
        raise NotImplementedError

    def delivery_stream(self, topic: str) -> SeqStream | None:
        """The exact bytes a subscriber receives, if they are known in advance."""
        return None

    def delivery_verifier(self, topic: str, stream: SeqStream | None) -> Verifier:
        assert stream is not None
        return StreamVerifier(stream)

    def ack_verifier(self, subscribers: int) -> Verifier | None:
        return None


# -- CoreMQ ------------------------------------------------------------------


def _split_frame(buffer: bytes) -> tuple[int, str, dict] | None:
    """``(bytes used, queue, object)`` of the first CoreMQ frame, None if incomplete."""
    space = buffer.find(b" ")
    if space < 0:
        return None
    if buffer[:1] != b"+" or not buffer[1:space].isdigit():
        raise HandshakeError(f"not a CoreMQ frame: {buffer[:60]!r}")
    end = space + 1 + int(buffer[1:space])
    if len(buffer) < end:
        return None
    queue, _, body = buffer[space + 1:end].partition(b" ")
    return end, queue.decode(), json.loads(body)


class CoreMQWire(Wire):
    name = "coremq"
    label = "CoreMQ"
    port = 6747
    acks = True  # the broker's default: every publish is answered "OK: Message sent"

    def _setup(self, request: dict | None) -> Handshake:
        state: dict[str, str] = {}

        def step(buffer: bytes) -> tuple[int, bytes, bool]:
            frame = _split_frame(buffer)
            if frame is None:
                return 0, b"", False
            used, queue, message = frame
            if "id" not in state:
                if not str(message.get("response", "")).startswith("OK"):
                    raise HandshakeError(f"no welcome: {message!r}")
                state["id"] = queue
                if request is None:
                    return used, b"", True
                return used, encode_frame(queue, json.dumps(request).encode()), False
            if not str(message.get("response", "")).startswith("OK"):
                raise HandshakeError(f"request {request!r} refused: {message!r}")
            return used, b"", True

        return Steps(step)

    def subscriber(self, topic: str, index: int) -> Handshake:
        return self._setup({"coremq_subscribe": [topic]})

    def publisher(self, index: int) -> Handshake:
        return self._setup(None)

    def publish_frame(self, topic: str) -> Callable[[bytes], bytes]:
        return lambda body: encode_frame(topic, body)

    def delivery_verifier(self, topic: str, stream: SeqStream | None) -> Verifier:
        return CoreMQDeliveryVerifier(topic)

    def ack_verifier(self, subscribers: int) -> Verifier | None:
        return CoreMQAckCounter()


class CoreMQDeliveryVerifier:
    """Checks a CoreMQ subscriber's deliveries: every frame a delivery, seq 0, 1, 2, ... in order.

    Only complete frames are checked (up to the last ``}``; a frame's JSON
    object is flat, so its ``}`` ends it); the rest waits for the next chunk.
    Every ``{`` in them must open a benchmark message, ``{"seq":"`` and ten
    digits, so a frame of any other kind (an error, a BYE) fails the check;
    the sequence numbers must run on from the previous chunk without a gap;
    and the last ``coremq_id`` must equal the count (ids start at 1 on a fresh
    queue). Large chunks are checked with numpy, a few C passes over the bytes
    (the generator must stay cheaper than the broker it measures); small ones
    with one regular-expression scan.
    """

    _SEQ = re.compile(rb'\{"seq":"(\d{10})"')
    _ID = b'"coremq_id":'
    _NUMPY_FROM = 4096  # bytes; below this numpy's per-call overhead costs more than it saves

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.count = 0
        self.error: StreamMismatch | None = None
        self._tail = b""

    def feed(self, data: bytes) -> int:
        if self.error is not None:
            return 0
        before = self.count
        start = 0
        if self._tail:  # finish the frame that the last chunk cut, without copying all of data
            close = data.find(b"}")
            if close < 0:
                self._tail += data
                return 0
            head, self._tail = self._tail + data[:close + 1], b""
            if not self._check(head, 0, len(head)):
                return 0
            start = close + 1
        cut = data.rfind(b"}") + 1
        if cut <= start:
            self._tail = data[start:]
        else:
            self._tail = data[cut:]
            if not self._check(data, start, cut):
                return 0
        return self.count - before

    def _check(self, data: bytes, start: int, end: int) -> bool:
        first = self.count
        if np is not None and end - start >= self._NUMPY_FROM:
            numbers = _numpy_seqs(data, start, end)
            if numbers is None:
                return self._fail(f"a frame that is not a delivery of a benchmark message in {data[start:start + 300]!r}")
            n = len(numbers)
            if not np.array_equal(numbers, np.arange(first, first + n)):
                k = int(np.flatnonzero(numbers != np.arange(first, first + n))[0])
                return self._fail(f"expected message seq {first + k}, got seq {int(numbers[k])} (lost or reordered)")
        else:
            seqs = self._SEQ.findall(data, start, end)
            n = len(seqs)
            if data.count(b"{", start, end) != n:
                return self._fail(f"a frame that is not a delivery of a benchmark message in {data[start:end][:300]!r}")
            numbers = list(map(int, seqs))
            if numbers != list(range(first, first + n)):
                k = next(i for i, (got, want) in enumerate(zip(numbers, range(first, first + n))) if got != want)
                return self._fail(f"expected message seq {first + k}, got seq {numbers[k]} (lost or reordered)")
        at = data.rfind(self._ID, start, end) + len(self._ID)
        last_id = data[at:data.find(b"}", at)].split(b",")[0]
        if int(last_id) != first + n:
            return self._fail(f"coremq_id {int(last_id)} on message seq {first + n - 1}, expected {first + n}")
        self.count = first + n
        return True

    def _fail(self, reason: str) -> bool:
        self.error = StreamMismatch(f"queue {self.queue!r}: {reason}")
        return False


try:  # numpy comes with matplotlib; without it the regular-expression path does all the work
    import numpy as np
except ImportError:  # pragma: no cover
    np = None

if np is not None:
    _OPEN = ord("{")
    _SEQ_MARK = np.frombuffer(b'"seq":"', np.uint8)
    _SEQ_SPAN = np.arange(1, 1 + len(_SEQ_MARK) + 10)  # after each "{": the mark, then ten digits
    _POWERS = 10 ** np.arange(9, -1, -1, dtype=np.int64)


def _numpy_seqs(data: bytes, start: int, end: int) -> "np.ndarray | None":
    """The sequence numbers of the messages in ``data[start:end]``; None if an object is not one."""
    arr = np.frombuffer(data, np.uint8, count=end)[start:]
    opens = np.flatnonzero(arr == _OPEN)
    if len(opens) and opens[-1] + _SEQ_SPAN[-1] >= len(arr):
        return None
    window = arr[opens[:, None] + _SEQ_SPAN]
    if not (window[:, :len(_SEQ_MARK)] == _SEQ_MARK).all():
        return None
    digits = window[:, len(_SEQ_MARK):].astype(np.int64) - 48
    if ((digits < 0) | (digits > 9)).any():
        return None
    return digits @ _POWERS


class CoreMQAckCounter:
    """Counts ``OK: Message sent`` replies; any ``ERROR`` reply is a failure."""

    _OK = b'Message sent"'

    def __init__(self) -> None:
        self.count = 0
        self.error: StreamMismatch | None = None
        self._tail = b""

    def feed(self, data: bytes) -> int:
        if self.error is not None:
            return 0
        buf = self._tail + data
        if b"ERROR" in buf or b'"BYE"' in buf:
            self.error = StreamMismatch(f"the broker answered a publish with {buf[:300]!r}")
            return 0
        n = buf.count(self._OK)
        self._tail = buf[-(len(self._OK) - 1):]
        self.count += n
        return n


# -- Redis -------------------------------------------------------------------


def _resp(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


_PING = _resp(b"PING")


class RedisWire(Wire):
    name = "redis"
    label = "Redis"
    port = 6379
    acks = True  # PUBLISH answers with the number of receivers

    def subscriber(self, topic: str, index: int) -> Handshake:
        channel = topic.encode()
        expect = b"*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:1\r\n" % (len(channel), channel)
        return ExpectExact(_resp(b"SUBSCRIBE", channel), expect)

    def publisher(self, index: int) -> Handshake:
        return ExpectExact(_PING, b"+PONG\r\n")

    def publish_frame(self, topic: str) -> Callable[[bytes], bytes]:
        channel = topic.encode()
        return lambda body: _resp(b"PUBLISH", channel, body)

    def delivery_stream(self, topic: str) -> SeqStream | None:
        channel = topic.encode()
        return SeqStream(lambda body: _resp(b"message", channel, body))

    def ack_verifier(self, subscribers: int) -> Verifier | None:
        # Every publish must report that all subscribers got it.
        return StreamVerifier(RepeatStream(b":%d\r\n" % subscribers))


# -- MQTT 3.1.1 (Mosquitto) --------------------------------------------------


def _mqtt_string(value: bytes) -> bytes:
    return len(value).to_bytes(2, "big") + value


def _mqtt_packet(first: int, body: bytes) -> bytes:
    """A packet: the fixed header byte, the variable-length remaining length, the body."""
    out = bytearray((first,))
    n = len(body)
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            break
    return bytes(out) + body


def _mqtt_connect(client_id: str) -> bytes:
    # Protocol level 4 (3.1.1), clean session, keep-alive 60 s.
    return _mqtt_packet(0x10, _mqtt_string(b"MQTT") + bytes((4, 0x02)) + (60).to_bytes(2, "big")
                        + _mqtt_string(client_id.encode()))


_CONNACK = b"\x20\x02\x00\x00"


class MQTTWire(Wire):
    name = "mqtt"
    label = "Mosquitto"
    port = 1883

    def __init__(self) -> None:
        self._token = os.urandom(3).hex()  # client ids must be unique on the broker

    def _client_id(self, role: str, index: int) -> str:
        return f"cmqb-{self._token}-{role}{index}"

    def subscriber(self, topic: str, index: int) -> Handshake:
        subscribe = _mqtt_packet(0x82, (1).to_bytes(2, "big") + _mqtt_string(topic.encode()) + b"\x00")
        suback = b"\x90\x03\x00\x01\x00"
        return ExpectExact(_mqtt_connect(self._client_id(f"s{topic}-", index)) + subscribe, _CONNACK + suback)

    def publisher(self, index: int) -> Handshake:
        return ExpectExact(_mqtt_connect(self._client_id("p", index)), _CONNACK)

    def idle(self, index: int) -> Handshake:
        return ExpectExact(_mqtt_connect(self._client_id("i", index)), _CONNACK)

    def publish_frame(self, topic: str) -> Callable[[bytes], bytes]:
        name = _mqtt_string(topic.encode())
        return lambda body: _mqtt_packet(0x30, name + body)  # QoS 0, no retain

    def delivery_stream(self, topic: str) -> SeqStream | None:
        return SeqStream(self.publish_frame(topic))  # delivered as published


# -- NATS --------------------------------------------------------------------

_NATS_CONNECT = (b'CONNECT {"verbose":false,"pedantic":false,"echo":false,"name":"coremq-bench",'
                 b'"lang":"python","version":"1","protocol":0}\r\n')


class NATSWire(Wire):
    name = "nats"
    label = "NATS"
    port = 4222

    def subscriber(self, topic: str, index: int) -> Handshake:
        return ExpectUntil(_NATS_CONNECT + b"SUB %s 1\r\nPING\r\n" % topic.encode(), b"PONG\r\n", starts=b"INFO ")

    def publisher(self, index: int) -> Handshake:
        return ExpectUntil(_NATS_CONNECT + b"PING\r\n", b"PONG\r\n", starts=b"INFO ")

    def publish_frame(self, topic: str) -> Callable[[bytes], bytes]:
        subject = topic.encode()
        return lambda body: b"PUB %s %d\r\n%s\r\n" % (subject, len(body), body)

    def delivery_stream(self, topic: str) -> SeqStream | None:
        subject = topic.encode()
        return SeqStream(lambda body: b"MSG %s 1 %d\r\n%s\r\n" % (subject, len(body), body))

    def delivery_verifier(self, topic: str, stream: SeqStream | None) -> Verifier:
        assert stream is not None
        # The server PINGs a new client after about two seconds; the PONG is not needed for minutes.
        return StreamVerifier(stream, interjections=(b"PING\r\n",))


WIRES: dict[str, type[Wire]] = {w.name: w for w in (CoreMQWire, RedisWire, MQTTWire, NATSWire)}
assert PAYLOAD_SIZE == 100
