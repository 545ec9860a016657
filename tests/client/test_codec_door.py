"""The codec's part of the door, with no event loop: nesting counted on the bytes, the same answers from
orjson and the stdlib, queue names, and frames split at every byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coremq_client import codec
from coremq_client.codec import (
    MAX_NESTING,
    FrameParser,
    JSONCodec,
    check_nesting,
    encode_frame,
    nesting_depth,
    split_address,
    validate_queue_name,
)
from coremq_client.errors import InvalidQueueName, MessageError, ProtocolError
from hostile import CORPUS, NAMES, nested_array, nested_object

TESTS = Path(__file__).resolve().parents[1]

# What the decoder takes: what the broker accepts, and the values of the wrong type that it refuses after decoding.
LOADABLE = [case for case in CORPUS if case.accepted or case.reason.startswith("not ")]


@pytest.mark.parametrize("body,depth", [
    (b"1", 0), (b'"[[[{{{"', 0), (b"{}", 1), (b"[{}]", 2), (b'{"a":[1,{"b":"]]]}}}"}]}', 3),
    (b'["\\"[[", "\\\\", [[]]]', 3), (b'["\\\\\\"]]]"]', 1), (nested_array(1025), 1025), (nested_object(300), 300),
    (b"[" * 40, 40), (b"", 0), (b"]]]", 0),
])
def test_nesting_depth_counts_brackets_outside_strings(body: bytes, depth: int) -> None:
    """Brackets inside strings, escaped quotes included, do not count; unbalanced text gives a number, no error."""
    assert nesting_depth(body) == depth


@pytest.mark.parametrize("case", [case for case in CORPUS if "nested" in case.label or "brackets" in case.label
                                  or "unbalanced" in case.label or "wide" in case.label], ids=repr)
def test_check_nesting_refuses_exactly_what_is_too_deep(case) -> None:
    """A frame nesting MAX_NESTING levels passes; one more is refused with a reason naming the depth and the limit."""
    if case.depth <= MAX_NESTING:
        check_nesting(case.body)
    else:
        with pytest.raises(MessageError, match=f"JSON nested {case.depth} levels deep, limit is {MAX_NESTING}"):
            check_nesting(case.body)


def door_answers() -> list[list]:
    """For each corpus case: [taken?, the decoded value re-encoded] through check_nesting and the default codec."""
    json_codec = JSONCodec()
    answers = []
    for case in CORPUS:
        try:
            check_nesting(case.body)
            value = json_codec.loads(case.body)
        except MessageError:
            answers.append([False, None])
            continue
        answers.append([True, json.dumps(value, sort_keys=True)])
    return answers


def test_the_door_takes_what_the_broker_accepts() -> None:
    """check_nesting and the codec's decoder take every accepted case and refuse every invalid one."""
    taken = [answer[0] for answer in door_answers()]
    assert taken == [case in LOADABLE for case in CORPUS]


def test_orjson_and_the_stdlib_answer_alike() -> None:
    """The stdlib fallback (COREMQ_PURE_PYTHON=1) refuses and takes the same cases as orjson, with the same values."""
    here = door_answers()
    other = "0" if codec.PURE_PYTHON else "1"
    env = {**os.environ, "COREMQ_PURE_PYTHON": other,
           "PYTHONPATH": os.pathsep.join([str(TESTS / "client"), str(TESTS), str(TESTS.parent)])}
    done = subprocess.run([sys.executable, "-c", "import json, test_codec_door as t; print(json.dumps(t.door_answers()))"],
                          env=env, capture_output=True, text=True, timeout=60, cwd=TESTS.parent)
    assert done.returncode == 0, done.stderr
    there = json.loads(done.stdout)
    differing = [(case.label, a, b) for case, a, b in zip(CORPUS, here, there) if a != b]
    assert differing == []


def test_the_stdlib_decoder_is_strict() -> None:
    """The stdlib back-end refuses NaN, numbers beyond a double and lone surrogates, and makes big integers doubles."""
    loads = codec._stdlib_loads
    for text in (b"[NaN]", b"[Infinity]", b"[-Infinity]", b"[1e400]", b'["\\ud800"]', b'["\\udc00"]', b"[" + b"9" * 400 + b"]"):
        with pytest.raises(ValueError):
            loads(text)
    assert loads(b"[18446744073709551616, 18446744073709551615, -9223372036854775809]") == [
        18446744073709551616.0, 18446744073709551615, -9223372036854775809.0]
    assert loads(b'["\\ud83d\\ude00", "\\\\ud800"]') == ["\U0001f600", "\\ud800"]


@pytest.mark.parametrize("case", [case for case in NAMES if "{own}" not in case.name and "id" not in case.label],
                         ids=repr)
def test_queue_names(case) -> None:
    """Whitespace, control characters and more than 200 characters are refused; Unicode digits and look-alikes are names."""
    if case.accepted:
        assert validate_queue_name(case.name) == case.name
    else:
        with pytest.raises(InvalidQueueName, match=case.reason):
            validate_queue_name(case.name)


def test_a_lone_surrogate_is_no_queue_name() -> None:
    """A name holding a surrogate (JSON over the WebSocket can carry one) is refused: it has no UTF-8 form."""
    with pytest.raises(InvalidQueueName, match="surrogate"):
        validate_queue_name("q\ud800")


def test_split_address() -> None:
    """A sub-address is split at its first slash; other names are not sub-addresses."""
    assert split_address("abc") == ("abc", None)
    assert split_address("abc/") == ("abc", "")
    assert split_address("abc/1/2") == ("abc", "1/2")


def corpus_stream() -> tuple[bytes, list[tuple[str, bytes]]]:
    frames = [("q", case.body) for case in CORPUS] + [("n" * 200, b"{}"), ("é" * 200, b"[]")]
    return b"".join(encode_frame(name, body) for name, body in frames), frames


def parse(chunks: list[bytes]) -> list:
    parser = FrameParser(max_frame_size=2**20)
    events = []
    for chunk in chunks:
        parser.receive_data(chunk)
        events.extend(parser.events())
    assert not parser.failed and not parser.mid_frame
    return events


def test_the_corpus_split_at_every_byte() -> None:
    """The whole corpus as frames parses the same whole, one byte at a time, and cut in two at every offset of a frame."""
    stream, frames = corpus_stream()
    assert parse([stream]) == frames
    assert parse([stream[i:i + 1] for i in range(len(stream))]) == frames
    one = encode_frame("q", CORPUS[-5].body) + encode_frame("é" * 3, b'{"s":"\xe2\x82\xac"}')
    for cut in range(1, len(one)):
        assert parse([one[:cut], one[cut:]]) == parse([one])


def test_a_name_that_is_not_utf8_costs_one_frame() -> None:
    """A frame whose queue name is not UTF-8 is an error for that frame only; the next frame parses."""
    parser = FrameParser()
    parser.receive_data(b"+5 \xff\xfe {}" + encode_frame("q", b"{}"))
    events = parser.events()
    assert isinstance(events[0], ProtocolError) and events[1] == ("q", b"{}") and not parser.failed
