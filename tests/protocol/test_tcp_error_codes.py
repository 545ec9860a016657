"""TCP errors carry their stable ``code`` beside the text, and the Python clients expose it."""

from __future__ import annotations

import json
import socket

import pytest

from coremq_client.codec import FrameParser, encode_frame
from coremq_client.error_codes import error_code
from coremq_client.errors import PermissionDenied, ServerError


def _frames(sock: socket.socket, parser: FrameParser, count: int) -> list[dict]:
    out: list[dict] = []
    while len(out) < count:
        data = sock.recv(65536)
        assert data, "the broker closed the connection"
        parser.receive_data(data)
        for event in parser.events():
            assert not isinstance(event, Exception), event
            out.append(json.loads(event[1]))
    return out


@pytest.mark.parametrize("frame, code", [
    (encode_frame("q", b"42"), "bad_message"),
    (encode_frame("q", b"{not json"), "invalid_json"),
    (b"+5 q {}}", "invalid_json"),
])
def test_tcp_error_reply_carries_its_code(broker, frame: bytes, code: str) -> None:
    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as sock:
        parser = FrameParser()
        _frames(sock, parser, 1)  # the welcome
        sock.sendall(frame)
        reply = _frames(sock, parser, 1)[0]
    assert reply["response"].startswith("ERROR: ")
    assert reply["code"] == code == error_code(reply["response"][len("ERROR: "):])


def test_server_error_has_the_code_of_its_text() -> None:
    assert ServerError("message too large: 9 bytes, limit is 8").code == "message_too_large"
    assert PermissionDenied("permission denied: subscribe q").code == "permission_denied"


@pytest.mark.parametrize("frame, shown", [
    (b"hello world", "got 'hello worl'"),
    (b"+12x q {}", "frame length '12x' is not a decimal number"),
    (encode_frame("own", b'{"coremq_subscribe": ["a"], "coremq_unsubscribe": ["b"]}'), 'got ["coremq_subscribe",'),
])
def test_tcp_error_texts_show_values_as_json_not_python(broker, frame: bytes, shown: str) -> None:
    """Error texts reach clients in any language: a value they quote is JSON, never a Python repr."""
    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as sock:
        parser = FrameParser()
        welcome = _frames(sock, parser, 1)[0]
        if frame.startswith(b"+") and b" own " in frame:
            frame = encode_frame(welcome["connection_id"], frame.split(b" ", 2)[2])
        sock.sendall(frame)
        reply = _frames(sock, parser, 1)[0]
    assert shown in reply["response"], reply
    assert "b'" not in reply["response"] and "['" not in reply["response"] and "True" not in reply["response"]
