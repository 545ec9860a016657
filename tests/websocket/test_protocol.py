"""The browser protocol without I/O: every frame becomes a request or a BadRequest, and never raises."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coremq_broker.transports.websocket.protocol import (
    BadRequest,
    History,
    Publish,
    Subscribe,
    Unsubscribe,
    message_entry,
    message_frame,
    parse_request,
)


def parse(value: object, **limits: int) -> object:
    return parse_request(json.dumps(value), **limits)


def test_subscribe_and_unsubscribe() -> None:
    """subscribe/unsubscribe take a list of queue names (duplicates dropped) and keep the ref."""
    assert parse({"action": "subscribe", "queues": ["a", "b", "a"], "ref": 7}) == Subscribe(("a", "b"), 7)
    assert parse({"action": "unsubscribe", "queues": ["a"]}) == Unsubscribe(("a",), None)


def test_a_bare_name_is_one_queue() -> None:
    """A string where a list is expected names one queue, even with a comma in it."""
    assert parse({"action": "subscribe", "queues": "a,b"}) == Subscribe(("a,b",))


def test_publish_takes_objects_arrays_and_strings() -> None:
    """publish accepts what the broker accepts: an object, an array or a string."""
    for message in ({"x": 1}, [1, 2], "text"):
        assert parse({"action": "publish", "queue": "q", "message": message, "ref": "r"}) == Publish("q", message, "r")


@pytest.mark.parametrize("message", [1, 2.5, True, None])
def test_publish_refuses_other_values(message: object) -> None:
    """Numbers, booleans and null are refused with the request's ref."""
    result = parse({"action": "publish", "queue": "q", "message": message, "ref": 3})
    assert isinstance(result, BadRequest) and result.ref == 3 and "object, array or string" in result.error


def test_history_since() -> None:
    """history takes queues and a since map; a queue without a since gets its whole history."""
    result = parse({"action": "history", "queues": ["a", "b"], "since": {"a": 4}})
    assert result == History({"a": 4, "b": None})
    assert parse({"action": "history", "since": {"c": None}}) == History({"c": None})


@pytest.mark.parametrize("since", [{"a": "4"}, {"a": True}, {"a": 1.5}, ["a"]])
def test_history_refuses_bad_since(since: object) -> None:
    """A since that is not an object of integers (or nulls) is a BadRequest."""
    assert isinstance(parse({"action": "history", "queues": ["a"], "since": since}), BadRequest)


@pytest.mark.parametrize("frame, error", [
    ("not json", "invalid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"queues": ["a"]}', "must have an 'action'"),
    ('{"action": "dance"}', "unknown action 'dance'"),
    ('{"action": "subscribe", "queues": []}', "non-empty list"),
    ('{"action": "subscribe", "queues": ["has space"]}', "whitespace"),
    ('{"action": "subscribe", "queues": [""]}', "empty"),
    ('{"action": "publish", "queue": "q"}', "needs a 'message'"),
    ('{"action": "history"}', "needs 'queues' or 'since'"),
    ('{"action": "subscribe", "queues": ["a"], "ref": {"x": 1}}', "ref must be"),
])
def test_bad_frames_are_explained(frame: str, error: str) -> None:
    """Each kind of bad frame gets a BadRequest whose text says what is wrong."""
    result = parse_request(frame)
    assert isinstance(result, BadRequest) and error in result.error


def test_binary_frames_are_refused() -> None:
    """A binary frame is a BadRequest, not an exception."""
    assert parse_request(b'{"action": "subscribe"}') == BadRequest("binary frames are not supported: send JSON text")


def test_size_limit_counts_utf8_bytes() -> None:
    """The size limit is in UTF-8 bytes, and the error names the size and the limit."""
    ascii_frame = json.dumps({"action": "publish", "queue": "q", "message": "x" * 80})
    assert isinstance(parse_request(ascii_frame, max_size=len(ascii_frame)), Publish)
    wide = json.dumps({"action": "publish", "queue": "q", "message": "é" * 40}, ensure_ascii=False)
    result = parse_request(wide, max_size=len(wide))  # 40 more bytes than characters
    assert result == BadRequest(f"message too large: {len(wide.encode())} bytes, limit is {len(wide)}")


def test_queue_name_length_limit() -> None:
    """Queue names longer than the broker's limit are refused before they reach it."""
    result = parse({"action": "subscribe", "queues": ["q" * 11]}, max_queue_name_length=10)
    assert isinstance(result, BadRequest) and "limit is 10" in result.error


@given(st.text(max_size=200))
def test_never_raises_on_any_text(text: str) -> None:
    """Whatever text arrives, parsing returns a request or a BadRequest."""
    assert isinstance(parse_request(text), (Subscribe, Unsubscribe, Publish, History, BadRequest))


@given(st.dictionaries(st.sampled_from(["action", "queues", "queue", "message", "since", "ref"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5),
                                 st.lists(st.text(max_size=5), max_size=3),
                                 st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))))
def test_never_raises_on_any_object(value: dict) -> None:
    """Whatever object arrives, with any mix of fields, parsing returns a request or a BadRequest."""
    assert isinstance(parse(value), (Subscribe, Unsubscribe, Publish, History, BadRequest))


def test_message_frames_show_what_was_published() -> None:
    """Browsers get strings and arrays unwrapped, objects without stamps, and id/sender/sent beside them."""
    stamps = {"coremq_sender": "c/1", "coremq_sent": 1.5, "coremq_server": "h:1", "coremq_id": 9}
    assert message_frame("q", {"coremq_string": "hi", **stamps}) == {
        "type": "message", "queue": "q", "id": 9, "message": "hi", "sender": "c/1", "sent": 1.5}
    assert message_entry({"coremq_array": [1], **stamps})["message"] == [1]
    assert message_entry({"text": "x", **stamps})["message"] == {"text": "x"}
