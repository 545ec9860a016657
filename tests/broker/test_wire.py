"""core/wire.py without sockets: every frame the broker formats parses back, and the one-message way agrees with the run."""

from __future__ import annotations

import json

import pytest

from coremq_broker.core.wire import ID_STAMP, Wire, payloads, split_frames, split_stored, stamped
from coremq_client.codec import FrameParser, JSONCodec
from hostile import CORPUS

WIRE = Wire(JSONCodec().dumps, "127.0.0.1:6000")
OBJECTS = [case.body for case in CORPUS if case.accepted and case.body.rstrip().endswith(b"}")
           and case.body[-1:] == b"}" and json.loads(case.body) and isinstance(json.loads(case.body), dict)]


def parse(blob: bytes) -> list[tuple[str, bytes]]:
    parser = FrameParser(max_frame_size=2**40)
    parser.receive_data(blob)
    events = parser.events()
    assert parser.clean and not parser.mid_frame
    return [tuple(event) for event in events]  # type: ignore[misc]


def test_the_corpus_has_objects_to_format():
    """The hostile corpus gives this test many accepted JSON objects to stamp."""
    assert len(OBJECTS) >= 5


@pytest.mark.parametrize("first_id", [1, 9, 99, 12345, 10**15 - 1])
def test_one_message_and_a_run_format_the_same_bytes(first_id: int):
    """For every accepted object of the hostile corpus, a batch of one gives the bytes the general run gives."""
    stamps = WIRE.stamps("b0f6d2f4-0c5f-4f1c-9a3b-2d4f2b1c0a9e/3", 1234.5)
    for body in OBJECTS:
        one = WIRE.deliveries(b"q.%d", [body], stamps, first_id)
        assert one == WIRE._delivery_run(b"q.%d", [body], stamps, first_id)
        ((queue, payload),) = parse(one)
        assert queue == "q.%d" and json.loads(payload)["coremq_id"] == first_id
        assert payload == stamped(body, stamps, first_id)
    acks = WIRE.acknowledgements(b"c%s", first_id, 1, first_id + 7)
    assert acks == WIRE._acknowledgement_run(b"c%s", first_id, 1, first_id + 7)


def test_a_run_across_powers_of_ten_parses_frame_by_frame():
    """Sizes are tracked as ids and request numbers gain digits: every frame of a run parses, ids in order."""
    stamps = WIRE.connection_stamps(b"c1", 1.25)
    bodies = [b'{"n":%d}' % n for n in range(30)]
    blob = WIRE.deliveries(b"runs", bodies, stamps, 95)
    frames = parse(blob)
    assert [json.loads(body)["coremq_id"] for _, body in frames] == list(range(95, 125))
    assert [body for _, body in frames] == payloads(blob)
    assert [blob[start:end] for start, end in split_frames(blob)] == [
        b"+%d %s %s" % (len(b"runs ") + len(body), b"runs", body) for _, body in frames]
    acks = parse(WIRE.acknowledgements(b"c1", 95, 30, 990))
    assert [(json.loads(body)["id"], json.loads(body)["request"]) for _, body in acks] == [
        (95 + n, 990 + n) for n in range(30)]


def test_answers_errors_and_the_drop_notice():
    """Answers go on the connection's id queue; errors answer a request when given; the notice names ids."""
    ((queue, body),) = parse(WIRE.error("c1", "bad", 4, queue="x"))
    assert queue == "c1" and json.loads(body) == {"response": "ERROR: bad", "code": "error", "queue": "x", "request": 4}
    ((_, body),) = parse(WIRE.drop_notice("c1", {"q": (3, 9)}))
    assert json.loads(body)["dropped"] == {"q": {"first": 3, "last": 9}}


def test_a_stored_row_splits_back_into_its_body():
    """A durable row (the stamped JSON) gives back the body that stamps the same; an older row is re-ordered."""
    stamps = WIRE.stamps("server", 2.0)
    body = b'{"a":[1,2],"b":"}"}'
    row = stamped(body, stamps, 41)
    assert stamped(split_stored(row, 41), ID_STAMP, 41) == row
    old = b'{"coremq_id":7,"a":1}'
    assert json.loads(stamped(split_stored(old, 7), ID_STAMP, 7)) == {"a": 1, "coremq_id": 7}
