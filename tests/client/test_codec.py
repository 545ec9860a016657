"""The sans-I/O codec: framing, limits, JSON, with no event loop and no socket."""

from __future__ import annotations

import datetime
import decimal
import json
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coremq_client import codec as codec_module
from coremq_client.codec import Frame, FrameParser, JSONCodec, encode_frame, validate_queue_name
from coremq_client.errors import (
    FrameBodyError,
    FrameHeaderError,
    FrameTooLarge,
    InvalidQueueName,
    MessageError,
    ProtocolError,
)

FRAMES = [Frame("test", b'{"a":1}'), Frame("q\u00e9", '{"x":"\u2603"}'.encode()), Frame("id-1", b"[1,2,3]")]
STREAM = b"".join(encode_frame(f.queue, f.body) for f in FRAMES)


def parse_all(chunks: list[bytes], **kwargs: int) -> list[object]:
    parser = FrameParser(**kwargs)
    events: list[object] = []
    for chunk in chunks:
        parser.receive_data(chunk)
        events.extend(parser.events())
    return events


def test_encode_frame_counts_bytes():
    """The length field counts bytes of queue, space and JSON, not characters."""
    data = encode_frame("q", '"\u00e9"'.encode())
    assert data == b'+6 q "\xc3\xa9"'


def test_parse_whole_stream():
    """Several frames in one read come out in order."""
    assert parse_all([STREAM]) == FRAMES


def test_parse_one_byte_at_a_time():
    """A frame split across many reads is reassembled."""
    assert parse_all([STREAM[i : i + 1] for i in range(len(STREAM))]) == FRAMES


def test_trailing_partial_frame_waits():
    """Bytes of an incomplete frame stay buffered and mark the parser mid-frame."""
    parser = FrameParser()
    parser.receive_data(STREAM + b"+10 abc")
    assert parser.events() == FRAMES
    assert parser.mid_frame and parser.buffered == len(b"+10 abc")


def test_2015_frame_is_parsed():
    """A frame exactly as the 2015 broker wrote it parses."""
    raw = b'+45 6f1d2c3a-0000-4000-8000-000000000000 {"a": 1}'
    (frame,) = parse_all([raw])
    assert frame == Frame("6f1d2c3a-0000-4000-8000-000000000000", b'{"a": 1}')


@pytest.mark.parametrize("raw", [b"garbage", b"-5 q {}", b"+x5 q {}", b"+12345678901234567890123 q"])
def test_malformed_header_is_fatal(raw: bytes):
    """A header that is not '+<digits> ' fails the parser and it ignores what follows."""
    parser = FrameParser()
    parser.receive_data(raw)
    parser.receive_data(encode_frame("q", b"{}"))
    events = parser.events()
    assert len(events) == 1 and isinstance(events[0], FrameHeaderError) and events[0].fatal
    assert parser.failed


def test_oversized_frame_is_skipped_without_buffering():
    """A frame over the limit is an error carrying size and limit; its bytes are dropped and the next frame parses."""
    parser = FrameParser(max_frame_size=100)
    big = encode_frame("q", b'"' + b"x" * 1000 + b'"')
    parser.receive_data(big[:50])
    assert parser.buffered == 0
    for i in range(50, len(big), 100):
        parser.receive_data(big[i : i + 100])
        assert parser.buffered == 0
    parser.receive_data(encode_frame("q", b"{}"))
    error, frame = parser.events()
    assert isinstance(error, FrameTooLarge) and error.size == 1004 and error.limit == 100 and not error.fatal
    assert frame == Frame("q", b"{}")


def test_payload_without_queue_is_an_error_for_that_frame_only():
    """'+N <json>' with no queue name fails that frame, not the stream."""
    events = parse_all([b"+2 {}" + encode_frame("q", b"{}")])
    assert isinstance(events[0], FrameBodyError) and not events[0].fatal
    assert events[1] == Frame("q", b"{}")


def test_invalid_utf8_queue_name():
    """A queue name that is not UTF-8 is a frame error."""
    (event,) = parse_all([b"+5 \xff\xfe {}"])
    assert isinstance(event, FrameBodyError)


@pytest.mark.parametrize("name", ["", "a b", "tab\there", "x" * 201, 5, None])
def test_bad_queue_names(name: object):
    """Empty names, whitespace, overlong names and non-strings are refused."""
    with pytest.raises(InvalidQueueName):
        validate_queue_name(name)


def test_good_queue_name():
    """Ordinary names, including non-ASCII ones, pass unchanged."""
    assert validate_queue_name("chat.room-1/\u00e9") == "chat.room-1/\u00e9"


def test_json_codec_round_trip_and_errors():
    """The default codec round-trips values and turns bad JSON into MessageError."""
    codec = JSONCodec()
    value = {"a": [1, "two", None, 3.5], "b": {"c": True}}
    assert codec.loads(codec.dumps(value)) == value
    with pytest.raises(MessageError):
        codec.loads(b"{nope")
    with pytest.raises(MessageError):
        codec.loads(b"\xff")


@pytest.mark.parametrize("stdlib", [False, True])
def test_default_codec_takes_utf8_json_only(stdlib: bool, monkeypatch):
    """orjson and the stdlib fallback alike refuse JSON in UTF-16 or UTF-32 (the broker splices bytes into it)."""
    if stdlib:
        monkeypatch.setattr(codec_module, "orjson", None)
    codec = JSONCodec()
    assert codec.strict
    assert codec.loads('{"a": "\u00e9"}'.encode()) == {"a": "\u00e9"}
    for encoding in ("utf-16-be", "utf-16-le", "utf-32"):
        with pytest.raises(MessageError):
            codec.loads('{"a": 1}'.encode(encoding))
    assert not JSONCodec(decoder=json.JSONDecoder).strict


def test_a_broken_header_fails_before_its_space_arrives():
    """'+1x' cannot become a header whatever follows: the parser fails at once instead of waiting."""
    parser = FrameParser()
    parser.receive_data(b"+1")
    assert parser.events() == [] and not parser.failed
    parser.receive_data(b"x")
    (error,) = parser.events()
    assert isinstance(error, FrameHeaderError) and error.fatal


def test_json_codec_with_django_encoder():
    """An encoder class such as DjangoJSONEncoder sends datetimes, Decimals and UUIDs."""
    from django.core.serializers.json import DjangoJSONEncoder

    codec = JSONCodec(encoder=DjangoJSONEncoder)
    when = datetime.datetime(2026, 11, 27, 10, 0, 0)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    decoded = json.loads(codec.dumps({"when": when, "price": decimal.Decimal("1.50"), "id": ident}))
    assert decoded == {"when": "2026-11-27T10:00:00", "price": "1.50", "id": str(ident)}


def test_json_codec_with_callables():
    """Callables work as encoder and decoder; str output is encoded to bytes."""
    codec = JSONCodec(encoder=lambda v: json.dumps(v, sort_keys=True), decoder=lambda b: json.loads(b)["v"])
    assert codec.dumps({"v": 1}) == b'{"v": 1}'
    assert codec.loads(b'{"v": 7}') == 7


frames_strategy = st.lists(
    st.builds(
        Frame,
        st.text(st.characters(blacklist_categories=("Zs", "Cc", "Zl", "Zp", "Cs")), min_size=1, max_size=30).filter(
            lambda s: not any(c.isspace() for c in s)
        ),
        st.binary(max_size=300),
    ),
    max_size=20,
)


@settings(max_examples=300, deadline=None)
@given(frames_strategy, st.data())
def test_property_any_split_gives_the_same_frames(frames: list[Frame], data: st.DataObject):
    """However a valid stream is split into reads, the same frames come out."""
    stream = b"".join(encode_frame(f.queue, f.body) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
    assert parse_all(chunks) == frames


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000), st.data())
def test_property_random_bytes_never_raise(junk: bytes, data: st.DataObject):
    """Random bytes split at random points never raise; they give frames and errors, and no frame is over the limit."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(junk)), max_size=10)))
    chunks = [junk[a:b] for a, b in zip([0, *cuts], [*cuts, len(junk)])]
    whole = parse_all([junk], max_frame_size=64)
    split = parse_all(chunks, max_frame_size=64)
    def shape(events: list[object]) -> list[object]:
        return [e if isinstance(e, tuple) else type(e) for e in events]

    assert shape(whole) == shape(split)
    for event in split:
        assert isinstance(event, (tuple, ProtocolError))
        if isinstance(event, tuple):
            queue, body = event
            assert len(queue.encode()) + 1 + len(body) <= 64
