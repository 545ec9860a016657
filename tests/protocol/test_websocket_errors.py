"""The browser protocol's errors against a real run_coremq: a code on every one, the action when understood."""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest
from hypothesis import given, strategies as st
from websockets.sync.client import connect

from coremq_broker.transports.websocket.protocol import ACTIONS, BadRequest, message_entry, parse_request
from coremq_client.error_codes import UNKNOWN_ERROR, error_code
from coremq_client.protocol import unwrap
from wire import RawClient

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def browser(ports: tuple[int, int]) -> Iterator[Any]:
    """A real WebSocket client of run_coremq's /ws/coremq/, its welcome read."""
    web = ports[1]
    with connect(f"ws://127.0.0.1:{web}/ws/coremq/", origin=f"http://127.0.0.1:{web}",  # type: ignore[arg-type]
                 open_timeout=30) as socket:
        assert json.loads(socket.recv(timeout=10))["type"] == "welcome"
        yield socket


def ask(socket: Any, frame: Any) -> dict:
    socket.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))
    return json.loads(socket.recv(timeout=10))


# (frame, code, action): action None means the frame's error has no action.
BAD_FRAMES = [
    ("not json", "invalid_json", None),
    (b'{"action": "subscribe"}', "invalid_json", None),
    ("[1]", "bad_request", None),
    ('{"queues": ["a"], "ref": 1}', "unknown_request", None),
    ('{"action": "fly", "ref": 1}', "unknown_request", None),
    ('{"action": "subscribe", "queues": [], "ref": 1}', "bad_request", "subscribe"),
    ('{"action": "unsubscribe", "queues": ["a b"], "ref": 1}', "bad_queue_name", "unsubscribe"),
    ('{"action": "subscribe", "queues": ["a"], "ref": [1]}', "bad_request", "subscribe"),
    ('{"action": "publish", "queue": "q", "message": 42, "ref": 1}', "bad_message", "publish"),
    ('{"action": "publish", "queue": "q", "message": null, "ref": 1}', "bad_message", "publish"),
    ('{"action": "publish", "queue": "q", "ref": 1}', "bad_message", "publish"),
    ('{"action": "publish", "queue": "", "message": {}, "ref": 1}', "bad_queue_name", "publish"),
    ('{"action": "publish", "message": {}, "ref": 1}', "bad_queue_name", "publish"),
    ('{"action": "subscribe", "queues": [null], "ref": 1}', "bad_queue_name", "subscribe"),
    ('{"action": "publish", "queue": "' + "q" * 201 + '", "message": {}, "ref": 1}', "bad_queue_name", "publish"),
    ('{"action": "history", "queues": ["q"], "since": {"q": "a"}, "ref": 1}', "bad_request", "history"),
    ('{"action": "history", "queues": ["q"], "since": [1], "ref": 1}', "bad_request", "history"),
    ('{"action": "history", "queues": ["q"], "limit": 0, "ref": 1}', "bad_request", "history"),
    ('{"action": "history", "ref": 1}', "bad_request", "history"),
    ('{"action": "auth", "ref": 1}', "bad_request", "auth"),
    ('{"action": "auth", "token": "cmq_wrong", "ref": 1}', "auth_failed", "auth"),
    ('{"action": "publish", "queue": "q", "message": "' + "x" * 70000 + '", "ref": 1}', "message_too_large", None),
    ('{"action": "publish", "queue": "q", "message": ' + "[" * 130 + "]" * 130 + ', "ref": 1}', "too_deep", None),
]


@pytest.mark.parametrize("frame, code, action", BAD_FRAMES, ids=range(len(BAD_FRAMES)))
def test_error_frames_carry_code_and_action(browser: Any, frame: Any, code: str, action: str | None) -> None:
    """Every error frame has its table code; an understood request's error also has its action."""
    answer = ask(browser, frame)
    assert answer["type"] == "error" and answer["code"] == code, answer
    assert answer.get("action") == action, answer
    assert ("action" in answer) == (action is not None)


def test_unknown_action_lists_every_action(browser: Any) -> None:
    """The unknown-action error names every action a browser may ask for, auth included."""
    answer = ask(browser, {"action": "fly", "ref": "r"})
    assert answer["error"] == "unknown action 'fly': use subscribe, unsubscribe, publish, history or auth"
    assert all(action in answer["error"] for action in ACTIONS) and answer["ref"] == "r"


def test_refusals_by_the_broker_carry_code_and_action(browser: Any, ports: tuple[int, int]) -> None:
    """A request the broker refuses (another connection's private queue) has permission_denied and its action."""
    other = RawClient("127.0.0.1", ports[0])
    try:
        answer = ask(browser, {"action": "subscribe", "queues": [other.id], "ref": 7})
        assert answer["code"] == "permission_denied" and answer["action"] == "subscribe" and answer["ref"] == 7
        answer = ask(browser, {"action": "history", "queues": [other.id], "ref": 8})
        assert answer["code"] == "permission_denied" and answer["action"] == "history"
    finally:
        other.close()


def test_browsers_get_a_wrapper_beside_another_key_as_an_object(browser: Any, ports: tuple[int, int]) -> None:
    """{"coremq_string": "s", "extra": 1} from a TCP client reaches a browser as that object; "s" alone as "s"."""
    assert ask(browser, {"action": "subscribe", "queues": ["wrapping"], "ref": 1})["type"] == "subscribed"
    publisher = RawClient("127.0.0.1", ports[0])
    try:
        publisher.send("wrapping", {"coremq_string": "s", "extra": 1})
        publisher.send("wrapping", {"coremq_string": "s"})
        publisher.send("wrapping", {"coremq_array": [1], "coremq_string": "s"})
        received = [json.loads(browser.recv(timeout=10))["message"] for _ in range(3)]
    finally:
        publisher.close()
    assert received == [{"coremq_string": "s", "extra": 1}, "s", {"coremq_array": [1], "coremq_string": "s"}]


def test_unwrap_undoes_a_wrapper_only_alone_beside_the_stamps() -> None:
    """The one unwrapping rule, for TCP clients and the bridge alike."""
    stamps = {"coremq_sender": "c", "coremq_sent": 1.5, "coremq_server": "h:1", "coremq_id": 3}
    assert unwrap({"coremq_string": "s", **stamps}) == "s"
    assert unwrap({"coremq_array": [1], **stamps}) == [1]
    for kept in ({"coremq_string": "s", "extra": 1}, {"coremq_string": 5}, {"coremq_array": "x"},
                 {"coremq_array": [1], "coremq_string": "s"}):
        assert unwrap({**kept, **stamps}) == {**kept, **stamps}
        assert message_entry({**kept, **stamps})["message"] == kept


@given(st.dictionaries(st.sampled_from(["action", "queues", "queue", "message", "since", "ref", "limit", "token"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5),
                                 st.sampled_from(list(ACTIONS) + ["fly"]),
                                 st.lists(st.text(max_size=5), max_size=3),
                                 st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))))
def test_every_bad_request_has_a_code(value: dict) -> None:
    """Whatever a browser sends, a BadRequest's text has a code in the table (never the unknown one)."""
    result = parse_request(json.dumps(value))
    if isinstance(result, BadRequest):
        assert error_code(result.error) != UNKNOWN_ERROR, result.error
        assert result.action in (None, *ACTIONS)


def test_coremq_js_rejects_with_the_code(ports: tuple[int, int], tmp_path: Any) -> None:
    """In Chromium, coremq.js rejects a refused publish with a CoreMQError whose code is the frame's."""
    from playwright.sync_api import sync_playwright

    web = ports[1]
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = chromium.new_page()
            page.goto(f"http://127.0.0.1:{web}/static/coremq/coremq.js")  # the site's origin, for the socket
            page.set_content("<!doctype html><title>codes</title>")
            page.add_script_tag(url=f"http://127.0.0.1:{web}/static/coremq/coremq.js")
            outcome = page.evaluate("""async () => {
                const mq = new CoreMQ("ws://127.0.0.1:%d/ws/coremq/");
                try { await mq.publish("q", 42); return null; }
                catch (error) { return [error.name, error.code, error.frame.action, error.message]; }
                finally { mq.close(); }
            }""" % web)
        finally:
            chromium.close()
    assert outcome == ["CoreMQError", "bad_message", "publish",
                       "a message must be a JSON object, array or string, not a number"]
