"""The benchmark's byte streams and their verifier: exact counts, and every kind of loss detected."""

from __future__ import annotations

import json
import random

import pytest

from bench.protocols import MQTTWire, NATSWire, RedisWire
from bench.streams import BLOCK, PAYLOAD_SIZE, RepeatStream, SeqStream, StreamVerifier, payload


def redis_frame(body: bytes) -> bytes:
    return b"*3\r\n$7\r\nmessage\r\n$5\r\nchan1\r\n$%d\r\n%s\r\n" % (len(body), body)


def naive(make, start: int, stop: int) -> bytes:
    return b"".join(make(payload(i)) for i in range(start, stop))


def feed_in_chunks(verifier: StreamVerifier, data: bytes, sizes: list[int]) -> int:
    total, i = 0, 0
    for size in sizes:
        total += verifier.feed(data[i:i + size])
        i += size
    total += verifier.feed(data[i:])
    return total


def test_payload_is_100_bytes_of_json_with_the_sequence_number() -> None:
    """Every payload is a 100-byte JSON object carrying its number as ten digits."""
    for seq in (0, 7, BLOCK - 1, BLOCK, 123_456_789):
        data = payload(seq)
        assert len(data) == PAYLOAD_SIZE
        assert int(json.loads(data)["seq"]) == seq


@pytest.mark.parametrize("start,stop", [(0, 5), (BLOCK - 3, BLOCK + 3), (3 * BLOCK + 17, 3 * BLOCK + 40)])
def test_seq_stream_matches_frames_built_one_by_one(start: int, stop: int) -> None:
    """The patched blocks are byte for byte the frames of messages start..stop-1."""
    stream = SeqStream(redis_frame)
    assert b"".join(bytes(p) for p in stream.pieces(start, stop)) == naive(redis_frame, start, stop)


def test_seq_stream_rejects_frames_of_varying_length() -> None:
    """A framing whose length depends on the number cannot be pre-built."""
    with pytest.raises(ValueError):
        SeqStream(lambda body: body + b"x" * int(json.loads(body)["seq"]))


@pytest.mark.parametrize("how", ["whole", "bytewise", "random"])
def test_verifier_counts_a_correct_stream_however_it_is_cut(how: str) -> None:
    """Whole, one byte at a time or in random pieces, a correct stream counts every frame."""
    data = naive(redis_frame, 0, BLOCK + 50)
    verifier = StreamVerifier(SeqStream(redis_frame))
    if how == "whole":
        got = verifier.feed(data)
    elif how == "bytewise":
        got = sum(verifier.feed(data[i:i + 1]) for i in range(len(data[:5000])))
        got += verifier.feed(data[5000:])
    else:
        rng = random.Random(7)
        got = feed_in_chunks(verifier, data, [rng.randint(1, 3000) for _ in range(400)])
    assert verifier.error is None
    assert got == verifier.count == BLOCK + 50


def _broken(kind: str) -> tuple[bytes, int]:
    frames = [redis_frame(payload(i)) for i in range(200)]
    if kind == "lost":
        del frames[57]
    elif kind == "duplicated":  # the copy of 57 arrives where 58 should
        frames.insert(58, frames[57])
    elif kind == "reordered":
        frames[57], frames[58] = frames[58], frames[57]
    elif kind == "corrupted":
        frames[57] = frames[57].replace(b"benchmark", b"benchmarx", 1)
    return b"".join(frames), 58 if kind == "duplicated" else 57


@pytest.mark.parametrize("kind", ["lost", "duplicated", "reordered", "corrupted"])
def test_verifier_detects_loss_duplication_reordering_and_corruption(kind: str) -> None:
    """The first bad frame is named, the count stops before it, and feeding more changes nothing."""
    data, bad = _broken(kind)
    verifier = StreamVerifier(SeqStream(redis_frame))
    feed_in_chunks(verifier, data, [1000] * 5)
    assert verifier.error is not None
    assert f"frame {bad} (message seq {bad})" in str(verifier.error)
    assert verifier.count <= bad
    assert verifier.feed(redis_frame(payload(200))) == 0


def test_verifier_detects_a_short_stream_by_its_count() -> None:
    """A stream that simply stops is not an error by itself: the count shows the shortfall."""
    verifier = StreamVerifier(SeqStream(redis_frame))
    verifier.feed(naive(redis_frame, 0, 10)[:-1])
    assert verifier.error is None and verifier.count == 9


def test_interjections_between_frames_are_skipped_even_when_cut() -> None:
    """NATS's PING between two MSG frames, whole or split across chunks, is not a message."""
    wire = NATSWire()
    stream = wire.delivery_stream("bench.x")
    whole = b"".join(bytes(p) for p in stream.pieces(0, 30))
    size = stream.frame_size
    frames = [whole[i:i + size] for i in range(0, len(whole), size)]
    data = b"".join(frames[:10]) + b"PING\r\n" + b"".join(frames[10:20]) + b"PING\r\n" + b"".join(frames[20:])
    cut = data.index(b"PING", len(b"".join(frames[:10])) + 10) + 2
    verifier = wire.delivery_verifier("bench.x", stream)
    got = verifier.feed(data[:cut]) + verifier.feed(data[cut:])
    assert verifier.error is None
    assert got == verifier.count == 30
    assert verifier.interjected == 2


def test_an_interjection_inside_a_frame_is_a_mismatch() -> None:
    """PING in the middle of a frame means the stream is broken."""
    wire = NATSWire()
    stream = wire.delivery_stream("bench.x")
    data = b"".join(bytes(p) for p in stream.pieces(0, 3))
    verifier = wire.delivery_verifier("bench.x", stream)
    verifier.feed(data[:40] + b"PING\r\n" + data[40:])
    assert verifier.error is not None


def test_repeat_stream_checks_acks() -> None:
    """Redis's answer to PUBLISH must name every subscriber, every time."""
    verifier = StreamVerifier(RepeatStream(b":10\r\n"))
    assert verifier.feed(b":10\r\n" * 3 + b":1") == 3
    assert verifier.feed(b"0\r\n:9\r\n") == 0
    assert verifier.error is not None and verifier.count == 3


@pytest.mark.parametrize("wire", [RedisWire(), MQTTWire(), NATSWire()], ids=lambda w: w.name)
def test_peer_deliveries_are_fixed_length(wire) -> None:
    """Each peer's delivery of message n differs from message m's only in the digits."""
    stream = wire.delivery_stream("bench.abcd1234")
    first, later = bytes(stream.pieces(0, 1)[0]), bytes(stream.pieces(98_765, 98_766)[0])
    assert len(first) == len(later) == stream.frame_size
    assert first.replace(b"0000000000", b"0000098765") == later


def test_mqtt_publish_packet_layout() -> None:
    """QoS 0 PUBLISH: 0x30, remaining length, topic with its length, payload."""
    frame = MQTTWire().publish_frame("bench.abcd1234")(payload(1))
    topic = b"bench.abcd1234"
    assert frame[0] == 0x30 and frame[1] == 2 + len(topic) + PAYLOAD_SIZE
    assert frame[2:4] == len(topic).to_bytes(2, "big") and frame[4:4 + len(topic)] == topic
    assert frame[4 + len(topic):] == payload(1)
