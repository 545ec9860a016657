"""The four wire protocols, as little of each as the benchmark needs, with no I/O.

Each :class:`Wire` knows how to set up a subscriber, a publisher and an idle
connection (as :mod:`bench.handshake` objects), how one publish of a payload
looks on the wire, and how to check what subscribers and publishers receive.
No client library is involved, so the load generator does the same work for
every target: it writes pre-encoded frames and compares received bytes.

Redis, MQTT and NATS deliver a payload in a frame whose bytes are known in
advance, so their subscribers are checked byte for byte against a
:class:`~bench.streams.SeqStream`. CoreMQ stamps each delivery with the
sender, a time and a number, so its deliveries are checked by
:mod:`bench.coremq_verify`.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Protocol

from coremq_client.codec import encode_frame

from .coremq_verify import CoreMQDeliveryVerifier, CoreMQSubscriberVerifier, SharedDeliveries
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
    #: True when the generator spreads its connections over loopback source addresses
    #: (see net.source_address): the server bounds connections per address. Only for
    #: CoreMQ: Redis' protected mode refuses sources other than 127.0.0.1.
    spread_sources = False

    def subscriber(self, topic: str, index: int) -> Handshake:
        raise NotImplementedError

    def publisher(self, index: int) -> Handshake:
        raise NotImplementedError

    def idle(self, index: int) -> Handshake:
        """A connection that is set up and then sends nothing more."""
        return self.publisher(index)

    def publish_frame(self, topic: str) -> Callable[[bytes], bytes]:
        raise NotImplementedError

    def delivery_stream(self, topic: str) -> SeqStream | SharedDeliveries | None:
        """What all subscribers' verifiers share: the exact bytes they must receive, if known."""
        return None

    def delivery_verifier(self, topic: str, stream: SeqStream | SharedDeliveries | None) -> Verifier:
        assert stream is not None
        return StreamVerifier(stream)

    def publisher_verifier(self, subscribers: int) -> Verifier | None:
        """Checks what the publisher receives (None: nothing may arrive).

        When :attr:`acks` is true its count is the number of publishes answered.
        """
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
    spread_sources = True  # MAX_CONNECTIONS_PER_ADDRESS: 100 anonymous connections per address

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

    def idle(self, index: int) -> Handshake:
        # One request answered: CoreMQ closes a connection that sends no frame within FIRST_FRAME_TIMEOUT.
        return self._setup({"coremq_options": {}})

    def publish_frame(self, topic: str) -> Callable[[bytes], bytes]:
        return lambda body: encode_frame(topic, body)

    def delivery_stream(self, topic: str) -> SharedDeliveries:
        return SharedDeliveries(topic)

    def delivery_verifier(self, topic: str, stream: SeqStream | SharedDeliveries | None) -> Verifier:
        assert isinstance(stream, SharedDeliveries)
        return CoreMQSubscriberVerifier(stream)

    def publisher_verifier(self, subscribers: int) -> Verifier | None:
        return CoreMQAckCounter()


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

    def publisher_verifier(self, subscribers: int) -> Verifier | None:
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

    def publisher_verifier(self, subscribers: int) -> Verifier | None:
        return StreamVerifier(RepeatStream(b"PING\r\n"))  # the server's PING, nothing else


WIRES: dict[str, type[Wire]] = {w.name: w for w in (CoreMQWire, RedisWire, MQTTWire, NATSWire)}
assert PAYLOAD_SIZE == 100
