"""CoreMQ's delivery and reply counters, and the set-up handshakes, fed bytes with no I/O."""

from __future__ import annotations

import time

import orjson
import pytest

from bench import coremq_verify
from bench.handshake import ExpectExact, ExpectUntil
from bench.coremq_verify import CoreMQDeliveryVerifier, CoreMQSubscriberVerifier, SharedDeliveries
from bench.protocols import CoreMQAckCounter, CoreMQWire, NATSWire, RedisWire
from bench.streams import payload
from coremq_client.codec import encode_frame

QUEUE = "bench.abcd1234"


def delivery(seq: int, message_id: int | None = None) -> bytes:
    """A delivery as the broker stamps and encodes it."""
    stored = orjson.loads(payload(seq))
    stored.update(coremq_sender="0b3c0e8c-4c1c-4a0e-9d4b-1b5c4f1a2b3c", coremq_sent=time.time(),
                  coremq_server="127.0.0.1:45678", coremq_id=seq + 1 if message_id is None else message_id)
    return encode_frame(QUEUE, orjson.dumps(stored))


def stream(n: int) -> list[bytes]:
    return [delivery(i) for i in range(n)]


def feed_all(verifier: CoreMQDeliveryVerifier, data: bytes, size: int) -> int:
    return sum(verifier.feed(data[i:i + size]) for i in range(0, len(data), size))


@pytest.fixture(params=["numpy", "regex"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run each test through both checking paths (numpy for large chunks, regex for small)."""
    if request.param == "regex":
        monkeypatch.setattr(coremq_verify, "np", None)
    elif coremq_verify.np is None:
        pytest.skip("numpy is not installed")
    return request.param


@pytest.mark.parametrize("size", [1, 7, 300, 5000, 1 << 20])
def test_coremq_deliveries_counted_however_cut(path: str, size: int) -> None:
    """A correct delivery stream counts every message, whatever the chunk size."""
    data = b"".join(stream(500))
    verifier = CoreMQDeliveryVerifier(QUEUE)
    assert feed_all(verifier, data, size) == 500
    assert verifier.error is None and verifier.count == 500


@pytest.mark.parametrize("kind", ["lost", "duplicated", "reordered"])
@pytest.mark.parametrize("size", [200, 1 << 20])
def test_coremq_loss_and_reordering_detected(path: str, kind: str, size: int) -> None:
    """A missing, repeated or swapped message is reported with the sequence number expected."""
    frames = stream(300)
    if kind == "lost":
        del frames[123]
    elif kind == "duplicated":
        frames.insert(124, frames[123])
    else:
        frames[123], frames[124] = frames[124], frames[123]
    verifier = CoreMQDeliveryVerifier(QUEUE)
    feed_all(verifier, b"".join(frames), size)
    assert verifier.error is not None
    assert f"expected message seq {123 if kind != 'duplicated' else 124}" in str(verifier.error)
    assert verifier.count < 125


@pytest.mark.parametrize("size", [200, 1 << 20])
def test_coremq_other_frames_are_failures(path: str, size: int) -> None:
    """An ERROR reply among the deliveries is not silently skipped."""
    frames = stream(100)
    frames.insert(50, encode_frame("own-id", orjson.dumps({"response": "ERROR: slow consumer"})))
    verifier = CoreMQDeliveryVerifier(QUEUE)
    feed_all(verifier, b"".join(frames), size)
    assert verifier.error is not None and "not a delivery" in str(verifier.error)


def test_coremq_message_ids_checked(path: str) -> None:
    """The broker's coremq_id must number the queue's messages from 1."""
    frames = stream(20)
    frames[-1] = delivery(19, message_id=99)
    verifier = CoreMQDeliveryVerifier(QUEUE)
    verifier.feed(b"".join(frames))
    assert verifier.error is not None and "coremq_id 99" in str(verifier.error)


def test_coremq_ack_counter() -> None:
    """Replies are counted across chunk boundaries; an ERROR reply is a failure."""
    replies = b"".join(encode_frame("me", orjson.dumps({"response": "OK: Message sent", "id": i, "request": i}))
                       for i in range(1, 51))
    counter = CoreMQAckCounter()
    assert sum(counter.feed(replies[i:i + 13]) for i in range(0, len(replies), 13)) == 50
    counter.feed(encode_frame("me", b'{"response":"ERROR: message too large","request":51}'))
    assert counter.error is not None


def test_expect_exact_keeps_what_follows() -> None:
    """Bytes after the expected reply belong to the benchmark, even in the same chunk."""
    handshake = RedisWire().subscriber("chan1", 0)
    assert isinstance(handshake, ExpectExact)
    reply = handshake.expect + b"*3\r\n"
    for i in range(len(handshake.expect) - 1):
        handshake.feed(reply[i:i + 1])
        assert not handshake.done
    handshake.feed(reply[len(handshake.expect) - 1:])
    assert handshake.done and handshake.leftover == b"*3\r\n"


def test_expect_exact_refuses_another_reply() -> None:
    """Redis's refusal (too many clients) is an error, not a set-up."""
    handshake = RedisWire().publisher(0)
    handshake.feed(b"-ERR max number of clients reached\r\n")
    assert handshake.error is not None and not handshake.done


def test_nats_setup_waits_for_pong_and_refuses_errors() -> None:
    """NATS: INFO, then PONG ends the set-up; -ERR before it fails it."""
    good = NATSWire().subscriber("s", 0)
    assert isinstance(good, ExpectUntil)
    good.feed(b'INFO {"server_id":"x"}\r\nPO')
    assert not good.done
    good.feed(b"NG\r\nMSG")
    assert good.done and good.leftover == b"MSG"
    bad = NATSWire().publisher(0)
    bad.feed(b"INFO {}\r\n-ERR 'Authorization Violation'\r\n")
    assert bad.error is not None


@pytest.mark.parametrize("bytewise", [False, True])
def test_coremq_subscriber_setup(bytewise: bool) -> None:
    """Welcome, then the subscribe request for that id, then its OK; the rest is left over."""
    handshake = CoreMQWire().subscriber(QUEUE, 0)
    welcome = encode_frame("conn-1", b'{"response":"OK: Welcome from CoreMQ!"}')
    ok = encode_frame("conn-1", b'{"response":"OK: Subscribe successful","request":1}')
    sent = b""
    if bytewise:
        for i in range(len(welcome)):
            sent += handshake.feed(welcome[i:i + 1])
    else:
        sent += handshake.feed(welcome)
    assert sent == encode_frame("conn-1", b'{"coremq_subscribe": ["%s"]}' % QUEUE.encode())
    first = delivery(0)
    handshake.feed(ok + first[:10])
    assert handshake.done and handshake.leftover == first[:10]


def test_coremq_refused_subscribe_is_an_error() -> None:
    """An ERROR reply to the subscribe request fails the set-up."""
    handshake = CoreMQWire().subscriber(QUEUE, 0)
    handshake.feed(encode_frame("c", b'{"response":"OK: Welcome"}')
                   + encode_frame("c", b'{"response":"ERROR: permission denied","request":1}'))
    assert handshake.error is not None


def chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    out, i = [], 0
    for size in sizes:
        out.append(data[i:i + size])
        i += size
    return out + [data[i:]]


@pytest.mark.parametrize("keep", [1 << 30, 2000])
def test_shared_deliveries_checked_once_and_compared_by_all(path: str, keep: int) -> None:
    """Subscribers reading the same stream in different pieces all count it; memory stays bounded."""
    data = b"".join(stream(400))
    shared = SharedDeliveries(QUEUE, keep=keep)
    subscribers = [CoreMQSubscriberVerifier(shared) for _ in range(3)]
    pieces = [chunked(data, [5000] * 30), chunked(data, [777] * 200), chunked(data, [1, 2, 3, 20000] * 5)]
    # Interleave: whoever is ahead extends the shared stream, the others compare.
    for round_ in range(max(map(len, pieces))):
        for verifier, chunks in zip(subscribers, pieces):
            if round_ < len(chunks):
                verifier.feed(chunks[round_])
    for verifier in subscribers:
        assert verifier.error is None and verifier.private is None and verifier.count == 400
    assert (shared.base > 0) == (keep < len(data))  # trimmed behind the slowest when over `keep`


@pytest.mark.parametrize("size", [300, 1 << 20])
def test_shared_deliveries_a_subscriber_that_missed_one_fails(path: str, size: int) -> None:
    """A subscriber whose stream lacks a message is checked on its own, and the loss is named."""
    frames = stream(200)
    shared = SharedDeliveries(QUEUE)
    good, bad = CoreMQSubscriberVerifier(shared), CoreMQSubscriberVerifier(shared)
    feed_all(good, b"".join(frames), size)
    feed_all(bad, b"".join(frames[:77] + frames[78:]), size)
    assert good.error is None and good.count == 200
    assert bad.private is not None and bad.error is not None
    assert "expected message seq 77" in str(bad.error)


def test_shared_deliveries_subscriber_with_its_own_valid_bytes_passes(path: str) -> None:
    """A broker that stamps each subscriber's copy differently is not failed for it."""
    shared = SharedDeliveries(QUEUE)
    first, second = CoreMQSubscriberVerifier(shared), CoreMQSubscriberVerifier(shared)
    first.feed(b"".join(stream(100)))
    time.sleep(0.01)  # a different coremq_sent
    assert second.feed(b"".join(stream(100))) == 100
    assert second.private is not None and second.error is None
