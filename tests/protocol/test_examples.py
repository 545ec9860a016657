"""The protocol docs against a real run_coremq: every example frame, the status keys, the error table."""

from __future__ import annotations

import json
import re
import socket

import pytest

from coremq_client.error_codes import ERROR_CODES, UNKNOWN_ERROR, error_code
from examples import PROTOCOL_DOC, WEBSOCKET_DOC, Example, examples, play_tcp, play_websocket, same_ws
from wire import RawClient

TCP_EXAMPLES = [example for example in examples(PROTOCOL_DOC) if example.kind == "coremq-session"]
WS_EXAMPLES = [example for example in examples(WEBSOCKET_DOC) if example.kind == "coremq-websocket"]


def _label(example: Example) -> str:
    return f"line{example.start}"


def test_the_docs_have_examples() -> None:
    """The welcome, "A session", the header rules and the browser session are marked examples."""
    assert len(TCP_EXAMPLES) >= 5 and len(WS_EXAMPLES) >= 1
    welcome = TCP_EXAMPLES[0].lines[0]
    assert welcome.role == "S" and welcome.text.startswith("+205 ")


@pytest.mark.parametrize("example", TCP_EXAMPLES, ids=_label)
def test_tcp_example_is_what_the_broker_sends(example: Example, ports: tuple[int, int]) -> None:
    """Each S: line of docs/protocol.md is the broker's frame byte for byte, its length included."""
    played = play_tcp(example, ports[0])
    assert len(played) == sum(1 for line in example.lines if line.role == "S")
    for line, actual in played:
        assert line.text == actual, f"docs/protocol.md:{line.number}"


@pytest.mark.parametrize("example", WS_EXAMPLES, ids=_label)
def test_websocket_example_is_what_the_server_sends(example: Example, ports: tuple[int, int]) -> None:
    """Each W: line of docs/websocket.md is the frame a real WebSocket client receives, members in order."""
    for line, actual in play_websocket(example, ports[1]):
        assert same_ws(line.text, actual), f"docs/websocket.md:{line.number}: the server sent {actual}"


def test_every_documented_error_has_its_code() -> None:
    """Each error in the examples has a code in the table, and a browser's error frame carries that code."""
    errors = 0
    for example in TCP_EXAMPLES:
        for line in example.lines:
            if line.role == "S" and '"response":"ERROR: ' in line.text:
                reason = json.loads(line.text.split(" ", 2)[2])["response"][len("ERROR: "):]
                assert error_code(reason) != UNKNOWN_ERROR, line.text
                errors += 1
    for example in WS_EXAMPLES:
        for line in example.lines:
            frame = json.loads(line.text)
            if line.role == "W" and frame.get("type") == "error":
                assert frame["code"] == error_code(frame["error"]) != UNKNOWN_ERROR, line.text
                errors += 1
    assert errors >= 6


def _table(doc: str, marker: str) -> list[list[str]]:
    """The rows of the table between ``<!-- marker -->`` and ``<!-- /marker -->``, as cells."""
    text = doc.split(f"<!-- {marker} -->", 1)[1].split(f"<!-- /{marker} -->", 1)[0]
    rows = [re.split(r"(?<!\\)\|", line.strip())[1:-1] for line in text.strip().splitlines()]
    return [[cell.strip() for cell in row] for row in rows[2:]]  # the heading and its rule left out


def test_error_table_is_the_code_table() -> None:
    """docs/protocol.md's error table lists the codes of coremq_client.error_codes, in order, and its texts map to them."""
    rows = _table(PROTOCOL_DOC.read_text(), "error-codes")
    assert [row[0].strip("`") for row in rows] == [code for code, _ in ERROR_CODES]
    for row in rows:
        code = row[0].strip("`")
        for text in re.findall(r"`([^`]+)`", row[1]):
            sample = re.sub(r"<[^>]*>", "1", text)  # a value where the pattern has a placeholder
            assert error_code(sample) == code, (text, error_code(sample))


def test_status_keys_are_documented(ports: tuple[int, int]) -> None:
    """The status reply's keys, and those of its lists, are the ones docs/protocol.md names, in that order."""
    rows = _table(PROTOCOL_DOC.read_text(), "status-keys")
    documented = [row[0].strip("`") for row in rows]
    client = RawClient("127.0.0.1", ports[0])
    try:
        client.send("status-queue", {"a": 1})
        client.read()
        reply = client.control({"coremq_status": {"connections": True, "queues": True, "series": True}})
    finally:
        client.close()
    assert list(reply) == documented
    cells = {row[0].strip("`"): row[1] for row in rows}
    for key in ("connection_list", "queue_list"):
        named = re.findall(r"`(\w+)`", cells[key].split(":", 1)[1])
        assert list(reply[key][0]) == named, key
    assert set(reply["durable"]) <= {"state", "path", "error"}


def _exchange(port: int, data: bytes, frames: int) -> list[dict | str]:
    """Send ``data`` on a new connection; the replies' objects, and "closed" if the broker closed."""
    client = RawClient("127.0.0.1", port)
    client.send_raw(data)
    out: list[dict | str] = []
    try:
        for _ in range(frames):
            out.append(client.read()[1])
        client.sock.settimeout(0.5)
        try:
            if client.sock.recv(1) == b"":
                out.append("closed")
        except socket.timeout:
            pass
    except ConnectionError:
        out.append("closed")
    finally:
        client.close()
    return out


def test_header_of_twenty_digits_is_read_and_of_twenty_one_is_not(ports: tuple[int, int]) -> None:
    """A header is at most 22 bytes: 20 digits (leading zeros allowed) are a length, 21 are a broken header."""
    twenty = _exchange(ports[0], b"+%020d q20 {}" % 6, 1)
    assert twenty[0]["response"] == "OK: Message sent" and len(twenty) == 1
    twenty_one = _exchange(ports[0], b"+%021d q21 {}" % 6, 1)
    assert twenty_one[0]["response"] == "ERROR: frame length is not followed by a space"
    assert error_code(twenty_one[0]["response"][7:]) == "bad_header" and twenty_one[1:] == ["closed"]


def test_oversized_frame_is_skipped_and_the_connection_goes_on(ports: tuple[int, int]) -> None:
    """N over max_frame_size is answered frame_too_large (request, no queue); its bytes are skipped."""
    limit = 1048576
    body = b"big " + b"x" * (limit - 3)
    replies = _exchange(ports[0], b"+%d %s+13 after {\"a\":1}" % (len(body), body), 2)
    assert replies[0] == {"response": f"ERROR: frame too large: {len(body)} bytes, limit is {limit}",
                          "code": "frame_too_large", "request": 1}
    assert replies[1]["response"] == "OK: Message sent" and replies[1]["request"] == 2


def test_every_request_error_carries_the_frames_queue(ports: tuple[int, int]) -> None:
    """Errors answering a frame whose queue was read name that queue: a public one, or the own id."""
    client = RawClient("127.0.0.1", ports[0])
    try:
        for queue, body in (("q", b"true"), ("bad\tname", b"{}"), (client.id, b'{"coremq_subscribe":5}'),
                            (client.id, b'{"coremq_options":{"echo":1}}'), ("q", b'{"a":1')):
            client.send_raw(b"+%d %s %s" % (len(queue.encode()) + 1 + len(body), queue.encode(), body))
            reply = client.read()[1]
            assert reply["response"].startswith("ERROR: ") and reply["queue"] == queue, reply
            assert error_code(reply["response"][7:]) != UNKNOWN_ERROR
    finally:
        client.close()


def test_login_answers_carry_request_but_no_queue(ports: tuple[int, int]) -> None:
    """As documented under Errors: a refused login is auth_failed with its request number and no queue."""
    client = RawClient("127.0.0.1", ports[0])
    try:
        reply = client.control({"coremq_auth": {"token": "cmq_wrong"}})
    finally:
        client.close()
    assert reply == {"response": "ERROR: authentication failed", "code": "auth_failed", "request": 1}
    assert error_code(reply["response"][len("ERROR: "):]) == "auth_failed"
